"""Who teaches and what they see: several teachers, class subsets, inputs.

The `Distiller`'s teacher side: its checks, the routing of inputs, each
teacher's forward pass and the soft targets of several teachers. Everything
here takes what it needs as arguments; nothing reads the Distiller's state.

- **several teachers** (`teacher=[t1, t2]`, `teacher_weights=`): the soft
  targets are the weighted average of the teachers' *probabilities* at the
  distillation loss's temperature, handed to the loss as the logits
  `T * log(sum_k w_k softmax(z_k / T))`, whose softmax at `T` is exactly
  that average;
- **a class subset** (`class_indices=`): the teacher's distribution
  restricted to those classes and renormalised (its logits gathered);
- **a teacher of fewer classes** (`teacher_classes=`, the mirror: a
  continual update, Learning without Forgetting): the student's outputs
  restricted to the classes the teacher knows, so the distillation term
  covers those alone;
- **different inputs** (`teacher_inputs=`, `student_inputs=`): each model
  reads its own entries of a dict of inputs.
"""

from __future__ import annotations

import numbers

from keras_kd import _utils, ensemble
from keras_kd.backend import tf


def check_teachers(teacher, teacher_weights):
    """The teachers as a list (empty for None) and their weights (or None)."""
    if isinstance(teacher, (list, tuple)):
        teachers = list(teacher)
        if not teachers:
            raise ValueError(
                "Argument `teacher` must be a model, a non-empty list of "
                "models, or None. Received: teacher=[]."
            )
        for i, model in enumerate(teachers):
            _utils.check_model(model, f"teacher[{i}]")
        if len({id(m) for m in teachers}) != len(teachers):
            raise ValueError(
                "Argument `teacher` lists the same model more than once; give "
                "each teacher once and weight them with `teacher_weights`."
            )
    else:
        _utils.check_model(teacher, "teacher", allow_none=True)
        teachers = [] if teacher is None else [teacher]
    if teacher_weights is None:
        return teachers, None
    if not isinstance(teacher_weights, (list, tuple)) or len(teacher_weights) != len(
        teachers
    ):
        raise ValueError(
            "Argument `teacher_weights` must be a list of one number >= 0 per "
            f"teacher ({len(teachers)}). Received: "
            f"teacher_weights={teacher_weights!r}."
        )
    weights = [
        _utils.check_number(w, f"teacher_weights[{i}]", low=0.0)
        for i, w in enumerate(teacher_weights)
    ]
    if not sum(weights) > 0:
        raise ValueError(
            "Argument `teacher_weights` must have a positive sum. Received: "
            f"teacher_weights={teacher_weights!r}."
        )
    return teachers, weights


def check_class_indices(class_indices, teachers, student):
    """`class_indices` as a list of ints, checked against the models."""
    if class_indices is None:
        return None
    if isinstance(class_indices, (str, bytes)) or not hasattr(
        class_indices, "__iter__"
    ):
        raise TypeError(
            "Argument `class_indices` must be a list of the teacher's class "
            f"indices. Received: class_indices={class_indices!r}."
        )
    indices = [
        _utils.check_int(i, "class_indices", 0, "a class index") for i in class_indices
    ]
    if not indices or len(set(indices)) != len(indices):
        raise ValueError(
            "Argument `class_indices` must list distinct class indices, one "
            f"per output class of the student. Received: class_indices={indices}."
        )
    outputs = tf.nest.flatten(student.outputs) if hasattr(student, "outputs") else []
    if len(outputs) > 1:
        raise ValueError(
            "Argument `class_indices` applies to a student with one output; "
            f"{student.name!r} has {len(outputs)}."
        )
    if outputs and outputs[0].shape[-1] not in (None, len(indices)):
        raise ValueError(
            f"Argument `class_indices` lists {len(indices)} classes but the "
            f"student {student.name!r} has {outputs[0].shape[-1]} outputs: one "
            "teacher class per student class, in the student's order."
        )
    for model in teachers:
        width = tf.nest.flatten(model.outputs)[0].shape[-1]
        if width is not None and max(indices) >= width:
            raise ValueError(
                f"Argument `class_indices` has index {max(indices)}, but the "
                f"teacher {model.name!r} has {width} classes (0 to {width - 1})."
            )
    return indices


