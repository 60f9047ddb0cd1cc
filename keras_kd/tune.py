"""Searching distillation settings, with training alone as a floor: `tune`.

Whether distillation helps depends on the objective and its settings (the
capacity gap). `tune` trains the student on the labels alone (the
baseline), then distilled students: a Hyperband search (Li et al., JMLR
2018, through keras-tuner), or, with `budget=n`, the first `n` recipes of
a ranked list (`BUDGET_RECIPES`). A trial replaces the baseline only if its
gain on the validation data exceeds a margin, by default the validation
set's noise from a paired test, so that the choice holds on unseen data.

Needs keras-tuner: `pip install keras-kd[tune]`.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import shutil
import tempfile

import numpy as np

from keras_kd import _utils
from keras_kd._tune_selection import Selection, best_distilled, check_monitor
from keras_kd._tuning import (
    BUDGET_RECIPES,
    DEFAULT_SEARCH_SPACE,
    OBJECTIVES,
    Search,
    budget_recipes,
    check_space,
    import_keras_tuner,
    search_with_hyperband,
)
from keras_kd.backend import keras
from keras_kd.chain import (
    fit_arguments,
    format_table,
    fresh_metrics,
    optimizer_factory,
    validation_for_fit,
)


@dataclasses.dataclass
class TuneResult:
    """What `tune` returns.

    Attributes:
        student: the returned student: that of the best-scoring distilled
            trial among those whose gain over the baseline exceeds their
            margin, or, if none does, the baseline's (trained on the labels
            alone).
        config: the settings of that trial (a dict, as in `trials`).
        trials: one dict per trial, the baseline first: `trial_id`
            (`"baseline"`, keras-tuner's ids, or `"r00"`, `"r01"`... with a
            budget of trials), `is_baseline`, `objective`, `temperature`,
            `alpha`, `mixup`, `epochs` (cumulative: Hyperband continues
            promising trials), `initial_epoch`, `score` (the monitored
            validation value at the end of the trial), `hyperparameters`
            (the student's own, from `student_fn(hp)`), `margin` (the gain
            over the baseline's score this trial had to exceed, in the
            monitor's units; None for the baseline), `significant` (whether
            it did) and `selected`.
        baseline_score: the baseline's score.
        monitor: the monitored value, e.g. `"val_accuracy"`.
        mode: `"max"` or `"min"`.
        margin: the margin of the best-scoring distilled trial (by `score`,
            cleared or not): what its gain over `baseline_score` had to
            exceed for it to replace the baseline. None if no distilled
            trial has a score.
        selection: `"paired"` (each trial's margin from the paired test on
            the validation data) or `"fixed"` (one margin for all).
    """

    student: object
    config: dict
    trials: list
    baseline_score: float
    monitor: str
    mode: str
    margin: float | None = None
    selection: str = "fixed"

    @property
    def best_score(self) -> float:
        """The returned student's score."""
        return self.config["score"]

    def table(self) -> str:
        """Every trial as a plain-text table: its margin over the baseline,
        whether it cleared it, the returned trial marked."""
        rows = [
            ["trial", "objective", "T", "alpha", "mixup", "epochs", self.monitor]
            + ["margin", "cleared", ""]
        ]
        for t in self.trials:
            judged = t["margin"] is not None
            rows.append(
                [
                    t["trial_id"],
                    t["objective"] or "(labels only)",
                    "-" if t["temperature"] is None else f"{t['temperature']:g}",
                    f"{t['alpha']:g}",
                    "yes" if t["mixup"] else "no",
                    str(t["epochs"]),
                    f"{t['score']:.4f}",
                    f"{t['margin']:.4f}" if judged else "-",
                    ("yes" if t["significant"] else "no") if judged else "-",
                    "<- returned" if t["selected"] else "",
                ]
            )
        return format_table(rows)

    def __str__(self) -> str:
        return self.table()


