"""Feature-based objectives: the student matches the teacher's intermediate features.

Each loss compares a teacher's feature (`y_true`) with the student's
(`y_pred`) and returns one value per sample, so Keras's `sample_weight`
weights samples as for any loss. `FeatureMSE` and `CosineDistance` need
features of equal shape (project the student's first when widths differ);
`AttentionTransfer`, `RelationalKD` and `AttentionMapLoss` compare
width-free summaries and say so with the class attribute
`width_agnostic = True`. `get_feature_loss` resolves a name, a config or a
function into one of them.
"""

from __future__ import annotations

from keras_kd import _utils
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.losses._base import (
    as_loss,
)
from keras_kd.losses._feature_base import (
    _EQUAL_SHAPES,
    NORM_EPSILON,
    _check_dims,
    _FeatureLoss,
    _flat,
    _per_sample_mean,
    _shapes,
    _teacher_student,
)
from keras_kd.losses.attention import AttentionMapLoss
from keras_kd.losses.relational import RelationalKD


@register_serializable
class FeatureMSE(_FeatureLoss):
    """Mean squared error between intermediate features (FitNets hints).

    `mean((s - t)**2)` over every axis but the batch's, one value per sample
    (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets", with the
    mean in place of their sum). Teacher and student features must have the
    same shape: give the student a projection (a 1x1 convolution or a
    `Dense`) to the teacher's width when they differ.

    Args:
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar float32 loss (per-sample values with `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> t = np.zeros((2, 3, 3, 4), "float32")
    >>> float(kd.losses.FeatureMSE()(t, t + 2.0))
    4.0
    """

    default_name = "feature_mse"

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        t, s = _teacher_student(y_true, y_pred)
        _check_dims(t, s, slice(1, None), _EQUAL_SHAPES.format("FeatureMSE"))
        return _per_sample_mean(tf.square(s - t))


@register_serializable
class CosineDistance(_FeatureLoss):
    """One minus the cosine similarity of teacher and student features.

    `1 - cos(s, t)` along `axis` (the channels by default), averaged over
    the remaining non-batch positions (spatial positions, time steps): the
    student matches the *direction* of each feature vector, not its scale.
    With `axis=None` each sample's feature is flattened and compared by one
    cosine. Values lie in [0, 2].

    A zero vector (of either model) has cosine 0 with everything, so its
    distance is 1, with finite gradients: norms are floored at 1e-12 before
    dividing by them.

    Args:
        axis: the axis of the feature vectors, an integer other than 0 (the
            batch axis), or None to flatten each sample. Default -1.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar float32 loss (per-sample values with `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> t = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    >>> s = np.array([[[3.0, 0.0], [1.0, 0.0]]])  # same, then orthogonal
    >>> float(kd.losses.CosineDistance()(t, s))
    0.5
    """

    default_name = "cosine_distance"

    def __init__(
        self, axis: int | None = -1, reduction="sum_over_batch_size", name=None
    ):
        super().__init__(reduction=reduction, name=name)
        if axis is not None:
            axis = _utils.check_int(axis, "axis", what="the feature axis, or None")
            if axis == 0:
                raise ValueError(
                    "Argument `axis` cannot be 0, the batch axis: cosines are "
                    "taken within each sample. Received: axis=0. Use -1 for "
                    "channels-last features or None to flatten each sample."
                )
        self.axis = axis

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        t, s = _teacher_student(y_true, y_pred)
        _check_dims(t, s, slice(1, None), _EQUAL_SHAPES.format("CosineDistance"))
        axis = self.axis
        if axis is None:
            t, s, axis = _flat(t), _flat(s), -1
        rank = s.shape.rank
        if not (-rank < axis < rank) or axis % rank == 0:
            raise ValueError(
                f"Argument `axis` must name a non-batch axis of the features, of "
                f"rank {rank}. Received: axis={self.axis} for {_shapes(t, s)}"
            )
        t = tf.math.l2_normalize(t, axis=axis, epsilon=NORM_EPSILON)
        s = tf.math.l2_normalize(s, axis=axis, epsilon=NORM_EPSILON)
        return _per_sample_mean(1.0 - tf.reduce_sum(t * s, axis=axis))

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis}