def check_teacher_classes(teacher_classes, teachers, student, class_indices):
    """`teacher_classes` as a list of ints, checked against the models: the
    student's classes each of the teacher's outputs stands for, in order."""
    if teacher_classes is None:
        return None
    if isinstance(teacher_classes, (str, bytes)) or not hasattr(
        teacher_classes, "__iter__"
    ):
        raise TypeError(
            "Argument `teacher_classes` must be a list of the student's class "
            f"indices. Received: teacher_classes={teacher_classes!r}."
        )
    indices = [
        _utils.check_int(i, "teacher_classes", 0, "a class index")
        for i in teacher_classes
    ]
    if not indices or len(set(indices)) != len(indices):
        raise ValueError(
            "Argument `teacher_classes` must list distinct class indices of "
            "the student, one per output class of the teacher. Received: "
            f"teacher_classes={indices}."
        )
    if class_indices is not None or not teachers:
        raise ValueError(
            "Argument `teacher_classes` needs a teacher and excludes "
            "`class_indices` (its mirror): give one of them."
        )
    outputs = tf.nest.flatten(student.outputs) if hasattr(student, "outputs") else []
    if len(outputs) > 1:
        raise ValueError(
            "Argument `teacher_classes` applies to a student with one output; "
            f"{student.name!r} has {len(outputs)}."
        )
    width = outputs[0].shape[-1] if outputs else None
    if width is not None and max(indices) >= width:
        raise ValueError(
            f"Argument `teacher_classes` has index {max(indices)}, but the "
            f"student {student.name!r} has {width} classes (0 to {width - 1})."
        )
    for model in teachers:
        flat = tf.nest.flatten(model.outputs)
        if len(flat) != 1 or flat[0].shape[-1] not in (None, len(indices)):
            shapes = [tuple(t.shape) for t in flat]
            raise ValueError(
                f"Argument `teacher_classes` lists {len(indices)} classes but "
                f"the teacher {model.name!r} has outputs {shapes}: one student "
                "class per teacher class, in the teacher's order."
            )
    return indices


def check_class_subsets(
    teachers, student, class_indices, teacher_classes, check_pair, tapped=False
):
    """`(class_indices, teacher_classes)` checked, then each teacher's outputs
    against the student's (not with feature taps, `tapped`: there outputs
    may differ if no loss reads them)."""
    class_indices = check_class_indices(class_indices, teachers, student)
    teacher_classes = check_teacher_classes(
        teacher_classes, teachers, student, class_indices
    )
    if not tapped:
        check_teacher_outputs(
            teachers, student, class_indices, check_pair, teacher_classes
        )
    return class_indices, teacher_classes


def student_subset(outputs, teacher_classes):
    """The student's flattened outputs restricted to `teacher_classes` (the
    loss renormalises them: its softmax of gathered logits, or of the log of
    gathered probabilities)."""
    if teacher_classes is None:
        return outputs
    return [tf.gather(output, teacher_classes, axis=-1) for output in outputs]


def check_input_keys(value, argument: str):
    """`teacher_inputs` / `student_inputs`: None, a key, or a list of keys."""
    if value is None or isinstance(value, str):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(k, str) for k in value)
    ):
        return list(value)
    raise TypeError(
        f"Argument `{argument}` must be None, the key of a dict of inputs, or "
        f"a list of keys. Received: {argument}={value!r}."
    )


def route(x, keys, argument: str):
    """The entries of the dict `x` that `keys` names (all of `x` for None)."""
    if keys is None:
        return x
    if not isinstance(x, dict):
        raise ValueError(
            f"Argument `{argument}`={keys!r} reads entries of a dict of "
            f"inputs, but the batch's inputs are a {type(x).__name__}. Give "
            "`fit` a dict, e.g. {'image': ..., 'image_hr': ...}."
        )
    wanted = [keys] if isinstance(keys, str) else keys
    missing = [k for k in wanted if k not in x]
    if missing:
        raise ValueError(
            f"Argument `{argument}`: the inputs have no entry {missing[0]!r}; "
            f"they have {sorted(x)}."
        )
    return x[keys] if isinstance(keys, str) else {k: x[k] for k in keys}


def loss_temperature(fn):
    """The softening temperature of a distillation loss (1 if it has none)."""
    if fn is None:
        return 1.0
    if getattr(fn, "temperature_is_variable", False):
        return tf.cast(fn.temperature_variable(), tf.float32)
    temperature = getattr(fn, "temperature", 1.0)
    return float(temperature) if isinstance(temperature, numbers.Real) else 1.0


def combine(outputs, probabilities, weights, class_indices, fns):
    """One teacher's worth of targets from several teachers and a class subset.

    Args:
        outputs: per teacher, its flattened outputs.
        probabilities: per teacher, per output, whether it is probabilities.
        weights: the teachers' weights, or None for equal weights.
        class_indices: the classes the student learns, or None.
        fns: the distillation loss of each output (None to skip).

    Returns:
        The flattened targets, logits (softmax at the loss's temperature
        gives the average of the teachers' softened probabilities).
    """
    targets = []
    for k in range(len(outputs[0])):
        if fns[k] is not None and not getattr(fns[k], "teacher_from_logits", True):
            raise ValueError(
                "Several teachers and `class_indices` hand the distillation loss "
                "logits; give it `teacher_from_logits=True` (the default)."
            )
        logits = [
            _utils.log_probs(out[k]) if probs[k] else tf.cast(out[k], tf.float32)
            for out, probs in zip(outputs, probabilities)
        ]
        if len(logits) == 1:
            target = logits[0]
        else:
            temperature = loss_temperature(fns[k])
            softened = [tf.nn.log_softmax(z / temperature, -1) for z in logits]
            target = temperature * ensemble.log_mean_probs(softened, weights)
        if class_indices is not None:
            target = tf.gather(target, class_indices, axis=-1)
        targets.append(target)
    return targets


