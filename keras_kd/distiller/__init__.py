"""The `Distiller`: a `keras.Model` that trains a student from a frozen teacher.

`model.py` holds the class (arguments, Keras API, configuration, the train
and test steps); `steps.py` the losses of one step. Online distillation, where
the teacher learns too, is `keras_kd.online.OnlineDistiller`.
"""

from keras_kd._utils import output_is_probabilities
from keras_kd.distiller.model import Distiller

__all__ = ["Distiller", "output_is_probabilities"]
