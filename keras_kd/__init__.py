"""keras-kd: knowledge distillation for Keras on TensorFlow.

```python
import keras_kd as kd

distiller = kd.Distiller(teacher=teacher, student=student)
distiller.compile(optimizer="adam", loss=hard_loss, metrics=["accuracy"],
                  distillation_loss=kd.losses.KLDivergence(temperature=4.0),
                  alpha=0.9)  # alpha weights the distillation term
distiller.fit(train_ds, epochs=10)
```
"""

from keras_kd import backend
from keras_kd import losses
from keras_kd.distiller import Distiller

__version__ = "0.1.0"

__all__ = ["Distiller", "backend", "losses", "__version__"]
