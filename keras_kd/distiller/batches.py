"""How the Distiller reads a batch: unpacking, masks and per-token weights.

A batch that `fit` gives is unpacked here: a plain `(x, y, sample_weight)`,
a `keras_kd.data.MixedBatch` (labelled and unlabelled examples together) or a
`keras_kd.data.TeacherBatch` (with its teacher's stored outputs). For
sequences, the Keras mask and per-token sample weights become the weights of
a mean over the real tokens (`per_token_mean`), and a masked language model's
`[MASK]` positions the only ones distilled (`masked_positions`).
`keras_kd.online` uses these too.
"""

from __future__ import annotations

from keras_kd import _utils, backend
from keras_kd.backend import keras, tf
from keras_kd.data import MixedBatch, TeacherBatch


def keras_mask(outputs):
    """The Keras mask of the first output that has one (`mask_zero=True`
    upstream), or None."""
    for output in tf.nest.flatten(outputs):
        mask = backend.keras_mask(output)
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


def masked_positions(tokens, mask_token_id, sample_weight):
    """Per-token weights of the positions holding `mask_token_id` (MLM).

    Args:
        tokens: the student's input token ids, `(batch, time)`.
        mask_token_id: the id of the mask token.
        sample_weight: None, or weights per example or per token; they
            multiply the positions.

    Returns:
        float32 weights of shape `(batch, time)`.
    """
    tokens = tf.convert_to_tensor(tokens)
    if tokens.shape.rank != 2 or not tokens.dtype.is_integer:
        raise ValueError(
            "Argument `mask_token_id` restricts distillation to the positions "
            "of the mask token in the student's inputs, which must be integer "
            f"token ids of shape (batch, time). Received inputs of shape "
            f"{tuple(tokens.shape)} and dtype {tokens.dtype.name}."
        )
    positions = tf.cast(tf.equal(tokens, mask_token_id), tf.float32)
    if sample_weight is None:
        return positions
    weights = tf.cast(tf.nest.flatten(sample_weight)[0], tf.float32)
    if weights.shape.rank == 1:
        weights = weights[:, None]
    return positions * weights


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
