"""The machinery of `keras_kd.tune`: its search space, trials, keras-tuner.

The search space and its checks; `BUDGET_RECIPES`, the ranked recipes of a
budget of trials; `Search`, which trains the baseline and each trial and
keeps their records and the best student (a trial replaces the baseline
only if it clears its margin: `keras_kd._tune_selection`); a keras-tuner
`BaseTuner` whose trials `Search` runs (keras-tuner never sees a Keras
model, so both Keras flavours work), the `HyperModel` that declares the
space, and the trial weights a promoted Hyperband trial continues from.
Users import nothing from here.
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np

from keras_kd import _utils, augment
from keras_kd._tune_selection import Selection
from keras_kd.backend import keras
from keras_kd.chain import copy_loss, fresh_metrics
from keras_kd.distiller import Distiller
from keras_kd.losses import (
    DIST,
    DecoupledKD,
    GeneralizedJSD,
    KLDivergence,
    ReverseKL,
    SkewKL,
    TotalVariation,
)

# The distillation objectives `tune` knows, by the names its search space uses.
OBJECTIVES = {
    "kl": lambda t: KLDivergence(temperature=t),
    "standardized_kl": lambda t: KLDivergence(temperature=t, standardize=True),
    "dist": lambda t: DIST(temperature=t),
    "dkd": lambda t: DecoupledKD(temperature=t),
    # The generative-model objectives (not in the default space): GKD's
    # generalized JSD at beta 0.5, DistiLLM's skew KLs at skew 0.1.
    "reverse_kl": lambda t: ReverseKL(temperature=t),
    "jsd": lambda t: GeneralizedJSD(beta=0.5, temperature=t),
    "skew_kl": lambda t: SkewKL(skew=0.1, temperature=t),
    "skew_reverse_kl": lambda t: SkewKL(skew=0.1, reverse=True, temperature=t),
    "tv": lambda t: TotalVariation(temperature=t),
}

DEFAULT_SEARCH_SPACE = {
    "objective": ["kl", "standardized_kl", "dist", "dkd"],
    "temperature": [1.0, 2.0, 4.0, 8.0],
    "alpha": [0.3, 0.5, 0.7, 0.9, 1.0],
    "mixup": [False, True],
}

KD_KEYS = tuple(DEFAULT_SEARCH_SPACE)

# The recipes of a budget of trials (`tune(..., budget=n)`), ranked: the
# first n (of those inside `search_space`) are tried. The order comes from the
# default recipe study (`benchmarks/recipes.py --study`; BENCHMARKS.md, "The
# default recipe study": nine tasks, two student sizes, 3 seeds): each next
# recipe is the one that adds most, on the validation splits, to the mean over
# tasks and sizes of the best gain over training alone so far, so that the
# first few cover different tasks. Objective in ("dist", "kl",
# "standardized_kl") x temperature (1, 2, 4) x alpha (0.5, 0.9, 1.0), mixup off.
_RANKED = (
    "dist 4 0.5, kl 4 0.5, dist 2 1, standardized_kl 2 1, dist 2 0.5, "
    "kl 4 1, dist 1 0.9, dist 4 0.9, dist 1 0.5, dist 1 1, "
    "standardized_kl 1 1, kl 1 0.5, dist 4 1, standardized_kl 4 0.5, "
    "dist 2 0.9, standardized_kl 2 0.5, kl 2 0.5, standardized_kl 2 0.9, "
    "kl 2 0.9, kl 2 1, standardized_kl 1 0.5, standardized_kl 1 0.9, "
    "kl 1 0.9, kl 1 1, standardized_kl 4 0.9, kl 4 0.9, "
    "standardized_kl 4 1"
)
BUDGET_RECIPES = tuple(
    {"objective": o, "temperature": float(t), "alpha": float(a), "mixup": False}
    for o, t, a in (item.split() for item in _RANKED.split(", "))
)


def budget_recipes(budget: int, space: dict) -> list:
    """The first `budget` of `BUDGET_RECIPES` inside the checked `space`;
    raises `ValueError` naming `budget` when fewer lie inside."""
    inside = [dict(r) for r in BUDGET_RECIPES if all(r[k] in space[k] for k in KD_KEYS)]
    if len(inside) < budget:
        raise ValueError(
            f"Argument `budget` asks for {budget} trials, but only {len(inside)} "
            "of the ranked recipes (`keras_kd._tuning.BUDGET_RECIPES`) lie "
            f"inside `search_space`. Received: budget={budget}. Expected at "
            f"most {len(inside)}, or a wider `search_space`."
        )
    return inside[:budget]


WEIGHTS_FILE = "student_weights.npz"


def distiller_supports_mixup() -> bool:
    """Whether this `Distiller` takes `mixup=` (consistent teaching)."""
    return "mixup" in inspect.signature(Distiller.__init__).parameters


# ---------------------------------------------------------------------------
# The search: trials, their records and the best student so far
# ---------------------------------------------------------------------------


class Search:
    """Trains the trials and keeps their records and the best student.

    Made by `keras_kd.tune` from its arguments, checked: `train_kwargs` and
    `validation` as `fit` takes them, `make_optimizer` a function returning
    a new optimizer, `space` the checked search space, `selection` the rule
    (a `keras_kd._tune_selection.Selection`) by which a trial replaces the
    baseline. The baseline's student is kept for the paired comparisons.
    """

    def __init__(
        self,
        *,
        teacher,
        student_fn,
        train_kwargs: dict,
        validation,
        loss,
        make_optimizer,
        metrics,
        monitor: str,
        mode: str,
        space: dict,
        mixup_alpha: float,
        seed: int | None,
        verbose: int,
        selection: Selection,
    ):
        self.teacher, self.student_fn = teacher, student_fn
        self.train_kwargs, self.validation = train_kwargs, validation
        self.loss, self.make_optimizer, self.metrics = loss, make_optimizer, metrics
        self.monitor, self.mode, self.space = monitor, mode, space
        self.mixup_alpha, self.seed, self.verbose = mixup_alpha, seed, verbose
        self.selection = selection
        self.baseline_student = None
        self.records = []
        self.best = None  # (record, student)
        self.error = None
        self._students = []
        self.takes_hp = takes_hp(self.student_fn)

    def new_student(self, hp):
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        student = self.student_fn(hp) if self.takes_hp else self.student_fn()
        _utils.check_model(student, "student_fn()")
        if student is self.teacher or any(student is s for s in self._students):
            raise ValueError(
                "Argument `student_fn` must return a new model each call (each "
                "trial trains its own). It returned "
                f"{'the teacher' if student is self.teacher else 'a model twice'}: "
                f"{student.name!r}."
            )
        self._students.append(student)
        self._students = self._students[-2:]  # enough to catch a repeat
        return student

    def baseline(self, epochs):
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        student = self.new_student(hp)
        self.selection.probe(student)  # before training: "paired" may fail
        values = {"alpha": 0.0, "mixup": False, "objective": None}
        score = self.train(student, None, values, 0, epochs)
        self.baseline_student = student
        self.add("baseline", values, 0, epochs, score, student, hp.values, True)

    def run_recipe(self, index, recipe, epochs):
        """One trial of a budget of trials: a new student (its own settings
        at their defaults) distilled with `recipe` for `epochs` epochs."""
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        student = self.new_student(hp)
        score = self.train(student, self.teacher, recipe, 0, epochs)
        self.add(f"r{index:02d}", recipe, 0, epochs, score, student, hp.values)

    def train(self, student, teacher, values, initial_epoch, epochs):
        """Trains `student` (from `teacher` with `values`); returns its score."""
        kwargs = {}
        if values["mixup"]:
            kwargs["mixup"] = (
                augment.mixup(self.mixup_alpha, seed=self.seed)
                if hasattr(augment, "mixup")
                else self.mixup_alpha
            )
        distiller = Distiller(teacher=teacher, student=student, **kwargs)
        compile_kwargs = {}
        if teacher is not None:
            compile_kwargs = {
                "distillation_loss": OBJECTIVES[values["objective"]](
                    values["temperature"]
                ),
                "alpha": values["alpha"],
            }
        distiller.compile(
            optimizer=self.make_optimizer(),
            loss=copy_loss(self.loss),
            metrics=fresh_metrics(self.metrics),
            **compile_kwargs,
        )
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        history = distiller.fit(
            **self.train_kwargs,
            validation_data=self.validation,
            epochs=epochs,
            initial_epoch=initial_epoch,
            shuffle="y" in self.train_kwargs,  # a dataset comes shuffled, or not
            verbose=2 if self.verbose >= 2 else 0,
        )
        if self.monitor not in history.history:
            raise ValueError(
                f"Argument `monitor` names a value that training does not "
                f"log. Received: monitor={self.monitor!r}. Logged: "
                f"{sorted(k for k in history.history if k.startswith('val_'))}."
            )
        return float(history.history[self.monitor][-1])

    def run_trial(self, trial, tuner):
        hp = trial.hyperparameters
        values = dict(hp.values)
        student = self.new_student(hp)
        parent = values.get("tuner/trial_id")
        if parent is not None:
            load_weights(student, tuner.get_trial_dir(parent))
        initial, epochs = values["tuner/initial_epoch"], values["tuner/epochs"]
        score = self.train(student, self.teacher, values, initial, epochs)
        save_weights(student, tuner.get_trial_dir(trial.trial_id))
        student_hp = {
            k: v
            for k, v in values.items()
            if not k.startswith("tuner/") and k not in KD_KEYS
        }
        self.add(trial.trial_id, values, initial, epochs, score, student, student_hp)
        if math.isnan(score):
            return -math.inf if self.mode == "max" else math.inf
        return score

    def add(self, trial_id, values, initial, epochs, score, student, hp, base=False):
        record = {
            "trial_id": trial_id,
            "is_baseline": base,
            "objective": values["objective"],
            "temperature": values.get("temperature") if not base else None,
            "alpha": float(values["alpha"]),
            "mixup": bool(values["mixup"]),
            "epochs": int(epochs),
            "initial_epoch": int(initial),
            "score": score,
            "hyperparameters": dict(hp),
            "margin": None,
            "significant": False,
            "selected": False,
        }
        self.records.append(record)
        if base:
            self.best = (record, student)
        else:
            self._judge(record, student)
        if self.verbose:
            shown = {k: record[k] for k in ("objective", "temperature", "alpha")}
            judged = ""
            if not base:
                cleared = "cleared" if record["significant"] else "not cleared"
                judged = (
                    f" (margin {record['margin']:.4f} over the baseline: {cleared})"
                )
            print(
                f"tune: trial {trial_id} {shown} mixup={record['mixup']} "
                f"epochs={epochs}: {self.monitor}={score:.4f}{judged}"
            )

    def _judge(self, record, student):
        """Compares a trial with the baseline; keeps it if it is the best of
        those that clear their margin."""
        baseline = self.records[0]["score"]
        gain = record["score"] - baseline
        if self.mode == "min":
            gain = -gain
        comparison = self.selection.compare(self.baseline_student, student, gain)
        record["margin"] = float(comparison.margin)
        record["significant"] = bool(comparison.significant)
        if comparison.significant and self._better(
            record["score"], self.best[0]["score"]
        ):
            self.best = (record, student)

    def _better(self, score, best):
        if math.isnan(score):
            return False
        return score > best if self.mode == "max" else score < best


# ---------------------------------------------------------------------------
# keras-tuner's pieces
# ---------------------------------------------------------------------------


def import_keras_tuner():
    """keras-tuner, or an `ImportError` that says how to install it."""
    try:
        import keras_tuner
    except ImportError as e:
        raise ImportError(
            "`keras_kd.tune` needs keras-tuner. Install it with "
            "`pip install keras-kd[tune]` (or `pip install keras-tuner`)."
        ) from e
    return keras_tuner


def search_with_hyperband(keras_tuner, search, budget, directory, project_name):
    """Runs the distilled trials with keras-tuner's `HyperbandOracle`."""
    oracle = keras_tuner.oracles.HyperbandOracle(
        objective=keras_tuner.Objective("score", direction=search.mode),
        max_epochs=budget.max_epochs,
        factor=budget.factor,
        hyperband_iterations=budget.hyperband_iterations,
        # keras-tuner draws a random seed for a false one (0 included).
        seed=None if search.seed is None else search.seed + 1,
    )
    oracle.max_trials = budget.max_trials
    tuner = tuner_class(keras_tuner)(
        search,
        oracle=oracle,
        hypermodel=hypermodel_class(keras_tuner)(search),
        directory=directory,
        project_name=project_name,
        overwrite=True,
    )
    try:
        tuner.search(verbose=0)
    except keras_tuner.errors.FatalError:
        if search.error is not None:
            raise search.error from None
        raise


def tuner_class(keras_tuner):
    """A keras-tuner `BaseTuner` whose trials a `tune` search object runs.

    keras-tuner is imported by `tune` only when called, so the class is made
    here from the module it is given.
    """

    class DistillationTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """Runs each trial with `Search.run_trial`; Keras models stay ours."""

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
