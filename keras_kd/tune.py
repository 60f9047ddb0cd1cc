"""Searching distillation settings, with training alone as a floor: `tune`.

Whether distillation helps depends on the objective and its settings (the
capacity gap). `tune` searches them with Hyperband (Li et al., JMLR 2018,
through keras-tuner) and always trains the student on the labels alone too,
so that what it returns is never worse on the validation data than that.

Needs keras-tuner: `pip install keras-kd[tune]`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile

from keras_kd import _utils, augment
from keras_kd._tuning import (
    DEFAULT_SEARCH_SPACE,
    KD_KEYS,
    OBJECTIVES,
    check_monitor,
    check_space,
    hypermodel_class,
    load_weights,
    save_weights,
    takes_hp,
    tuner_class,
)
from keras_kd.backend import keras
from keras_kd.chain import (
    copy_loss,
    fit_arguments,
    format_table,
    fresh_metrics,
    optimizer_factory,
    validation_for_fit,
)
from keras_kd.distiller import Distiller


@dataclasses.dataclass
class TuneResult:
    """What `tune` returns.

    Attributes:
        student: the trained student of the best trial on the validation
            data; the baseline's (trained on the labels alone) unless a
            distilled trial did strictly better.
        config: the settings of that trial (a dict, as in `trials`).
        trials: one dict per trial, the baseline first: `trial_id`,
            `is_baseline`, `objective`, `temperature`, `alpha`, `mixup`,
            `epochs` (cumulative: Hyperband continues promising trials),
            `initial_epoch`, `score` (the monitored validation value at the
            end of the trial), `hyperparameters` (the student's own, from
            `student_fn(hp)`) and `selected`.
        baseline_score: the baseline's score.
        monitor: the monitored value, e.g. `"val_accuracy"`.
        mode: `"max"` or `"min"`.
    """

    student: object
    config: dict
    trials: list
    baseline_score: float
    monitor: str
    mode: str

    @property
    def best_score(self) -> float:
        """The returned student's score."""
        return self.config["score"]

    def table(self) -> str:
        """Every trial as a plain-text table, the returned one marked."""
        rows = [
            ["trial", "objective", "T", "alpha", "mixup", "epochs", self.monitor, ""]
        ]
        for t in self.trials:
            rows.append(
                [
                    t["trial_id"],
                    t["objective"] or "(labels only)",
                    "-" if t["temperature"] is None else f"{t['temperature']:g}",
                    f"{t['alpha']:g}",
                    "yes" if t["mixup"] else "no",
                    str(t["epochs"]),
                    f"{t['score']:.4f}",
                    "<- returned" if t["selected"] else "",
                ]
            )
        return format_table(rows)

    def __str__(self) -> str:
        return self.table()


