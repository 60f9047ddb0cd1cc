"""The plain functions of a distillation step, shared by the distillers.

Checks of a distiller's arguments, the pairing of a teacher's outputs with a
student's, one distillation loss per output, and what a loss may ask the
distiller for: the batch's labels (`requires_labels = True`) and the
training step (a `step_counter` attribute), the reading of a batch that
mixes labelled and unlabelled examples (`keras_kd.data.MixedBatch`), and of
one that carries its teacher's outputs (`keras_kd.data.TeacherBatch`).
`keras_kd/distiller.py` and `keras_kd/online.py` use them; users import
nothing from here.
"""

from __future__ import annotations

from keras_kd import _utils, augment, backend
from keras_kd.backend import keras, tf
from keras_kd.data import MixedBatch, TeacherBatch
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


def _output_shapes(model):
    """Static output shapes of a built Functional/Sequential model, or None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    return [tuple(o.shape) for o in tf.nest.flatten(outputs)]


def _shapes_compatible(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def check_output_shapes(teacher, student) -> None:
    """Raises if the models' outputs (where known) cannot be paired."""
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
        if not _shapes_compatible(ts, ss):
            raise ValueError(
                "The outputs of `teacher` and `student` cannot be compared: "
                f"teacher output shape {ts}, student output shape {ss}. "
                "Expected the same shape (e.g. the same number of classes)."
            )


def _check_pair_shapes(teacher_output, student_output, index) -> None:
    t, s = teacher_output.shape, student_output.shape
    if t.rank is not None and s.rank is not None:
        if not _shapes_compatible(tuple(t), tuple(s)):
            raise ValueError(
                "The teacher's and the student's outputs cannot be compared: "
                f"output {index} has shape {tuple(t)} for the teacher and "
                f"{tuple(s)} for the student. Expected the same shape "
                "(e.g. the same number of classes). To let only feature taps "
                "teach (e.g. backbones of different widths), compile with "
                "`distillation_loss=[None]` (no loss on that output)."
            )


def losses_per_output(spec, y_pred, output_names):
    """One distillation loss (or None) per flattened output of `y_pred`."""
    flat = tf.nest.flatten(y_pred)
    if isinstance(spec, dict):
        return [spec.get(k) for k in _keys(y_pred, output_names, len(flat))]
    if isinstance(spec, list):
        if len(spec) != len(flat):
            raise ValueError(
                "Argument `distillation_loss` must have one entry per "
                f"student output ({len(flat)}). Received {len(spec)}."
            )
        return list(spec)
    return [spec] * len(flat)


def _keys(y_pred, output_names, count):
    """The keys of the flattened outputs, in `tf.nest.flatten` order."""
    if isinstance(y_pred, dict):
        return sorted(y_pred.keys())
    return output_names or [str(i) for i in range(count)]


def labels_per_output(y, y_pred, output_names):
    """The labels of each flattened output of `y_pred` (None where absent).

    `y` is what `fit` gives with the inputs: None (a batch without labels),
    one tensor (shared by every output), or a list / dict with one entry per
    output, as Keras's `compile(loss=...)` takes them.
    """
    count = len(tf.nest.flatten(y_pred))
    if y is None:
        return [None] * count
    if isinstance(y, dict):
        return [y.get(k) for k in _keys(y_pred, output_names, count)]
    if isinstance(y, (list, tuple)) and len(y) == count:
        return list(y)
    return [y] * count


def needs_labels(fns) -> bool:
    """Whether a loss among `fns` declares `requires_labels = True`."""
    return any(getattr(fn, "requires_labels", False) for fn in fns if fn)


def attach_step_counter(spec, counter) -> None:
    """Gives each distillation loss with a `step_counter` attribute `counter`.

    Losses that change with training progress (`DecoupledKD`'s warm-up) read
    the number of steps taken from it; the distiller gives its optimizer's
    `iterations`, which advances with each training step.
    """
    values = spec.values() if isinstance(spec, dict) else tf.nest.flatten(spec)
    for fn in values:
        if fn is not None and hasattr(fn, "step_counter"):
            fn.step_counter = counter


def _as_logits(value, is_probabilities, fn, flag):
    """Probabilities of a softmax output become log-probabilities (logits).

    Only when the loss expects logits (its `teacher_from_logits` /
    `student_from_logits` is True or absent); a loss told it gets
    probabilities receives them unchanged.
    """
    if not is_probabilities or not getattr(fn, flag, True):
        return value
    return _utils.log_probs(value)


