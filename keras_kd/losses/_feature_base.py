"""What the feature losses share: shape checks, per-sample means, the base."""

from __future__ import annotations

from keras_kd.backend import keras, tf

# Floor of a squared norm before dividing by its square root: a norm floor of
# 1e-12, as `torch.nn.functional.normalize` (attention transfer's code).
NORM_EPSILON = 1e-24
# Attention probabilities are clipped to this before their logarithm.
PROB_EPSILON = 1e-7
# RelationalKD: two samples whose squared distance is below this fraction of
# their squared norms (about the float32 rounding of a Gram matrix) coincide.
COINCIDENT = 1e-6

_EQUAL_SHAPES = (
    "{} needs teacher and student features of equal shape: project the "
    "student's feature to the teacher's shape first."
)


def _shapes(t, s) -> str:
    return f"teacher feature of shape {t.shape}, student feature of shape {s.shape}."


def _check_dims(t, s, dims: slice, what: str) -> None:
    """Raises if the static `dims` of `t` and `s` differ where both are known."""
    a, b = list(t.shape[dims]), list(s.shape[dims])
    if len(a) != len(b) or any(None not in (x, y) and x != y for x, y in zip(a, b)):
        raise ValueError(f"{what} Received: {_shapes(t, s)}")


def _teacher_student(y_true, y_pred):
    """Both features in float32; the teacher's gradient stopped."""
    return tf.stop_gradient(tf.cast(y_true, tf.float32)), tf.cast(y_pred, tf.float32)


def _flat(values):
    """Each sample flattened: shape `(batch, -1)`."""
    return tf.reshape(values, [tf.shape(values)[0], -1])


def _per_sample_mean(values):
    return tf.reduce_mean(_flat(values), axis=-1)


def _huber(x):
    """Huber loss with delta 1 (PyTorch's `smooth_l1_loss`)."""
    absolute = tf.abs(x)
    return tf.where(absolute < 1.0, 0.5 * tf.square(x), absolute - 0.5)


def _weighted_mean(v, w):
    return tf.math.divide_no_nan(tf.reduce_sum(w * v), tf.reduce_sum(w))


class _FeatureLoss(keras.losses.Loss):
    """The feature losses' constructor; subclasses set `default_name`,
    `width_agnostic` (True: features of any widths, no projection needed)
    and implement `call`."""

    default_name: str | None = None
    width_agnostic = False

    def __init__(self, reduction: str = "sum_over_batch_size", name: str | None = None):
        super().__init__(name=name or self.default_name, reduction=reduction)