def target_probabilities(teachers, class_indices):
    """Per output, whether the targets are probabilities (None: logits).

    A single teacher without a class subset hands its own outputs over (its
    softmax detected); otherwise `combine` hands logits.
    """
    if len(teachers) == 1 and class_indices is None:
        return _utils.output_is_probabilities(teachers[0])
    return None


def forward(teachers, views, x, feature_count):
    """Each teacher once, in inference mode, gradient stopped.

    Args:
        teachers: the teachers.
        views: teacher index -> (its multi-output view, the positions of the
            feature taps it serves).
        x: the teachers' inputs.
        feature_count: the number of feature taps.

    Returns:
        `(outputs per teacher, features in tap order or None)`.
    """
    outputs, features = [], [None] * feature_count
    for index, model in enumerate(teachers):
        if index in views:
            view, positions = views[index]
            output, tapped = view(x, training=False)
            for position, value in zip(positions, tapped):
                features[position] = tf.stop_gradient(value)
        else:
            output = model(x, training=False)
        outputs.append(tf.nest.map_structure(tf.stop_gradient, output))
    return outputs, (features if feature_count else None)


def check_mask_token_id(value):
    """`mask_token_id`: None or a token id (an int >= 0)."""
    if value is None:
        return None
    return _utils.check_int(value, "mask_token_id", 0, "the [MASK] token's id")


def check_routing(teacher_inputs, student_inputs, augmentation, mixup):
    """`(teacher_inputs, student_inputs)` checked; refused with augmentation."""
    keys = (
        check_input_keys(teacher_inputs, "teacher_inputs"),
        check_input_keys(student_inputs, "student_inputs"),
    )
    if any(k is not None for k in keys) and (
        augmentation is not None or mixup is not None
    ):
        raise ValueError(
            "Arguments `teacher_inputs` / `student_inputs` cannot be combined "
            "with `augmentation` or `mixup`: the two models' different inputs "
            "cannot be augmented consistently in the train step. Augment them "
            "together in the tf.data pipeline instead."
        )
    return keys


def check_features(features):
    """`features` as a list of `FeatureMatch` (empty for None)."""
    from keras_kd.taps import FeatureMatch

    if features is None:
        return []
    if isinstance(features, FeatureMatch):
        features = [features]
    if not isinstance(features, (list, tuple)) or not all(
        isinstance(f, FeatureMatch) for f in features
    ):
        raise TypeError(
            "Argument `features` must be a list of `keras_kd.FeatureMatch`. "
            f"Received: features={features!r}."
        )
    return list(features)


def refuse_online(
    trains_teacher, teachers, features, keys, class_indices, mask_token_id=None
):
    """Online distillation takes one teacher and none of the options here."""
    if not trains_teacher:
        return
    given = [
        name
        for name, value in (
            ("several teachers", len(teachers) > 1),
            ("features", bool(features)),
            ("teacher_inputs / student_inputs", any(k is not None for k in keys)),
            ("class_indices / teacher_classes", class_indices is not None),
            ("mask_token_id", mask_token_id is not None),
        )
        if value
    ]
    if given:
        raise ValueError(
            f"Online distillation (`train_teacher=True`) does not support "
            f"{', '.join(given)}: the teacher learns from the student's outputs "
            "as they are. Use a frozen teacher (`train_teacher=False`)."
        )


def routing_config(features, **values) -> dict:
    """The config entries of the options above, only those that are set.

    Args:
        features: the Distiller's `taps.Features`, or None.
        **values: the options by name (`teacher_weights`, `teacher_inputs`,
            `student_inputs`, `class_indices`, `teacher_classes`,
            `mask_token_id`, `teacher_dtype`).
    """
    config = {}
    if features is not None:
        config["features"] = features.resolved_matches()
    config.update({key: value for key, value in values.items() if value is not None})
    return config


def check_teacher_outputs(
    teachers, student, class_indices, check_pair, teacher_classes=None
) -> None:
    """Each teacher's outputs pair with the student's (after the subset)."""
    if teacher_classes is not None:  # checked by `check_teacher_classes`
        return
    for model in teachers:
        if class_indices is None:
            check_pair(model, student)
            continue
        count_t = len(tf.nest.flatten(model.outputs))
        if count_t != 1:
            raise ValueError(
                "Argument `class_indices` applies to teachers with one output; "
                f"{model.name!r} has {count_t}."
            )


__all__ = [
    "check_class_indices",
    "check_class_subsets",
    "check_input_keys",
    "check_teacher_classes",
    "check_teacher_outputs",
    "check_teachers",
    "combine",
    "forward",
    "loss_temperature",
    "route",
    "student_subset",
    "target_probabilities",
]