def distillation_term(
    fns,
    targets,
    predictions,
    target_probs,
    prediction_probs,
    sample_weight,
    labels=None,
):
    """The sum over outputs of `fn(target, prediction)`, in float32.

    A loss with `requires_labels = True` is called as
    `fn(target, prediction, sample_weight=..., labels=...)`.

    Args:
        fns: one loss (or None to skip) per output.
        targets: the flattened outputs that teach.
        predictions: the flattened outputs that learn, paired one to one.
        target_probs: per output, whether the target is probabilities (its
            model ends with a softmax), or None where unknown.
        prediction_probs: the same for the predictions.
        sample_weight: None, or sample weights (one per output, or shared).
        labels: None, or the labels of each output (None where a batch
            has none), for the losses that require them.

    Returns:
        A float32 scalar, scaled per replica under `tf.distribute`.
    """
    if len(targets) != len(predictions):
        raise ValueError(
            f"The teacher has {len(targets)} outputs and the student "
            f"{len(predictions)}; distillation pairs them one to one."
        )
    weights = tf.nest.flatten(sample_weight) if sample_weight is not None else []
    if len(weights) != len(predictions):
        weights = [sample_weight] * len(predictions)
    target_probs = target_probs or [False] * len(targets)
    prediction_probs = prediction_probs or [False] * len(predictions)
    labels = labels or [None] * len(predictions)
    terms = []
    for i, fn in enumerate(fns):
        if fn is None:
            continue
        _check_pair_shapes(targets[i], predictions[i], i)
        backend.allow_batch_mean_under_strategy(fn)
        extra = {"labels": labels[i]} if getattr(fn, "requires_labels", False) else {}
        # New tensors, without Keras masks: the weights say which tokens count
        # (`token_weights`), so that Keras does not mask a second time.
        value = fn(
            tf.identity(
                _as_logits(targets[i], target_probs[i], fn, "teacher_from_logits")
            ),
            tf.identity(
                _as_logits(
                    predictions[i], prediction_probs[i], fn, "student_from_logits"
                )
            ),
            sample_weight=weights[i],
            **extra,
        )
        value = tf.cast(value, tf.float32)
        if backend.LEGACY:  # Keras 3 losses scale per replica themselves
            value = value / float(backend.num_replicas())
        terms.append(value)
    if not terms:
        return tf.zeros((), tf.float32)
    return tf.add_n(terms)


def keras_mask(outputs):
    """The Keras mask of the first output that has one (`mask_zero=True`
    upstream), or None."""
    for output in tf.nest.flatten(outputs):
        mask = getattr(output, "_keras_mask", None)
        if mask is not None:
            return mask
    return None


def token_weights(sample_weight, outputs):
    """The weights of the distillation terms of a batch of sequences.

    A Keras mask on `outputs` is folded into the sample weights (one weight
    per token), then `per_token_mean` rescales per-token weights for a mean
    over the real tokens. `distillation_term` strips Keras masks from the
    tensors it compares, so these weights alone say which tokens count, for
    every loss alike (including batch-level ones such as `DIST`).
    """
    weights = _utils.with_token_mask(sample_weight, keras_mask(outputs))
    return per_token_mean(weights)


def per_token_mean(sample_weight, outputs=None):
    """Per-token sample weights rescaled for a mean over the real tokens.

    Keras averages a loss of `(batch, time)` values over all `batch * time`
    positions, so with a 0/1 padding mask as sample weights the padded
    positions add zeros but still count in the mean. Rescaling the weights
    by `size / sum(weights)` (as Keras does for its own masks, from
    `mask_zero=True`) makes that mean `sum(w * loss) / sum(w)`: a padded
    position contributes exactly nothing and a batch with padding gives the
    loss of its real tokens alone. Under `tf.distribute` each replica
    averages over its own real tokens. Weights of one value per example
    (rank 1) are returned unchanged. When an output carries a Keras mask
    (which Keras multiplies in and rescales by its own count), the result is
    still `sum(w * m * loss) / sum(w * m)`.

    Args:
        sample_weight: None, or sample weights (a structure, one per output).
        outputs: the student's outputs, to look for Keras masks.

    Returns:
        The weights, those of rank >= 2 rescaled, in float32.
    """

    mask = keras_mask(outputs)

    def rescale(weights):
        if weights is None:
            return None
        weights = tf.convert_to_tensor(weights)
        if weights.shape.rank is None or weights.shape.rank < 2:
            return weights
        weights = tf.cast(weights, tf.float32)
        if mask is None:
            total = tf.reduce_sum(weights)
            scale = tf.cast(tf.size(weights), tf.float32)
        else:  # Keras multiplies by the mask and rescales by its own count
            real = tf.cast(tf.reshape(mask, tf.shape(weights)), tf.float32)
            total = tf.reduce_sum(weights * real)
            scale = tf.reduce_sum(real)
        return tf.math.divide_no_nan(weights * scale, total)

    if sample_weight is None:
        return None
    return tf.nest.map_structure(rescale, sample_weight)


# ---------------------------------------------------------------------------
# Batches of labelled and unlabelled examples
# ---------------------------------------------------------------------------


