"""Quantization- and pruning-aware distillation (tensorflow-model-optimization).

The teacher guides a student that is being made small: either a
quantization-aware student, whose forward pass simulates int8 arithmetic
(fake quantization), so that it learns weights that survive conversion to a
full-integer `.tflite`; or a student whose smallest weights are pruned to
zero on a schedule, so that the file compresses.

```python
import keras_kd as kd

# quantization-aware distillation
student_q = kd.optimize.quantization_aware(student)
distiller = kd.Distiller(teacher=teacher, student=student_q)
distiller.compile(optimizer="adam", loss=hard_loss, alpha=0.9,
                  distillation_loss=kd.losses.KLDivergence(temperature=4.0))
distiller.fit(train_ds, epochs=2)
kd.export.to_tflite(student_q, "student_int8.tflite", quantization="int8",
                    representative_data=train_ds)

# pruning-aware distillation
student_p = kd.optimize.prune(student, target_sparsity=0.8,
                              end_step=epochs * steps_per_epoch)
distiller = kd.Distiller(teacher=teacher, student=student_p)
distiller.compile(...)
distiller.fit(train_ds, epochs=epochs)      # no callback to remember
pruned = kd.optimize.strip(student_p)        # a plain Keras model again
kd.export.to_tflite(pruned, "student_pruned.tflite")
kd.optimize.sparsity(pruned), kd.optimize.gzipped_size("student_pruned.tflite")
```

tensorflow-model-optimization works with tf_keras (Keras 2) only: these
functions need `TF_USE_LEGACY_KERAS=1` set before TensorFlow is imported and
`pip install keras-kd[optimize]`. In the Keras 3 flavour they raise an error
that says so. `sparsity` and `gzipped_size` work in both flavours.

The pruning step counter, which tfmot otherwise asks the user to drive with
its `UpdatePruningStep` callback, is started by `prune` itself, and `strip`
re-applies the masks before removing the wrappers, so training needs no
callback; `pruning_callbacks` gives the callbacks for those who want the masks
re-applied at each epoch's end (sparse checkpoints) or TensorBoard summaries.

This module is the public face; the code lives in private files named for
what they hold: `_optimize_quantization.py`, `_optimize_pruning.py`,
`_optimize_measures.py` (`sparsity`, `gzipped_size`) and
`_optimize_checks.py` (the flavour, model and layer checks they share).
"""

from keras_kd._optimize_measures import gzipped_size, sparsity
from keras_kd._optimize_pruning import prune, pruning_callbacks, strip
from keras_kd._optimize_quantization import quantization_aware

__all__ = [
    "gzipped_size",
    "prune",
    "pruning_callbacks",
    "quantization_aware",
    "sparsity",
    "strip",
]
