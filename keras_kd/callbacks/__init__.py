"""Callbacks that drive distillation: self-distillation and schedules.

* `SelfDistillation` runs Born-Again Networks (Furlanello et al. 2018)
  inside one `fit`: each generation's student becomes the next one's frozen
  teacher. Its Keras hooks live in `self_distillation.py`, the plain-Python
  plan of its generations in `generations.py`, the store of the finished
  generations' weights in `generation_store.py` (`GenerationStore`).
* `AlphaSchedule` and `TemperatureSchedule` (`schedules.py`) change `alpha`
  and the softmax temperature by epoch or by step. The values live in
  variables, so the compiled train function is not retraced.
* `BackupAndRestore` (`backup_and_restore.py`) is Keras's callback of that
  name with atomic writes and an exact resume in the middle of an epoch.
"""

from keras_kd.callbacks.backup_and_restore import BackupAndRestore
from keras_kd.callbacks.generation_store import GenerationStore
from keras_kd.callbacks.schedules import (
    AlphaSchedule,
    TemperatureSchedule,
    cosine,
    linear,
)
from keras_kd.callbacks.self_distillation import SelfDistillation

__all__ = [
    "AlphaSchedule",
    "BackupAndRestore",
    "GenerationStore",
    "SelfDistillation",
    "TemperatureSchedule",
    "cosine",
    "linear",
]
