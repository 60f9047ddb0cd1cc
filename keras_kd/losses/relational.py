"""Relational knowledge distillation (Park et al., CVPR 2019)."""

from __future__ import annotations

from keras_kd.backend import register_serializable, tf
from keras_kd.losses._base import (
    bound_call,
    check_some_weight,
    check_weight,
    weights_like,
)
from keras_kd.losses._feature_base import (
    COINCIDENT,
    _check_dims,
    _FeatureLoss,
    _flat,
    _huber,
    _teacher_student,
    _weighted_mean,
)


def _relations(features, weights, angles: bool):
    """Pairwise distances `(B, B)` and, if `angles`, angle cosines `(B, B, B)`.

    From the Gram matrix of the (weighted-)centred features: `O(B**2)` and
    `O(B**3)` memory whatever the width, never `O(B**2 * D)`. `cos[j, i, k]`
    is the cosine of the angle at `e_j` between `e_i - e_j` and `e_k - e_j`;
    a pair that coincides has distance 0 and its angles cosine 0 (a zero
    difference normalised to the zero vector, as the authors' code does).
    """
    e, w = _flat(features), weights[:, None]
    e = e - tf.math.divide_no_nan(tf.reduce_sum(w * e, 0), tf.reduce_sum(w))
    gram = tf.matmul(e, e, transpose_b=True)
    norms = tf.linalg.diag_part(gram)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    coincident = squared <= COINCIDENT * (norms[:, None] + norms[None, :])
    distance = tf.where(coincident, 0.0, tf.sqrt(tf.maximum(squared, 1e-30)))
    if not angles:
        return distance, None
    # <e_i - e_j, e_k - e_j> = G_ik - G_ji - G_jk + G_jj, indexed [j, i, k]
    dot = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + norms[:, None, None]
    cos = tf.math.divide_no_nan(dot, distance[:, :, None] * distance[:, None, :])
    return distance, tf.clip_by_value(cos, -1.0, 1.0)


@register_serializable
class RelationalKD(_FeatureLoss):
    """Relational knowledge distillation, RKD (Park et al., CVPR 2019).

    The student matches the *relations* between the samples of a batch, not
    each sample's feature. Features are flattened per sample, so their widths
    may differ (`width_agnostic = True`).

    - **Distance term.** The Euclidean distances `d_ij = ||e_i - e_j||` of
      each model, divided by the mean of its off-diagonal distances; the
      Huber loss (delta 1, PyTorch's smooth L1) between the student's and
      the teacher's, averaged over the pairs `i != j`.
    - **Angle term.** For each triplet of distinct samples, the cosine of
      the angle at `e_j` between `e_i - e_j` and `e_k - e_j`; the Huber loss
      between the student's and the teacher's, averaged over the triplets.

    `loss = distance_weight * distance_term + angle_weight * angle_term`

    The authors' code (github.com/lenscloth/RKD) also averages over the
    degenerate pairs and triplets (each 0): its terms are ours times
    `(B - 1) / B` and `(B - 1)(B - 2) / B**2`. The defaults 25 and 50 are the
    CIFAR-100 settings of RepDistiller and mdistiller (the authors' metric
    learning uses 1 and 2). Memory is `O(B**3)` for the angle term, from the
    Gram matrix, whatever the width: keep batches moderate.

    **The loss is a property of the batch**, as `DIST`'s intra-class term:

    - *Batch size.* The distance term needs at least 2 samples of positive
      weight, the angle term 3; on a smaller batch a term is 0. Under
      `tf.distribute` it is computed on each replica's share of the batch.
    - *Sample weights.* A pair `(i, j)` counts with weight `w_i w_j` in the
      means (the normalising mean included), a triplet with `w_i w_j w_k`: a
      sample of weight 0 does not count at all. Then, as for any Keras loss,
      each sample's value is multiplied by its weight before the reduction:
      with the default reduction the loss is `mean_i(w_i) * (batch loss)`,
      which scales with the weights. Weights must not be negative.
    - *`reduction="none"`* returns the batch loss once per sample (times
      the sample's weight); their mean is the default-reduction loss.

    Args:
        distance_weight: weight of the distance term, a number >= 0.
        angle_weight: weight of the angle term, a number >= 0 (not both 0).
            A term of weight 0 is not computed.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar float32 loss (per-sample values with `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> teacher = np.random.default_rng(0).normal(size=(8, 16))
    >>> # another width, scaled and shifted: the same relations
    >>> student = 5.0 * np.concatenate([teacher, np.zeros((8, 4))], -1) + 1.0
    >>> round(float(kd.losses.RelationalKD()(teacher, student)), 5)
    0.0
    """

    default_name = "relational_kd"
    width_agnostic = True
    # Compares whole samples / attention maps, not positions of a map:
    # the Distiller does not align spatial sizes for it.
    compares_positions = False

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
    ):
        super().__init__(reduction=reduction, name=name)
        self.distance_weight = check_weight(
            distance_weight, "distance_weight", "weight of the distance term"
        )
        self.angle_weight = check_weight(
            angle_weight, "angle_weight", "weight of the angle term"
        )
        check_some_weight(
            {"distance_weight": self.distance_weight, "angle_weight": self.angle_weight}
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The batch's relations need its weights inside `call`.
        return bound_call(
            self, y_true, y_pred, sample_weight, {"sample_weight": sample_weight}
        )

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred, sample_weight=None):
        """The batch's loss once per sample; `sample_weight` weighs the pairs
        and triplets (Keras applies it to the values after)."""
        t, s = _teacher_student(y_true, y_pred)
        what = "RelationalKD needs as many teacher as student samples."
        _check_dims(t, s, slice(0, 1), what)
        ones = tf.ones([tf.shape(s)[0]], tf.float32)
        w = ones if sample_weight is None else weights_like(sample_weight, ones)
        d_t, cos_t = _relations(t, w, angles=bool(self.angle_weight))
        d_s, cos_s = _relations(s, w, angles=bool(self.angle_weight))
        distinct = 1.0 - tf.eye(tf.shape(s)[0])
        pairs = w[:, None] * w[None, :] * distinct
        loss = tf.zeros([], tf.float32)
        if self.distance_weight:
            d_t = tf.math.divide_no_nan(d_t, _weighted_mean(d_t, pairs))
            d_s = tf.math.divide_no_nan(d_s, _weighted_mean(d_s, pairs))
            term = _weighted_mean(_huber(d_s - d_t), pairs)
            loss += self.distance_weight * term
        if self.angle_weight:
            # [j, i, k]: i != j, k != j and i != k
            triplets = (w[:, None, None] * w[None, :, None] * w[None, None, :]) * (
                distinct[:, :, None] * distinct[:, None, :] * distinct[None, :, :]
            )
            term = _weighted_mean(_huber(cos_s - cos_t), triplets)
            loss += self.angle_weight * term
        return loss * ones

    def get_config(self) -> dict:
        weights = {"distance_weight": self.distance_weight}
        return {**super().get_config(), **weights, "angle_weight": self.angle_weight}


__all__ = ["RelationalKD"]