@dataclasses.dataclass(frozen=True)
class TuneBudget:
    """How much training `tune` may spend: Hyperband's budget.

    The baseline trains `max_epochs` epochs. Hyperband (Li et al., JMLR
    2018) then runs brackets of distilled trials: many for few epochs, the
    best `1 / factor` of them promoted to `factor` times as many, up to
    `max_epochs`. One pass over the brackets costs roughly
    `(s + 1) ** 2 * max_epochs` epochs, `s = floor(log_factor(max_epochs))`
    (Hyperband's own figure); `hyperband_iterations` repeats it, and
    `max_trials` caps the number of distilled trials.

    Args:
        max_epochs: the most epochs one trial trains (the baseline trains
            this many). Default 9.
        factor: Hyperband's reduction factor, an int >= 2. Default 3.
        hyperband_iterations: how many times to run Hyperband's brackets.
            Default 1.
        max_trials: if not None (the default), at most this many distilled
            trials.

    Example:

    ```python
    from keras_kd.tune import TuneBudget

    result = kd.tune(teacher, student_fn, (x, y), (x_val, y_val), loss=loss,
                     budget=TuneBudget(max_epochs=27, max_trials=20))
    ```
    """

    max_epochs: int = 9
    factor: int = 3
    hyperband_iterations: int = 1
    max_trials: int | None = None

    def __post_init__(self):
        checked = {
            "max_epochs": _utils.check_int(self.max_epochs, "max_epochs", minimum=1),
            "factor": _utils.check_int(self.factor, "factor", minimum=2),
            "hyperband_iterations": _utils.check_int(
                self.hyperband_iterations, "hyperband_iterations", minimum=1
            ),
            "max_trials": None
            if self.max_trials is None
            else _utils.check_int(self.max_trials, "max_trials", minimum=1),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: set once, checked


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
    budget: TuneBudget | int | None = None,
    margin: float | str = "auto",
) -> TuneResult:
    """Searches distillation settings; never returns worse than no distillation.

    First the **baseline**: a student from `student_fn` trained on the
    labels alone (alpha 0, no teacher, no mixup) for `max_epochs` epochs
    with the same optimizer. Then the distilled trials: with `budget=n`
    (an int), exactly `n` of them, each a new student distilled for
    `max_epochs` epochs with the next recipe of `BUDGET_RECIPES` (ranked by
    the recipe study; the first `n` inside `search_space` when one is
    given). Otherwise a Hyperband search (keras-tuner's
    `HyperbandOracle`) over the distillation objective (`"kl"`,
    `"standardized_kl"`, `"dist"`, `"dkd"`: `keras_kd.losses.KLDivergence`,
    the same with `standardize=True`, `DIST`, `DecoupledKD`; a
    `search_space` may also name the generative-model objectives
    `"reverse_kl"`, `"jsd"` (`GeneralizedJSD(beta=0.5)`), `"skew_kl"`,
    `"skew_reverse_kl"` (skew 0.1) and `"tv"`), the
    temperature, `alpha` and input mixup on or off: each trial trains a new
    student in a `keras_kd.Distiller` for the epochs Hyperband gives it (a
    promoted trial continues from its parent's weights with a fresh
    optimizer, as in keras-tuner) and is scored by `monitor` on
    `validation_data` at its end.

    A distilled trial replaces the baseline only if its gain over the
    baseline's score exceeds its **margin**; the returned student is the
    best-scoring of the trials that clear theirs, else the baseline's. So
    the result is never worse on the validation data than the baseline
    (`result.best_score` against `result.baseline_score`), and, with the
    default paired margin, a distilled student is returned only when its
    gain is larger than the validation set's noise: the best of many trials
    on a small validation set is otherwise partly luck. With a `seed` every
    trial's student starts from the same initial weights as the baseline,
    and the search (trials and scores) is reproducible.

    Args:
        teacher: the trained teacher, a `keras.Model` (frozen).
        student_fn: a function returning a new, untrained student each
            call: `student_fn()`, or `student_fn(hp)` to search the
            student's own settings with keras-tuner's `HyperParameters` (the
            baseline, and the trials of an int `budget`, use their default
            values).
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
            These four are the search budget; `budget=TuneBudget(...)`
            says the same in one argument (then leave them at their
            defaults).
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
        verbose: 0 (silent), 1 (a line per trial, with its margin and
            whether it cleared it) or 2 (also `fit`'s line per epoch).
        budget: None (Hyperband, with the keywords above), a `TuneBudget`
            holding `max_epochs`, `factor`, `hyperband_iterations` and
            `max_trials` together, or a positive int `n`: a budget of
            trials, no Hyperband: the baseline and exactly `n` distilled
            trials of `max_epochs` epochs each, the first `n` of
            `BUDGET_RECIPES` (of those inside `search_space` if given:
            fewer than `n` inside is an error). With an int, `factor`,
            `hyperband_iterations` and `max_trials` stay at their defaults,
            and `directory`, `project_name` and `overwrite` are unused.
        margin: what a distilled trial's gain over the baseline's score
            must exceed (strictly) for the trial to replace the baseline.
            `"paired"`: the validation noise of that comparison, from a
            one-sided paired test at 5% on the per-example values of the
            baseline's and the trial's students: for an accuracy monitor
            (`"accuracy"`, `"acc"`, sparse categorical, categorical or
            binary accuracy among `metrics`), McNemar's test (normal
            approximation): with `b` the validation examples the baseline
            gets right and the trial wrong, `c` the reverse and `n` all of
            them, the trial clears iff `c - b > 1.645 * sqrt(b + c)`, and
            its margin is `1.645 * sqrt(b + c) / n`; for `"val_hard_loss"`,
            a paired z-test on the per-example hard losses (`loss` without
            reduction, averaged over any axes after the batch's): margin
            `1.645 * std(d, ddof=1) / sqrt(n)`, `d` the per-example
            decrease. Correctness per example follows the Keras metric:
            argmax for (sparse) categorical accuracy, the output above the
            metric's threshold (0.5) for binary accuracy, which reads the
            outputs as probabilities (as Keras does). It needs
            `validation_data` with one array of labels and no sample
            weights, and costs one prediction pass of two students over it
            per trial; anywhere else it is a `ValueError`, raised before
            any training. `"auto"` (the default): `"paired"` where it
            works, else 0.0. A number >= 0: a fixed margin in the monitor's
            units; 0.0 is the strict rule (any gain).

    Returns:
        A `TuneResult`: `student`, `config`, `trials` (each with its
        `margin` and `significant`), `baseline_score`, `margin`,
        `selection` and `table()`.

    Example:

    ```python
    import keras, keras_kd as kd
    from keras_kd.tune import TuneBudget

    result = kd.tune(
        teacher,
        lambda: keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)]),
        (x_train, y_train),
        (x_val, y_val),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="adam",
        budget=12,  # the 12 first recipes; or TuneBudget(max_epochs=9, ...)
        max_epochs=9,
        seed=0,
    )
    print(result.table())  # each trial's margin, and whether it cleared it
    print(result.config)  # {'objective': 'dist', 'temperature': 4.0, ...}
    result.student.save("student.keras")
    ```
    """
    keras_tuner = import_keras_tuner()
    _check_models(teacher, student_fn, validation_data)
    fresh_metrics(metrics)  # checked now, copied per trial
    monitor, mode = check_monitor(monitor, mode)
    validation = fit_arguments(validation_data, "validation_data", batch_size)
    space = check_space(search_space)
    search = Search(
        teacher=teacher,
        student_fn=student_fn,
        train_kwargs=fit_arguments(train_data, "train_data", batch_size),
        validation=validation_for_fit(validation),
        loss=loss,
        make_optimizer=optimizer_factory(optimizer),
        metrics=metrics,
        monitor=monitor,
        mode=mode,
        space=space,
        mixup_alpha=_utils.check_number(
            mixup_alpha, "mixup_alpha", low=0.0, low_open=True
        ),
        seed=None if seed is None else _utils.check_int(seed, "seed", minimum=0),
        verbose=_utils.check_int(verbose, "verbose", minimum=0),
        selection=Selection.create(
            margin,
            monitor=monitor,
            mode=mode,
            metrics=metrics,
            loss=loss,
            validation=validation,
        ),
    )
    budget = _budget(
        budget,
        max_epochs=max_epochs,
        factor=factor,
        hyperband_iterations=hyperband_iterations,
        max_trials=max_trials,
    )
    if not isinstance(budget, TuneBudget):  # a budget of trials
        recipes = budget_recipes(budget, space)
        search.baseline(max_epochs)
        for index, recipe in enumerate(recipes):
            search.run_recipe(index, recipe, max_epochs)
        return _result(search)
    temporary = directory is None
    directory = _project_directory(directory, project_name, overwrite)
    try:
        search.baseline(budget.max_epochs)
        search_with_hyperband(keras_tuner, search, budget, directory, project_name)
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return _result(search)


