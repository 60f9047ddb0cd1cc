"""Attention-map distillation for `keras.layers.MultiHeadAttention` scores."""

from __future__ import annotations

from keras_kd.backend import register_serializable, tf
from keras_kd.losses._base import (
    bound_call,
)
from keras_kd.losses._feature_base import (
    PROB_EPSILON,
    _check_dims,
    _FeatureLoss,
    _flat,
    _shapes,
    _teacher_student,
)

_MODES = ("kl", "mse")
_HEADS = ("mean", "map")


def _check_choice(value, argument: str, choices: tuple, meaning: str) -> str:
    if isinstance(value, str) and value in choices:
        return value
    raise (ValueError if isinstance(value, str) else TypeError)(
        f"Argument `{argument}` must be one of {choices} ({meaning}). Received: "
        f"{argument}={value!r} of type {type(value).__name__}."
    )


@register_serializable
class AttentionMapLoss(_FeatureLoss):
    """The student's attention probabilities match the teacher's.

    For the attention scores of `keras.layers.MultiHeadAttention`
    (`return_attention_scores=True`): probabilities of shape `(batch, heads,
    queries, keys)` whose rows sum to 1. Each query row of the student is
    compared with the teacher's:

    - `mode="kl"`: `KL(p_t || p_s) = sum_k p_t log(p_t / p_s)`, probabilities
      clipped at 1e-7 inside the logarithms (the self-attention transfer of
      MiniLM, Wang et al., NeurIPS 2020);
    - `mode="mse"`: `mean_k (p_s - p_t)**2`;

    then averaged over the query rows (and heads): one value per sample.

    With `heads="mean"` each model's heads are averaged first, so **head
    counts may differ** (`width_agnostic = True`); with `heads="map"` head
    `h` of the student matches head `h` of the teacher, so head counts must
    be equal. Query and key lengths must always match.

    **Padding.** `sample_weight` may be a query mask `(batch, queries)`, 1
    for a real token and 0 for padding: masked rows contribute nothing and
    each sample's value is the mean over its real rows, `sum_q m_q l_q /
    #{q : m_q > 0}` (0 without any). A per-sample weight `(batch,)` acts as
    the mask with all of the sample's rows at that weight. Keys need no mask:
    `MultiHeadAttention` gives masked keys probability 0 in both models.

    Args:
        mode: `"kl"` (default) or `"mse"`, the comparison of each row.
        heads: `"mean"` (default): average each model's heads first, or
            `"map"`: compare head by head.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar float32 loss (per-sample values with `reduction="none"`).

    Example:

    >>> import numpy as np, keras, keras_kd as kd
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    >>> layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    >>> _, scores = layer(x, x, return_attention_scores=True)  # (2, 2, 5, 5)
    >>> round(float(kd.losses.AttentionMapLoss()(scores, scores)), 6)
    0.0
    """

    default_name = "attention_map"
    width_agnostic = True
    # Compares whole samples / attention maps, not positions of a map:
    # the Distiller does not align spatial sizes for it.
    compares_positions = False
    # Takes a (batch, queries) mask as sample weights (padded queries).
    accepts_token_weights = True

    def __init__(
        self,
        mode: str = "kl",
        heads: str = "mean",
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
    ):
        super().__init__(reduction=reduction, name=name)
        self.mode = _check_choice(mode, "mode", _MODES, "how each row is compared")
        self.heads = _check_choice(
            heads, "heads", _HEADS, "average the heads first, or compare per head"
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        # A query mask is folded into the per-sample values inside `call`.
        return bound_call(self, y_true, y_pred, None, {"query_mask": sample_weight})

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred, query_mask=None):
        """Per-sample means over the real query rows (and heads); `query_mask`
        is None, per-sample weights or a `(batch, queries)` mask."""
        t, s = _teacher_student(y_true, y_pred)
        if t.shape.rank != 4 or s.shape.rank != 4:
            raise ValueError(
                "AttentionMapLoss needs attention probabilities of shape (batch, "
                f"heads, queries, keys). Received: {_shapes(t, s)}"
            )
        what = "AttentionMapLoss needs equal numbers of queries and keys."
        _check_dims(t, s, slice(2, None), what)
        if self.heads == "map":
            what = (
                'AttentionMapLoss(heads="map") compares head by head: head counts '
                'must be equal (heads="mean" averages each model\'s heads first).'
            )
            _check_dims(t, s, slice(1, 2), what)
        else:
            t = tf.reduce_mean(t, axis=1, keepdims=True)
            s = tf.reduce_mean(s, axis=1, keepdims=True)
        if self.mode == "kl":
            clip = lambda p: tf.math.log(tf.clip_by_value(p, PROB_EPSILON, 1.0))
            rows = tf.reduce_sum(t * (clip(t) - clip(s)), axis=-1)
        else:
            rows = tf.reduce_mean(tf.square(s - t), axis=-1)
        rows = tf.reduce_mean(rows, axis=1)  # over heads: (batch, queries)
        if query_mask is None:
            return tf.reduce_mean(rows, axis=-1)
        mask = tf.cast(query_mask, tf.float32)
        if mask.shape.rank not in (1, 2):
            raise ValueError(
                "Argument `sample_weight` of AttentionMapLoss must be per-sample "
                "weights (batch,) or a query mask (batch, queries). Received: "
                f"sample_weight of shape {mask.shape} for {_shapes(t, s)}"
            )
        mask = tf.broadcast_to(_flat(mask), tf.shape(rows))  # (batch,): a column
        real = tf.reduce_sum(tf.cast(mask > 0.0, tf.float32), axis=-1)
        return tf.math.divide_no_nan(tf.reduce_sum(mask * rows, axis=-1), real)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "heads": self.heads}


__all__ = ["AttentionMapLoss"]