def unpack_batch(data):
    """`(x, y, sample_weight, labelled)` of a batch that `fit` gives.

    A `MixedBatch` (checked before Keras's unpacking, which would read it as
    `(x, y, sample_weight)`) gives its labelled and unlabelled inputs
    concatenated, labelled rows first, its labels, no sample weights and
    `labelled`, the number of labelled rows (a scalar tensor). Any other
    batch is unpacked as Keras does, with `labelled=None`.
    """
    if isinstance(data, MixedBatch):
        x = tf.nest.map_structure(
            lambda a, b: tf.concat([a, b], axis=0), data.x, data.unlabelled_x
        )
        labelled = _utils.batch_size(data.x)
        return x, data.y, None, labelled
    if isinstance(data, TeacherBatch):  # `()` (or None): absent
        y = None if _absent(data.y) else data.y
        weights = None if _absent(data.sample_weight) else data.sample_weight
        return data.x, y, weights, None
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    return x, y, sample_weight, None


def _absent(value) -> bool:
    return value is None or (isinstance(value, tuple) and not value)


def cached_outputs(data):
    """The stored teacher outputs of a `TeacherBatch` (logits), else None."""
    return data.teacher_outputs if isinstance(data, TeacherBatch) else None


def refuse_mixed_batch(data, owner: str) -> None:
    """Raises if `data` is a `MixedBatch` or a `TeacherBatch`, which `owner`
    cannot train on."""
    if isinstance(data, MixedBatch):
        raise ValueError(
            f"{owner} cannot train on batches of `keras_kd.data.mix` "
            "(labelled and unlabelled examples together): its models learn "
            "from the labels. Use `keras_kd.Distiller` for a transfer set."
        )
    if isinstance(data, TeacherBatch):
        raise ValueError(
            f"{owner} cannot train on batches of "
            "`keras_kd.data.with_teacher_outputs`: its models learn during "
            "training, so outputs stored before it would be stale. Give it "
            "the data without the stored outputs."
        )


def refuse_cached_teaching(
    owner, teachers, features, augmentation, mixup, trains_teacher, training
) -> None:
    """Raises where a distiller cannot use stored teacher outputs.

    Stored outputs replace one frozen teacher's live outputs on the inputs
    as stored: not those of a teacher that trains, of several teachers, of
    an augmented or mixed view (`training` steps only), nor the
    intermediate features that feature taps read. With `teacher_inputs`
    routing, the stored outputs are the teacher's on its own entry (`fit`
    checks the first batch against the teacher on that entry).
    """
    reasons = []
    if trains_teacher:
        reasons.append("its teacher trains, so stored outputs would be stale")
    if not teachers:
        reasons.append(
            "it has no teacher (give it the teacher the outputs were "
            "computed with; its forward pass is skipped)"
        )
    elif len(teachers) > 1:
        reasons.append(
            f"it has {len(teachers)} teachers and the cache holds one "
            "teacher's outputs (cache an ensemble as one model)"
        )
    if features:
        reasons.append(
            "its feature taps need the teacher's intermediate features, which "
            "are not stored (run the teacher live)"
        )
    if training and (augmentation is not None or mixup is not None):
        reasons.append(
            "its `augmentation` / `mixup` changes the inputs in each step, so "
            "the stored outputs (of the inputs as stored) would be stale "
            "targets for the view the student sees (store augmented views "
            "with `with_teacher_outputs(..., augmentation=..., views=K)` and "
            "give the Distiller no augmentation)"
        )
    if reasons:
        raise ValueError(
            f"{owner} cannot use teacher outputs stored by "
            f"`keras_kd.data.with_teacher_outputs`: {'; '.join(reasons)}."
        )


def labelled_rows(values, labelled):
    """The first `labelled` rows of each tensor of `values` (all if None)."""
    if labelled is None:
        return values
    return tf.nest.map_structure(lambda t: t[:labelled], values)


def mixed_batch_labels(fns, y, teacher_output, labelled, y_pred, output_names):
    """For the losses among `fns` that require labels (None if none does or
    without a teacher), per output: the labelled rows' labels followed by the
    teacher's top class on the unlabelled rows, encoded as the labels are
    (sparse, sparse with a trailing 1, or one-hot)."""
    if teacher_output is None or not needs_labels(fns):
        return None
    teachers = tf.nest.flatten(teacher_output)
    per_output = labels_per_output(y, y_pred, output_names)
    labels = []
    for label, teacher in zip(per_output, teachers):
        if label is None:
            labels.append(None)
            continue
        label = tf.convert_to_tensor(label)
        top = tf.argmax(teacher[labelled:], axis=-1)
        if label.shape.rank == teacher.shape.rank:
            if label.shape[-1] == 1:
                top = top[..., None]
            else:
                top = tf.one_hot(top, tf.shape(teacher)[-1])
        labels.append(tf.concat([label, tf.cast(top, label.dtype)], axis=0))
    return labels