@register_serializable
class AttentionTransfer(_FeatureLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    Each feature map is summarised by its spatial attention map
    `Q = mean_c |A_c|**p`, flattened and L2-normalised, and the student's map
    matches the teacher's:

    `loss = mean_positions (Q_s / ||Q_s|| - Q_t / ||Q_t||)**2`

    per sample, as in the authors' code (github.com/szagoruyko/
    attention-transfer, `at_loss`). Features are channels-last: `(batch, H,
    W, C)` maps, or `(batch, T, C)` sequences; every axis between the batch
    and the channels is spatial. The maps are spatial, so **channel counts
    may differ** (`width_agnostic = True`); spatial sizes must match.

    The paper weights the term by `beta / 2` with `beta = 1000` and this
    mean, i.e. 500 per tapped layer: pass that weight to the caller (for
    example as the distillation weight), the loss itself is unweighted.

    Args:
        p: the exponent of `|A|`, a number >= 1 (the paper uses 2; below 1
            the gradient at zero activations is infinite).
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar float32 loss (per-sample values with `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> base = np.random.default_rng(0).normal(size=(2, 4, 4, 3))
    >>> teacher = np.concatenate([base, base], axis=-1)  # 6 channels
    >>> student = 3.0 * base  # 3 channels, the same attention map
    >>> round(float(kd.losses.AttentionTransfer()(teacher, student)), 6)
    0.0
    """

    default_name = "attention_transfer"
    width_agnostic = True

    def __init__(self, p: float = 2.0, reduction="sum_over_batch_size", name=None):
        super().__init__(reduction=reduction, name=name)
        self.p = _utils.check_number(p, "p", low=1.0, what="the exponent of |A|")

    def _attention(self, feature):
        q = _flat(tf.reduce_mean(tf.pow(tf.abs(feature), self.p), axis=-1))
        return tf.math.l2_normalize(q, axis=-1, epsilon=NORM_EPSILON)

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        t, s = _teacher_student(y_true, y_pred)
        if t.shape.rank < 3 or s.shape.rank < 3:
            raise ValueError(
                "AttentionTransfer needs spatial features, (batch, H, W, C) or "
                f"(batch, T, C), with channels last. Received: {_shapes(t, s)}"
            )
        what = "AttentionTransfer needs equal spatial sizes (channels may differ)."
        _check_dims(t, s, slice(1, -1), what)
        return tf.reduce_mean(tf.square(self._attention(s) - self._attention(t)), -1)

    def get_config(self) -> dict:
        return {**super().get_config(), "p": self.p}


_NAMES = {
    **dict.fromkeys(("mse", "feature_mse"), FeatureMSE),
    **dict.fromkeys(("cosine", "cosine_distance"), CosineDistance),
    **dict.fromkeys(("at", "attention_transfer"), AttentionTransfer),
    **dict.fromkeys(("rkd", "relational"), RelationalKD),
    "attention_map": AttentionMapLoss,
}
_ACCEPTED = (
    "a `keras.losses.Loss` (e.g. `keras_kd.losses.AttentionTransfer()`), one "
    f"of the names {sorted(_NAMES)}, a loss config dict (from "
    "`keras.losses.serialize`), or a callable `fn(teacher_feature, "
    "student_feature)` returning per-sample values"
)


def get_feature_loss(identifier) -> keras.losses.Loss:
    """A feature loss from a loss, its name, its config or a function.

    Callers that need to know whether teacher and student features must have
    equal widths read `getattr(loss, "width_agnostic", False)`: True for
    `AttentionTransfer`, `RelationalKD` and `AttentionMapLoss`, False for
    the others and for wrapped functions.

    Args:
        identifier: a `keras.losses.Loss` (returned as is); a name (`"mse"`,
            `"cosine"`, `"at"`, `"rkd"`, `"attention_map"`, or the losses'
            own names), giving the loss with its defaults; a config dict from
            `keras.losses.serialize`; or a callable `fn(teacher_feature,
            student_feature)` returning per-sample values, wrapped to get
            Keras's reduction and sample weights.

    Returns:
        A `keras.losses.Loss`.

    Raises:
        ValueError: a name or config that gives no loss.
        TypeError: anything else.

    Example:

    >>> import keras_kd as kd
    >>> kd.losses.get_feature_loss("at").name
    'attention_transfer'
    >>> kd.losses.get_feature_loss("rkd").width_agnostic
    True
    """
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    if isinstance(identifier, str):
        if identifier.lower() not in _NAMES:
            raise ValueError(
                f"Argument `loss` names no feature loss. Received: "
                f"loss={identifier!r}. Expected {_ACCEPTED}."
            )
        return _NAMES[identifier.lower()]()
    if isinstance(identifier, dict):
        try:
            loss = keras.losses.deserialize(identifier)
        except (ValueError, TypeError, KeyError) as e:
            loss = e
        if isinstance(loss, keras.losses.Loss):
            return loss
        if callable(loss) and not isinstance(loss, type):  # a loss function
            return as_loss(loss, "loss")
        raise ValueError(
            f"Argument `loss` is a config that gives no loss (Keras gave "
            f"{loss!r}). Received: loss={identifier!r}. Expected {_ACCEPTED}."
        )
    if callable(identifier) and not isinstance(identifier, (type, keras.Model)):
        return as_loss(identifier, "loss")
    raise TypeError(
        f"Argument `loss` must be {_ACCEPTED}. Received: loss={identifier!r} of "
        f"type {type(identifier).__name__}."
    )
