"""The machinery of `keras_kd.tune`: its search space, the keras-tuner pieces.

The search space and its checks, a keras-tuner `BaseTuner` whose trials
`keras_kd.tune` runs itself (keras-tuner never sees a Keras model, so both
Keras flavours work), the `HyperModel` that declares the space, and the
trial weights a promoted Hyperband trial continues from. Users import
nothing from here.
"""

from __future__ import annotations

import inspect
import os

import numpy as np

from keras_kd import _utils
from keras_kd.distiller import Distiller
from keras_kd.losses import DIST, DecoupledKD, KLDivergence

# The distillation objectives `tune` knows, by the names its search space uses.
OBJECTIVES = {
    "kl": lambda t: KLDivergence(temperature=t),
    "standardized_kl": lambda t: KLDivergence(temperature=t, standardize=True),
    "dist": lambda t: DIST(temperature=t),
    "dkd": lambda t: DecoupledKD(temperature=t),
}

DEFAULT_SEARCH_SPACE = {
    "objective": ["kl", "standardized_kl", "dist", "dkd"],
    "temperature": [1.0, 2.0, 4.0, 8.0],
    "alpha": [0.3, 0.5, 0.7, 0.9, 1.0],
    "mixup": [False, True],
}

KD_KEYS = tuple(DEFAULT_SEARCH_SPACE)
WEIGHTS_FILE = "student_weights.npz"


def distiller_supports_mixup() -> bool:
    """Whether this `Distiller` takes `mixup=` (consistent teaching)."""
    return "mixup" in inspect.signature(Distiller.__init__).parameters


def tuner_class(keras_tuner):
    """A keras-tuner `BaseTuner` whose trials a `tune` search object runs.

    keras-tuner is imported by `tune` only when called, so the class is made
    here from the module it is given.
    """

    class DistillationTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """Runs each trial with `_Search.run_trial`; Keras models stay ours."""

        def __init__(self, search, **kwargs):
            self.kd_search = search
            super().__init__(**kwargs)

        def run_trial(self, trial, *args, **kwargs):
            try:
                return {"score": self.kd_search.run_trial(trial, self)}
            except Exception as e:
                # keras-tuner records a failing trial and goes on; a broken
                # setup would then fail every trial silently. Stop instead.
                self.kd_search.error = e
                raise keras_tuner.errors.FatalError(str(e)) from e

    return DistillationTuner


def hypermodel_class(keras_tuner):
    """A keras-tuner `HyperModel` declaring a search object's space."""

    class DistillationSpace(keras_tuner.HyperModel):
        """Declares the search space (and the student's own settings)."""

        def __init__(self, search):
            super().__init__(name="keras_kd_distillation")
            self.search = search

        def declare_hyperparameters(self, hp):
            for name, values in self.search.space.items():
                if len(values) == 1:
                    hp.Fixed(name, values[0])
                else:
                    hp.Choice(name, values)

        def build(self, hp):
            self.declare_hyperparameters(hp)
            if self.search.takes_hp:
                return self.search.student_fn(hp)
            return None

    return DistillationSpace


def takes_hp(fn) -> bool:
    """Whether `fn` has a required positional parameter (`student_fn(hp)`)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in kinds and p.default is p.empty for p in parameters)


def save_weights(model, directory):
    """Writes `model`'s weights to `directory` (a trial's), atomically."""
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}

    def write(path):
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    _utils.write_atomically(os.path.join(directory, WEIGHTS_FILE), write)


def load_weights(model, directory):
    """Sets `model`'s weights from those `save_weights` wrote in `directory`."""
    with np.load(os.path.join(directory, WEIGHTS_FILE)) as archive:
        weights = [archive[f"w{i}"] for i in range(len(archive.files))]
    model.set_weights(weights)


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def check_monitor(monitor, mode):
    """`(monitor, mode)` of `tune`, checked: a comparable validation value."""
    if not isinstance(monitor, str) or not monitor.startswith("val_"):
        raise (ValueError if isinstance(monitor, str) else TypeError)(
            "Argument `monitor` must name a validation value, a string such "
            "as 'val_accuracy': trials are ranked on `validation_data`. "
            f"Received: monitor={monitor!r}."
        )
    if monitor in ("val_loss", "val_distillation_loss"):
        raise ValueError(
            f"Argument `monitor` cannot be {monitor!r}: a Distiller's `loss` "
            "and `distillation_loss` depend on the trial's objective and "
            "alpha, so they do not compare trials. Use 'val_hard_loss' (the "
            "hard-label loss, mode='min') or a metric such as 'val_accuracy'."
        )
    if mode not in ("max", "min"):
        raise ValueError(
            "Argument `mode` must be 'max' (higher `monitor` is better) or "
            f"'min' (lower is better). Received: mode={mode!r}."
        )
    return monitor, mode


def check_space(space):
    """`tune`'s `search_space` over `DEFAULT_SEARCH_SPACE`: key -> values."""
    if space is None:
        space = {}
    if not isinstance(space, dict):
        raise TypeError(
            "Argument `search_space` must be a dict such as "
            "{'objective': ['kl', 'dist'], 'alpha': [0.5, 0.9]}. Received: "
            f"search_space={space!r} of type {type(space).__name__}."
        )
    unknown = sorted(set(space) - set(KD_KEYS))
    if unknown:
        raise ValueError(
            f"Argument `search_space` has unknown keys {unknown}. Expected keys "
            f"among {list(KD_KEYS)}. Received: search_space={space!r}."
        )
    mixup_ok = distiller_supports_mixup()
    result = {}
    for key in KD_KEYS:
        given = key in space
        values = space.get(key, DEFAULT_SEARCH_SPACE[key])
        if key == "mixup" and not given and not mixup_ok:
            values = [False]
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        argument = f"search_space[{key!r}]"
        if not values:
            raise ValueError(f"Argument `{argument}` is empty. Expected values.")
        if key == "objective":
            for value in values:
                if value not in OBJECTIVES:
                    raise ValueError(
                        f"Argument `{argument}` holds an unknown objective. "
                        f"Received: {value!r}. Expected names among "
                        f"{list(OBJECTIVES)}."
                    )
        elif key == "temperature":
            values = [
                _utils.check_number(v, argument, low=0.0, low_open=True) for v in values
            ]
        elif key == "alpha":
            values = [_utils.check_alpha(v, argument) for v in values]
            if 0.0 in values:
                raise ValueError(
                    f"Argument `{argument}` must hold values in (0, 1]: alpha=0, "
                    "training on the labels alone, is the baseline, which "
                    f"`tune` always runs. Received: {space[key]!r}."
                )
        else:
            values = [_utils.check_bool(v, argument) for v in values]
            if True in values and not mixup_ok:
                raise ValueError(
                    f"Argument `{argument}` asks for mixup, which this "
                    "`Distiller` does not support. Received: "
                    f"{space[key]!r}. Expected [False]."
                )
        result[key] = list(dict.fromkeys(values))  # unique, in order
    return result
