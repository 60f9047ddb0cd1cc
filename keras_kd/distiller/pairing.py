"""Pairing a teacher's outputs with a student's, one distillation term each.

One distillation loss per output (or None to skip one), the labels a loss may
ask for (`requires_labels = True`; on a `keras_kd.data.MixedBatch` the
teacher's top class fills the unlabelled rows), the training step given to
a loss with a `step_counter` attribute, softmax outputs turned into
log-probabilities, and the sum of the per-output distillation terms.
"""

from __future__ import annotations

from keras_kd import _utils, backend
from keras_kd.backend import tf
from keras_kd.distiller import arguments


def _check_pair_shapes(teacher_output, student_output, index, fn=None) -> None:
    t, s = teacher_output.shape, student_output.shape
    if getattr(fn, "vocabulary_agnostic", False):  # e.g. ULD: any last axes
        t, s = t[:-1], s[:-1]
    if t.rank is not None and s.rank is not None:
        if not arguments.shapes_compatible(tuple(t), tuple(s)):
            raise ValueError(
                "The teacher's and the student's outputs cannot be compared: "
                f"output {index} has shape {tuple(t)} for the teacher and "
                f"{tuple(s)} for the student. Expected the same shape "
                "(e.g. the same number of classes; a loss with "
                "`vocabulary_agnostic = True`, such as "
                "`keras_kd.losses.UniversalLogitDistance`, takes different last "
                "axes). To let only feature taps "
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
        _check_pair_shapes(targets[i], predictions[i], i, fn)
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


# ---------------------------------------------------------------------------
# Batches of labelled and unlabelled examples
# ---------------------------------------------------------------------------


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