def tune(
    teacher,
    student_fn,
    train_data,
    validation_data,
    *,
    loss,
    optimizer="adam",
    metrics=("accuracy",),
    monitor: str = "val_accuracy",
    mode: str = "max",
    max_epochs: int = 9,
    factor: int = 3,
    hyperband_iterations: int = 1,
    max_trials: int | None = None,
    search_space: dict | None = None,
    mixup_alpha: float = 0.2,
    batch_size: int = 32,
    seed: int | None = None,
    directory=None,
    project_name: str = "keras_kd_tune",
    overwrite: bool = False,
    verbose: int = 0,
) -> TuneResult:
    """Searches distillation settings; never returns worse than no distillation.

    First the **baseline**: a student from `student_fn` trained on the
    labels alone (alpha 0, no teacher, no mixup) for `max_epochs` epochs
    with the same optimizer. Then a Hyperband search (keras-tuner's
    `HyperbandOracle`) over the distillation objective (`"kl"`,
    `"standardized_kl"`, `"dist"`, `"dkd"`: `keras_kd.losses.KLDivergence`,
    the same with `standardize=True`, `DIST`, `DecoupledKD`), the
    temperature, `alpha` and input mixup on or off: each trial trains a new
    student in a `keras_kd.Distiller` for the epochs Hyperband gives it (a
    promoted trial continues from its parent's weights with a fresh
    optimizer, as in keras-tuner) and is scored by `monitor` on
    `validation_data` at its end.

    The returned student is the best trial's; a distilled trial replaces
    the baseline only if it scores **strictly** better, so the result is
    never worse on the validation data than the baseline (its own score
    proves it: `result.best_score` against `result.baseline_score`). With a
    `seed` every trial's student starts from the same initial weights as the
    baseline, and the search (trials and scores) is reproducible.

    Args:
        teacher: the trained teacher, a `keras.Model` (frozen).
        student_fn: a function returning a new, untrained student each
            call: `student_fn()`, or `student_fn(hp)` to search the
            student's own settings with keras-tuner's `HyperParameters` (the
            baseline uses their default values).
        train_data: `(x, y)` (or `(x, y, sample_weight)`) numpy arrays, or a
            `tf.data.Dataset` of such batches.
        validation_data: the same kinds; trials are ranked on it.
        loss: the hard-label loss (as in `keras.Model.compile`).
        optimizer: a name, a config dict, an optimizer (its config is
            copied) or a function returning a new one: each trial gets its
            own.
        metrics: the compiled metrics (names or `keras.metrics.Metric`s,
            copied per trial); `monitor` may name one of them.
        monitor: the validation value ranking the trials: `"val_<metric>"`
            or `"val_hard_loss"` (the hard-label loss). Not `"val_loss"`: a
            Distiller's loss includes its distillation term, which differs
            between trials.
        mode: `"max"` (the default, for accuracies) or `"min"` (losses).
        max_epochs: the most epochs one trial trains (the baseline trains
            this many).
        factor: Hyperband's reduction factor (an int >= 2).
        hyperband_iterations: how many times to run Hyperband's brackets;
            the budget, with `max_epochs` and `factor`.
        max_trials: if not None, at most this many distilled trials.
        search_space: a dict overriding `DEFAULT_SEARCH_SPACE`: keys among
            `"objective"`, `"temperature"`, `"alpha"` (in (0, 1]; alpha 0
            is the baseline, always run) and `"mixup"` (booleans), each a
            list of values (or one value).
        mixup_alpha: the Beta(alpha, alpha) parameter of mixup in the trials
            that use it.
        batch_size: batch size for numpy data.
        seed: an int for a reproducible search, or None. With a seed,
            `keras.utils.set_random_seed(seed)` is called before each trial
            builds its student and before it trains (the global seed is
            left set).
        directory: where keras-tuner keeps its trials; None: a temporary
            directory, removed at the end.
        project_name: the sub-directory of `directory`.
        overwrite: replace an existing project of that name; without it an
            existing project is an error (resuming is not supported).
        verbose: 0 (silent), 1 (a line per trial) or 2 (also `fit`'s line
            per epoch).

    Returns:
        A `TuneResult`: `student`, `config`, `trials`, `baseline_score` and
        `table()`.

    Example:

    ```python
    import keras, keras_kd as kd

    result = kd.tune(
        teacher,
        lambda: keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)]),
        (x_train, y_train),
        (x_val, y_val),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="adam",
        max_epochs=9,
        seed=0,
    )
    print(result.table())
    print(result.config)  # {'objective': 'dist', 'temperature': 4.0, ...}
    result.student.save("student.keras")
    ```
    """
    try:
        import keras_tuner
    except ImportError as e:
        raise ImportError(
            "`keras_kd.tune` needs keras-tuner. Install it with "
            "`pip install keras-kd[tune]` (or `pip install keras-tuner`)."
        ) from e

    _utils.check_model(teacher, "teacher")
    if not callable(student_fn) or isinstance(student_fn, keras.Model):
        raise TypeError(
            "Argument `student_fn` must be a function returning a new, "
            "untrained student model (`student_fn()` or `student_fn(hp)`). "
            f"Received: student_fn={student_fn!r} of type "
            f"{type(student_fn).__name__}."
        )
    if validation_data is None:
        raise ValueError(
            "Argument `validation_data` is required: trials are ranked on it. "
            "Received: validation_data=None. Expected `(x_val, y_val)` or a "
            "`tf.data.Dataset`."
        )
    fresh_metrics(metrics)  # checked now, copied per trial
    monitor, mode = check_monitor(monitor, mode)
    search = _Search(
        teacher=teacher,
        student_fn=student_fn,
        train_kwargs=fit_arguments(train_data, "train_data", batch_size),
        validation=validation_for_fit(
            fit_arguments(validation_data, "validation_data", batch_size)
        ),
        loss=loss,
        make_optimizer=optimizer_factory(optimizer),
        metrics=metrics,
        monitor=monitor,
        mode=mode,
        space=check_space(search_space),
        mixup_alpha=_utils.check_number(
            mixup_alpha, "mixup_alpha", low=0.0, low_open=True
        ),
        seed=None if seed is None else _utils.check_int(seed, "seed", minimum=0),
        verbose=_utils.check_int(verbose, "verbose", minimum=0),
    )
    max_epochs = _utils.check_int(max_epochs, "max_epochs", minimum=1)
    factor = _utils.check_int(factor, "factor", minimum=2)
    hyperband_iterations = _utils.check_int(
        hyperband_iterations, "hyperband_iterations", minimum=1
    )
    if max_trials is not None:
        max_trials = _utils.check_int(max_trials, "max_trials", minimum=1)
    overwrite = _utils.check_bool(overwrite, "overwrite")
    if not isinstance(project_name, str) or not project_name:
        raise TypeError(
            "Argument `project_name` must be a non-empty string. Received: "
            f"project_name={project_name!r}."
        )
    temporary = directory is None
    directory = tempfile.mkdtemp(prefix="keras_kd_tune_") if temporary else directory
    project = os.path.join(os.fspath(directory), project_name)
    if os.path.exists(project) and not overwrite:
        raise ValueError(
            f"A tuning project already exists at {project!r}; `tune` does not "
            "resume searches. Pass `overwrite=True` to replace it, or another "
            f"`directory` / `project_name`. Received: directory={directory!r}, "
            f"project_name={project_name!r}, overwrite=False."
        )
    try:
        search.baseline(max_epochs)
        oracle = keras_tuner.oracles.HyperbandOracle(
            objective=keras_tuner.Objective("score", direction=search.mode),
            max_epochs=max_epochs,
            factor=factor,
            hyperband_iterations=hyperband_iterations,
            # keras-tuner draws a random seed for a false one (0 included).
            seed=None if search.seed is None else search.seed + 1,
        )
        oracle.max_trials = max_trials
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
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return search.result()