# ---------------------------------------------------------------------------
# The steps of `tune`
# ---------------------------------------------------------------------------


def _check_models(teacher, student_fn, validation_data) -> None:
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


def _budget(budget, **keywords) -> TuneBudget | int:
    """The search budget: a `TuneBudget` (`budget`, or `tune`'s budget
    keywords), or an int: a budget of trials."""
    if budget is None:
        return TuneBudget(**keywords)
    is_int = isinstance(budget, numbers.Integral) and not isinstance(
        budget, (bool, np.bool_)
    )
    if not is_int and not isinstance(budget, TuneBudget):
        raise TypeError(
            "Argument `budget` must be None, a positive int (a number of "
            "distilled trials) or a `keras_kd.tune.TuneBudget`. Received: "
            f"budget={budget!r} of type {type(budget).__name__}."
        )
    if is_int:
        if budget < 1:
            raise ValueError(
                "Argument `budget`, a number of distilled trials, must be at "
                f"least 1. Received: budget={budget}."
            )
        # Each trial trains `max_epochs` epochs: that keyword stays allowed.
        _utils.check_int(keywords.pop("max_epochs"), "max_epochs", minimum=1)
    defaults = TuneBudget()
    given = {k: v for k, v in keywords.items() if v != getattr(defaults, k)}
    if given:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(
            "The search budget is given twice: pass either `budget=` or the "
            "keywords `max_epochs`, `factor`, `hyperband_iterations` and "
            "`max_trials`, not both (with an int `budget`, a number of "
            "trials, `max_epochs` is how long each trains; Hyperband's "
            f"keywords do not apply). Received: budget={budget!r}, {shown}."
        )
    return int(budget) if is_int else budget


