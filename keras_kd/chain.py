"""Teacher-assistant chains: `distill_chain` (Mirzadeh et al. 2020).

A student far smaller than its teacher often learns little from it (the
*capacity gap*). Mirzadeh et al. ("Improved Knowledge Distillation via
Teacher Assistant", AAAI 2020) distil through one or more models of
intermediate size instead: the teacher teaches an assistant, the frozen
assistant teaches the next, and the last teaches the student.

The small helpers at the end (`optimizer_factory`, `fresh_metrics`,
`fit_arguments`) give each training run its own optimizer and metric
objects; `keras_kd.tune` uses them too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from keras_kd import _utils
from keras_kd.backend import keras, tf
from keras_kd.distiller import Distiller


@dataclasses.dataclass
class ChainStage:
    """One stage of a chain: `student` distilled from the frozen `teacher`.

    Attributes:
        index: the stage's number, from 1 (model 0 teaches model 1).
        teacher: the frozen model that taught this stage.
        student: the model trained in this stage.
        history: the `keras.callbacks.History` of its `fit`.
        metrics: a dict of the stage's final figures: the Distiller's
            `evaluate` on `validation_data` when it was given (`loss`,
            `hard_loss`, `distillation_loss` and the compiled metrics, all
            against this stage's teacher), else the last epoch's training logs.
        epochs: the epochs it was trained for.
        alpha: its `alpha` (None: `Distiller.compile`'s default).
    """

    index: int
    teacher: object
    student: object
    history: object
    metrics: dict
    epochs: int
    alpha: float | None


@dataclasses.dataclass
class ChainResult:
    """What `distill_chain` returns: every stage, in order.

    Attributes:
        stages: a list of `ChainStage`, stage 1 first.
        models: the chain's models, teacher first, each trained.
    """

    stages: list
    models: list

    @property
    def student(self):
        """The last model of the chain (trained, still trainable)."""
        return self.models[-1]

    def table(self) -> str:
        """The stages' metrics as a plain-text table."""
        keys = []
        for stage in self.stages:
            keys += [k for k in stage.metrics if k not in keys]
        header = ["stage", "teacher", "student", "epochs", "alpha", *keys]
        rows = [header]
        for s in self.stages:
            alpha = "default" if s.alpha is None else f"{s.alpha:g}"
            values = [f"{s.metrics[k]:.4f}" if k in s.metrics else "-" for k in keys]
            rows.append(
                [str(s.index), s.teacher.name, s.student.name, str(s.epochs), alpha]
                + values
            )
        return format_table(rows)

    def __str__(self) -> str:
        return self.table()


def distill_chain(
    models,
    train_data,
    validation_data=None,
    *,
    epochs=1,
    loss,
    distillation_loss=None,
    alpha=None,
    optimizer="adam",
    metrics=("accuracy",),
    batch_size: int = 32,
    callbacks=None,
    seed: int | None = None,
    verbose: int = 0,
) -> ChainResult:
    """Distils a teacher into a student through teacher assistants.

    Stage `i` (from 1) trains `models[i]` with a `keras_kd.Distiller` whose
    teacher is `models[i - 1]`, then freezes `models[i]`
    (`trainable = False`) so that it teaches stage `i + 1` unchanged. The
    last model is left trainable. `models[0]` must already be trained.

    Each stage gets a fresh optimizer and fresh metric objects (one Keras
    optimizer cannot train two models), built from `optimizer` and `metrics`.

    `epochs`, `alpha`, `loss` and `distillation_loss` take one value for
    every stage or a list with one value per stage (`len(models) - 1`). A
    list of losses with one entry per stage is read per stage, not per
    output; for multi-output models give a dict keyed by output name (the
    same for every stage) or a list of per-stage values.

    Args:
        models: a list of at least two `keras.Model`s, teacher first,
            student last, assistants in between (usually of decreasing size).
        train_data: `(x, y)` (or `(x, y, sample_weight)`) numpy arrays, or a
            `tf.data.Dataset` of such batches.
        validation_data: like `train_data`, or None. When given, each stage
            is validated on it after each epoch and evaluated on it at the
            end (`ChainStage.metrics`).
        epochs: epochs per stage: an int, or a list of ints, one per stage.
        loss: the hard-label loss of `Distiller.compile` (or a list, one per
            stage).
        distillation_loss: the distillation loss (or a list, one per stage);
            None: `Distiller.compile`'s default. Loss objects are copied
            from their config for each stage.
        alpha: weight of the distillation term, in [0, 1]:
            `loss = alpha * distillation + (1 - alpha) * hard` (or a list,
            one per stage); None: `Distiller.compile`'s default.
        optimizer: a name (`"adam"`), a config dict
            (`keras.optimizers.serialize(...)`), an optimizer instance (its
            config is copied; the instance itself is not used) or a function
            returning a new optimizer.
        metrics: the compiled metrics (names or `keras.metrics.Metric`s,
            copied for each stage).
        batch_size: batch size for numpy data (ignored for datasets).
        callbacks: a list of Keras callbacks given to every stage's `fit`.
        seed: if not None, `keras.utils.set_random_seed(seed)` before each
            stage, for reproducible runs.
        verbose: 0 (silent), 1 (a line per stage) or 2 (also `fit`'s
            one line per epoch).

    Returns:
        A `ChainResult`: `stages` (each with its trained model, History and
        metrics), `models` and `student` (the last model).

    Example:

    ```python
    import keras, keras_kd as kd

    result = kd.distill_chain(
        [teacher, assistant, student],
        (x_train, y_train),
        validation_data=(x_val, y_val),
        epochs=[10, 10],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss=kd.losses.KLDivergence(temperature=4.0),
        alpha=0.9,
        optimizer="adam",
    )
    print(result.table())
    result.student.save("student.keras")
    ```
    """
    models = _check_models(models)
    n_stages = len(models) - 1
    plan = _StagePlan(  # every check before the first stage trains
        models=models,
        epochs=per_stage(epochs, "epochs", n_stages, _check_epochs),
        alpha=per_stage(alpha, "alpha", n_stages, _check_optional_alpha),
        loss=per_stage(loss, "loss", n_stages, None),
        distillation_loss=per_stage(
            distillation_loss, "distillation_loss", n_stages, None
        ),
        make_optimizer=optimizer_factory(optimizer),
        metrics=_check_metrics(metrics),  # copied per stage
        fit_kwargs=fit_arguments(train_data, "train_data", batch_size),
        validation=None
        if validation_data is None
        else fit_arguments(validation_data, "validation_data", batch_size),
        callbacks=callbacks,
        verbose=_utils.check_int(verbose, "verbose", minimum=0),
        seed=None if seed is None else _utils.check_int(seed, "seed", minimum=0),
    )
    stages = []
    for i in range(1, len(models)):
        stage = _train_stage(plan, i)
        if i < len(models) - 1:
            stage.student.trainable = False  # the next stage's frozen teacher
        stages.append(stage)
        if plan.verbose:
            _print_stage(stage)
    return ChainResult(stages=stages, models=list(models))


# ---------------------------------------------------------------------------
# The stages: what each one trains with, and one stage's training
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _StagePlan:
    """`distill_chain`'s arguments, checked: one value per stage where a
    stage may differ, and `fit`'s data arguments."""

    models: list
    epochs: list
    alpha: list
    loss: list
    distillation_loss: list
    make_optimizer: Callable
    metrics: object
    fit_kwargs: dict
    validation: dict | None
    callbacks: object
    seed: int | None
    verbose: int


def _train_stage(plan: _StagePlan, i: int) -> ChainStage:
    """Stage `i` (from 1): trains `models[i]` from the frozen `models[i - 1]`."""
    teacher, student = plan.models[i - 1], plan.models[i]
    if plan.seed is not None:
        keras.utils.set_random_seed(plan.seed)
    distiller = Distiller(teacher=teacher, student=student)
    compile_kwargs = {}
    if plan.distillation_loss[i - 1] is not None:
        compile_kwargs["distillation_loss"] = copy_loss(plan.distillation_loss[i - 1])
    if plan.alpha[i - 1] is not None:
        compile_kwargs["alpha"] = plan.alpha[i - 1]
    distiller.compile(
        optimizer=plan.make_optimizer(),
        loss=copy_loss(plan.loss[i - 1]),
        metrics=fresh_metrics(plan.metrics),
        **compile_kwargs,
    )
    history = distiller.fit(
        **plan.fit_kwargs,
        epochs=plan.epochs[i - 1],
        validation_data=validation_for_fit(plan.validation),
        callbacks=None if plan.callbacks is None else list(plan.callbacks),
        shuffle="y" in plan.fit_kwargs,  # a dataset comes shuffled, or not
        verbose=2 if plan.verbose >= 2 else 0,
    )
    if plan.validation is None:
        figures = {k: float(v[-1]) for k, v in history.history.items()}
    else:
        figures = distiller.evaluate(**plan.validation, verbose=0, return_dict=True)
        figures = {k: float(v) for k, v in figures.items()}
    return ChainStage(
        i, teacher, student, history, figures, plan.epochs[i - 1], plan.alpha[i - 1]
    )


def _print_stage(stage: ChainStage) -> None:
    shown = ", ".join(f"{k}={v:.4f}" for k, v in stage.metrics.items())
    pair = f"{stage.teacher.name} -> {stage.student.name}"
    print(f"distill_chain: stage {stage.index} ({pair}): {shown}")


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _check_models(models) -> list:
    if not isinstance(models, (list, tuple)):
        raise TypeError(
            "Argument `models` must be a list of Keras models, teacher first "
            f"and student last. Received: models={models!r} of type "
            f"{type(models).__name__}."
        )
    if len(models) < 2:
        raise ValueError(
            "Argument `models` must hold at least two models (a trained "
            f"teacher and a student). Received: {len(models)} model(s)."
        )
    for i, model in enumerate(models):
        _utils.check_model(model, f"models[{i}]")
    for i, model in enumerate(models):
        for j in range(i):
            if models[j] is model:
                raise ValueError(
                    "Argument `models` must hold distinct models: each stage "
                    f"trains a new one. Received the same model ({model.name!r}) "
                    f"at positions {j} and {i}."
                )
    return list(models)


def _check_epochs(value, argument):
    return _utils.check_int(value, argument, minimum=1, what="a number of epochs")


def _check_optional_alpha(value, argument):
    return None if value is None else _utils.check_alpha(value, argument)


def _check_metrics(metrics):
    fresh_metrics(metrics)  # raises for what is not metrics
    return metrics


def per_stage(value, argument: str, stages: int, check) -> list:
    """`value` as a list with one entry per stage.

    A list (or tuple) of length `stages` gives one value per stage; any
    other value is used for every stage. For numbers (`check` given) a list
    of another length is an error.
    """
    if isinstance(value, (list, tuple)) and (check is not None or len(value) == stages):
        if len(value) != stages:
            raise ValueError(
                f"Argument `{argument}` must be one value or a list with one "
                f"value per stage ({stages} stage(s)). Received a list of "
                f"{len(value)}: {argument}={list(value)!r}."
            )
        values = list(value)
        names = [f"{argument}[{i}]" for i in range(stages)]
    else:
        values = [value] * stages
        names = [argument] * stages
    if check is not None:
        values = [check(v, n) for v, n in zip(values, names)]
    return values


# ---------------------------------------------------------------------------
# Fresh objects for each training run (also used by keras_kd.tune)
# ---------------------------------------------------------------------------


def _is_optimizer(value) -> bool:
    return hasattr(value, "apply_gradients") and hasattr(value, "get_config")


def optimizer_factory(optimizer, argument: str = "optimizer") -> Callable:
    """A function returning a new optimizer, from a name, config, instance or
    factory; raises `TypeError` / `ValueError` for anything else."""
    if isinstance(optimizer, str) or isinstance(optimizer, dict):
        spec = copy.deepcopy(optimizer)
        try:
            keras.optimizers.get(copy.deepcopy(spec))
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"Argument `{argument}` names no Keras optimizer. Received: "
                f"{argument}={optimizer!r}. Expected e.g. 'adam' or "
                "keras.optimizers.serialize(keras.optimizers.Adam(1e-3))."
            ) from e
        return lambda: keras.optimizers.get(copy.deepcopy(spec))
    if _is_optimizer(optimizer):
        cls, config = type(optimizer), optimizer.get_config()
        return lambda: cls.from_config(copy.deepcopy(config))
    if callable(optimizer) and not isinstance(optimizer, type):
        made = []

        def make():
            value = optimizer()
            if not _is_optimizer(value):
                raise TypeError(
                    f"Argument `{argument}`, a function, must return a Keras "
                    f"optimizer. It returned {value!r} of type "
                    f"{type(value).__name__}."
                )
            if any(value is m for m in made):
                raise ValueError(
                    f"Argument `{argument}`, a function, returned the same "
                    "optimizer twice; one optimizer cannot train two models. "
                    "Return a new one each call, e.g. "
                    "`lambda: keras.optimizers.Adam(1e-3)`."
                )
            made.append(value)
            return value

        return make
    raise TypeError(
        f"Argument `{argument}` must be an optimizer's name, its config dict, "
        "an optimizer (its config is copied) or a function returning a new "
        f"optimizer. Received: {argument}={optimizer!r} of type "
        f"{type(optimizer).__name__}."
    )


def fresh_metrics(metrics, argument: str = "metrics"):
    """`metrics` with each `keras.metrics.Metric` replaced by a new copy."""
    if metrics is None:
        return None
    if isinstance(metrics, (str, keras.metrics.Metric)) or callable(metrics):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple, dict)):
        raise TypeError(
            f"Argument `{argument}` must be a list of metrics (names or "
            f"`keras.metrics.Metric`s). Received: {argument}={metrics!r} of "
            f"type {type(metrics).__name__}."
        )

    def copy_metric(metric):
        if isinstance(metric, keras.metrics.Metric):
            return type(metric).from_config(metric.get_config())
        return metric

    if isinstance(metrics, dict):
        return {k: fresh_metrics(v, f"{argument}[{k!r}]") for k, v in metrics.items()}
    return [
        copy_metric(m) if not isinstance(m, (list, tuple)) else fresh_metrics(m)
        for m in metrics
    ]