# ---------------------------------------------------------------------------
# The search: trials, their records and the best student so far
# ---------------------------------------------------------------------------


class _Search:
    """Trains the trials and keeps their records and the best student."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
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
        values = {"alpha": 0.0, "mixup": False, "objective": None}
        score = self.train(student, None, values, 0, epochs)
        self.add("baseline", values, 0, epochs, score, student, hp.values, True)

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
            "selected": False,
        }
        self.records.append(record)
        if self.best is None or self._better(score, self.best[0]["score"]):
            self.best = (record, student)  # the baseline wins ties
        if self.verbose:
            shown = {k: record[k] for k in ("objective", "temperature", "alpha")}
            print(
                f"tune: trial {trial_id} {shown} mixup={record['mixup']} "
                f"epochs={epochs}: {self.monitor}={score:.4f}"
            )

    def _better(self, score, best):
        if math.isnan(score):
            return False
        return score > best if self.mode == "max" else score < best

    def result(self):
        record, student = self.best
        record["selected"] = True
        return TuneResult(
            student=student,
            config=dict(record),
            trials=[dict(r) for r in self.records],
            baseline_score=self.records[0]["score"],
            monitor=self.monitor,
            mode=self.mode,
        )


__all__ = ["DEFAULT_SEARCH_SPACE", "OBJECTIVES", "TuneResult", "tune"]
