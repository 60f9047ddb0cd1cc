"""The Distiller's arguments, checked where they are given.

The constructor's student, `augmentation` and `mixup`; `compile`'s hard
loss and distillation loss (one, or one per output); whether a teacher's and
a student's outputs can be paired. Each mistake is a `ValueError` or
`TypeError` naming the argument, what was received and what is expected.
"""

from __future__ import annotations

from keras_kd import _utils, augment
from keras_kd.backend import keras, tf
from keras_kd.losses import as_loss

# ---------------------------------------------------------------------------
# Models and compile arguments
# ---------------------------------------------------------------------------


def check_trainable(student) -> None:
    """Raises unless a built `student` has trainable weights."""
    if getattr(student, "built", False) and not student.trainable_weights:
        raise ValueError(
            "Argument `student` has no trainable weights: there is nothing to "
            f"distil into. Received: student={student.name!r} with "
            f"trainable={student.trainable} and "
            f"{len(student.weights)} weights. Expected a model with trainable "
            "weights (is `student.trainable` False?)."
        )


def check_train_teacher(value, owner: str, trains_teacher: bool) -> None:
    """`train_teacher` checked: True only for a distiller that trains its teacher."""
    value = _utils.check_bool(value, "train_teacher")
    if value and not trains_teacher:
        raise ValueError(
            f"{owner} trains a student from a frozen teacher: "
            "`train_teacher=True` is online distillation, which "
            "`keras_kd.OnlineDistiller` implements; use "
            "`kd.OnlineDistiller(teacher, student, teacher_alpha=...)` (or "
            "subclass it). Until keras-kd 0.2, `Distiller(..., "
            "train_teacher=True)` built one. Received: train_teacher=True."
        )


def check_student(student, teachers) -> None:
    """The student: a trainable model that is none of the teachers."""
    _utils.check_model(student, "student", allow_none=False)
    if any(t is student for t in teachers):
        raise ValueError(
            "Arguments `teacher` and `student` must be different models. "
            f"Received the same model for both: {student.name!r}. For "
            "self-distillation, give the teacher a frozen copy of the "
            "student (see `keras_kd.callbacks.SelfDistillation`)."
        )
    check_trainable(student)


def check_consistent_teaching(augmentation, mixup, owner, trains_teacher):
    """A distiller's `augmentation` and `mixup`, checked; mixup as a `MixUp`."""
    augmentation = augment.check_augmentation(augmentation)
    mixup = augment.as_mixup(mixup)
    if (augmentation is not None or mixup is not None) and trains_teacher:
        raise ValueError(
            "Arguments `augmentation` and `mixup` are for a frozen teacher: "
            f"{owner} trains its teacher, which does not support them. "
            f"Received: augmentation={augmentation!r}, mixup={mixup!r}."
        )
    return augmentation, mixup


def check_hard_loss(loss) -> None:
    """Validates compile's `loss`: a loss, its name, a callable, a list or a
    dict of them, or None."""
    if loss is None:
        return
    if isinstance(loss, dict):
        for value in loss.values():
            check_hard_loss(value)
        return
    if isinstance(loss, (list, tuple)):
        for value in loss:
            check_hard_loss(value)
        return
    if isinstance(loss, str):
        try:
            keras.losses.get(loss)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "Argument `loss` names no Keras loss. Received: "
                f"loss={loss!r}. Expected a loss for the hard labels, e.g. "
                '"sparse_categorical_crossentropy".'
            ) from e
        return
    if isinstance(loss, keras.losses.Loss) or (
        callable(loss) and not isinstance(loss, (type, keras.Model))
    ):
        return
    raise TypeError(
        "Argument `loss` must be a Keras loss (a `keras.losses.Loss`, its "
        f"name, or a callable). Received: loss={loss!r} of type "
        f"{type(loss).__name__}."
    )


def check_distillation_loss(spec, output_names):
    """compile's `distillation_loss` with each entry as a `keras.losses.Loss`.

    Args:
        spec: one loss for every output, or a list / dict (keyed by output
            name) with a loss, or None to skip, per output.
        output_names: the student's output names, or None where unknown.
    """

    def check(value):
        return None if value is None else as_loss(value, "distillation_loss")

    if isinstance(spec, dict):
        for key in spec:
            if output_names is not None and key not in output_names:
                raise ValueError(
                    "Argument `distillation_loss` has a key that names no "
                    f"output of the student. Received key {key!r}; the "
                    f"student's outputs are {output_names}."
                )
        return {k: check(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        if output_names is not None and len(spec) != len(output_names):
            raise ValueError(
                "Argument `distillation_loss` must have one entry per "
                f"student output ({len(output_names)}: {output_names}). "
                f"Received {len(spec)} entries."
            )
        return [check(v) for v in spec]
    return as_loss(spec, "distillation_loss")


# ---------------------------------------------------------------------------
# Teacher and student outputs
# ---------------------------------------------------------------------------


def symbolic_outputs(model):
    """The symbolic outputs of a built Functional/Sequential model, or None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    return outputs or None


def _output_shapes(model):
    """Static output shapes of a built Functional/Sequential model, or None."""
    outputs = symbolic_outputs(model)
    if outputs is None:
        return None
    return [tuple(o.shape) for o in tf.nest.flatten(outputs)]


def shapes_compatible(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def check_output_shapes(teacher, student) -> None:
    """Raises if the models' outputs (where known) cannot be paired.

    Token-level outputs (rank 3 or more: `(batch, time, vocab)`) may differ
    in their last axis, the vocabulary: `check_vocabularies` decides at
    `compile`, when the distillation loss is known.
    """
    t, s = _output_shapes(teacher), _output_shapes(student)
    if t is None or s is None:
        return
    if len(t) != len(s):
        raise ValueError(
            "Arguments `teacher` and `student` must have the same number of "
            f"outputs. Received: teacher with {len(t)} ({t}), student with "
            f"{len(s)} ({s})."
        )
    for ts, ss in zip(t, s):
        tokens = len(ts) >= 3 and len(ss) == len(ts)
        if not shapes_compatible(ts[:-1] if tokens else ts, ss[:-1] if tokens else ss):
            raise ValueError(
                "The outputs of `teacher` and `student` cannot be compared: "
                f"teacher output shape {ts}, student output shape {ss}. "
                "Expected the same shape (e.g. the same number of classes)."
            )


def check_vocabularies(teachers, student, losses) -> None:
    """Raises at `compile` if a teacher's and the student's token-level
    outputs differ in their last axis (their vocabularies) and the loss on
    that output does not compare distributions over different vocabularies
    (`vocabulary_agnostic = True`, e.g. `UniversalLogitDistance`).

    Args:
        teachers: the teacher models.
        student: the student model.
        losses: one distillation loss (or None) per flattened output.
    """
    s = _output_shapes(student)
    if s is None:
        return
    for teacher in teachers:
        t = _output_shapes(teacher)
        if t is None or len(t) != len(s):
            continue
        for ts, ss, fn in zip(t, s, losses):
            differ = ts[-1] is not None and ss[-1] is not None and ts[-1] != ss[-1]
            if fn is None or not differ or getattr(fn, "vocabulary_agnostic", False):
                continue
            raise ValueError(
                f"Argument `distillation_loss` ({type(fn).__name__}) compares "
                "distributions over the same vocabulary, but the teacher's "
                f"output has shape {ts} and the student's {ss}. Expected the "
                "same last axis, or a loss for different vocabularies such as "
                "`keras_kd.losses.UniversalLogitDistance()`."
            )