def copy_loss(loss):
    """A new copy of a `keras.losses.Loss` (from its config); other values
    (names, functions, None, lists and dicts of them) as they are."""
    if isinstance(loss, keras.losses.Loss):
        return type(loss).from_config(loss.get_config())
    if isinstance(loss, (list, tuple)):
        return [copy_loss(v) for v in loss]
    if isinstance(loss, dict):
        return {k: copy_loss(v) for k, v in loss.items()}
    return loss


def fit_arguments(data, argument: str, batch_size: int | None) -> dict:
    """`fit`'s `x`, `y`, `sample_weight` and `batch_size` for `data`:
    `(x, y[, sample_weight])` arrays or a `tf.data.Dataset`."""
    if isinstance(data, tf.data.Dataset):
        return {"x": data}
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        batch_size = _utils.check_int(batch_size, "batch_size", minimum=1)
        x, y, *rest = data
        n = len(tf.nest.flatten(x)[0])
        for name, part in (("y", y), *(("sample_weight", r) for r in rest)):
            if part is not None and len(tf.nest.flatten(part)[0]) != n:
                raise ValueError(
                    f"Argument `{argument}` has {n} inputs but "
                    f"{len(tf.nest.flatten(part)[0])} rows of {name}. Expected "
                    "arrays of the same length."
                )
        kwargs = {"x": x, "y": y, "batch_size": batch_size}
        if rest:
            kwargs["sample_weight"] = rest[0]
        return kwargs
    raise TypeError(
        f"Argument `{argument}` must be a tuple `(x, y)` or "
        "`(x, y, sample_weight)` of arrays, or a `tf.data.Dataset` of such "
        f"batches. Received: {argument}={_short(data)} of type "
        f"{type(data).__name__}."
    )


def validation_for_fit(kwargs):
    """`fit`'s `validation_data` from what `fit_arguments` returned (or None)."""
    if kwargs is None or "y" not in kwargs:
        return None if kwargs is None else kwargs["x"]
    if "sample_weight" in kwargs:
        return (kwargs["x"], kwargs["y"], kwargs["sample_weight"])
    return (kwargs["x"], kwargs["y"])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_table(rows) -> str:
    """Rows of strings (the header first) as left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows
    )


__all__ = ["ChainResult", "ChainStage", "distill_chain"]