def _project_directory(directory, project_name, overwrite) -> str:
    """Where keras-tuner keeps its trials: `directory`, or a new temporary
    one; refuses an existing project unless `overwrite`."""
    overwrite = _utils.check_bool(overwrite, "overwrite")
    if not isinstance(project_name, str) or not project_name:
        raise TypeError(
            "Argument `project_name` must be a non-empty string. Received: "
            f"project_name={project_name!r}."
        )
    if directory is None:
        return tempfile.mkdtemp(prefix="keras_kd_tune_")
    project = os.path.join(os.fspath(directory), project_name)
    if os.path.exists(project) and not overwrite:
        raise ValueError(
            f"A tuning project already exists at {project!r}; `tune` does not "
            "resume searches. Pass `overwrite=True` to replace it, or another "
            f"`directory` / `project_name`. Received: directory={directory!r}, "
            f"project_name={project_name!r}, overwrite=False."
        )
    return directory


def _result(search) -> TuneResult:
    """The `TuneResult` of a finished search: its best trial selected."""
    record, student = search.best
    record["selected"] = True
    best = best_distilled(search.records, search.mode)
    return TuneResult(
        student=student,
        config=dict(record),
        trials=[dict(r) for r in search.records],
        baseline_score=search.records[0]["score"],
        monitor=search.monitor,
        mode=search.mode,
        margin=None if best is None else best["margin"],
        selection=search.selection.name,
    )


__all__ = [
    "BUDGET_RECIPES",
    "DEFAULT_SEARCH_SPACE",
    "OBJECTIVES",
    "TuneBudget",
    "TuneResult",
    "tune",
]
