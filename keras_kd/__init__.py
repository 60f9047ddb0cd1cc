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
_COMMAND = _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("keras-kd")
if _COMMAND:
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's C++ start-up lines (absl's "All log messages before
    # absl::InitializeLog()", oneDNN, CUDA) ignore TF_CPP_MIN_LOG_LEVEL: the
    # command keeps them out of its output by pointing file descriptor 2 at
    # the null device while TensorFlow and Keras load. Python errors raised
    # by the imports still reach the terminal (stderr is restored first).
    _sys.stderr.flush()
    _saved_stderr = _os.dup(2)
    _null = _os.open(_os.devnull, _os.O_WRONLY)
    _os.dup2(_null, 2)
try:
    from keras_kd import (
        augment,
        backend,
        callbacks,
        data,
        ensemble,
        export,
        lm,
        losses,
        models,
        optimize,
        report,
        taps,
    )
    from keras_kd.budget import BudgetResult, tune_for_budget
    from keras_kd.calibrate import CalibrationResult, calibrate
    from keras_kd.chain import ChainResult, distill_chain
    from keras_kd.continual import widen_head
    from keras_kd.distiller import Distiller
    from keras_kd.lm import init_from_teacher
    from keras_kd.mutual import MutualLearning
    from keras_kd.online import OnlineDistiller
    from keras_kd.taps import FeatureMatch
    from keras_kd.tune import TuneBudget, TuneResult, tune
finally:
    if _COMMAND:
        _os.dup2(_saved_stderr, 2)
        _os.close(_saved_stderr)
        _os.close(_null)

__version__ = "0.1.0"

__all__ = [
    "CalibrationResult",
    "ChainResult",
    "Distiller",
    "FeatureMatch",
    "MutualLearning",
    "OnlineDistiller",
    "augment",
    "backend",
    "calibrate",
    "callbacks",
    "data",
    "export",
    "ensemble",
    "init_from_teacher",
    "lm",
    "losses",
    "models",
    "optimize",
    "report",
    "taps",
    "TuneBudget",
    "TuneResult",
    "distill_chain",
    "tune",
    "widen_head",
    "tune_for_budget",
    "BudgetResult",
    "__version__",
]
