"""keras-kd: knowledge distillation for Keras on TensorFlow.

```python
import keras_kd as kd

distiller = kd.Distiller(teacher=teacher, student=student)
distiller.compile(optimizer="adam", loss=hard_loss, metrics=["accuracy"],
                  distillation_loss=kd.losses.KLDivergence(temperature=1.0),
                  alpha=0.5)  # alpha weights the distillation term
distiller.fit(train_ds, epochs=10)
```
"""

import os as _os
import sys as _sys

# The `keras-kd` command imports this package before its own module runs, so
# its quiet TensorFlow logging has to be set here, before TensorFlow loads.
# Only the command does this; a user's `import keras_kd` changes nothing.
if _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("keras-kd"):
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_kd import (
    augment,
    backend,
    callbacks,
    data,
    ensemble,
    export,
    losses,
    models,
    optimize,
    taps,
)
from keras_kd.chain import ChainResult, distill_chain
from keras_kd.distiller import Distiller
from keras_kd.online import MutualLearning, OnlineDistiller
from keras_kd.taps import FeatureMatch
from keras_kd.tune import TuneResult, tune

__version__ = "0.1.0"

__all__ = [
    "ChainResult",
    "Distiller",
    "FeatureMatch",
    "MutualLearning",
    "OnlineDistiller",
    "augment",
    "backend",
    "callbacks",
    "data",
    "export",
    "ensemble",
    "losses",
    "models",
    "optimize",
    "taps",
    "TuneResult",
    "distill_chain",
    "tune",
    "__version__",
]
