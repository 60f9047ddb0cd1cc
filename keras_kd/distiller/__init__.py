"""The `Distiller`: a `keras.Model` that trains a student from a frozen teacher.

Everything that is the Distiller's lives in this package, one concept a file:

- `model.py`: the class (its arguments, `compile`, `fit`, `replace_teacher`);
- `steps.py`: the train, test and predict steps and the losses of one step;
- `config.py`: how it is saved and rebuilt (`get_config`, compile config);
- `arguments.py`: the checks of the constructor's and `compile`'s arguments;
- `teacher_side.py`: several teachers, class subsets, input routing, each
  teacher's forward pass;
- `pairing.py`: one distillation term per output, the labels a loss asks for;
- `batches.py`: a batch unpacked (mixed, stored teacher outputs), masks and
  per-token weights (`keras_kd.online` uses these too);
- `fit_checks.py`: the data and arguments checked once per `fit`.

Online distillation, where the teacher learns too, is
`keras_kd.online.OnlineDistiller`, built on this package (never the other
way). No other module reads the Distiller's private attributes: `fit_checks`
reads a `FitSubject` the Distiller hands it.
"""

from keras_kd._utils import output_is_probabilities
from keras_kd.distiller.model import Distiller

__all__ = ["Distiller", "output_is_probabilities"]
