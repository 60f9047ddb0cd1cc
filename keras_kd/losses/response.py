"""Response-based objectives: the student matches the teacher's softened outputs.

`KLDivergence` and `SoftTargetCrossEntropy` (Hinton et al. 2015), both with
optional logit standardization (Sun et al. 2024), and `DIST` (Huang et al.
2022), which matches correlations instead of exact probabilities.
"""

from __future__ import annotations

from keras_kd.backend import register_serializable, tf
from keras_kd.losses._base import (
    _SoftTargetLoss,
    bound_call,
    check_some_weight,
    check_weight,
    weights_like,
)

# Added to the product of the norms in a Pearson correlation, as in the
# reference code of DIST (github.com/hunto/DIST_KD).
PEARSON_EPSILON = 1e-8


@register_serializable
class KLDivergence(_SoftTargetLoss):
    """Hinton et al. (2015) distillation loss: KL divergence at a temperature.

    `T**2 * KL(softmax(teacher / T) || softmax(student / T))`, summed over the
    last axis. The `T**2` factor keeps the gradient's magnitude independent of
    the temperature, so that the `alpha` of a `Distiller` means the same thing
    at every temperature. With the default reduction the result is averaged
    over the batch (PyTorch's `reduction="batchmean"`), and over any other
    leading axes such as sequence positions.

    Use it to distil classification logits. It is zero when the student's
    softened distribution equals the teacher's.

    With `standardize=True` (logit standardization, Sun et al., CVPR 2024)
    each logit vector, the teacher's and the student's, is z-scored over the
    last axis, `(z - mean) / (std + 1e-7)`, before it is divided by the
    temperature: the student then matches the teacher's logit *relations*
    rather than their scale, which helps a small student that cannot reach
    the teacher's logit range. The temperature then acts on unit-variance
    logits (Sun et al. use about 2 to 4 there).

    Args:
        temperature: positive float; higher values soften both distributions
            and reveal more of the teacher's "dark knowledge". Hinton et al.
            use 2 to 20.
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities (e.g. a teacher whose last layer is a softmax).
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.
        standardize: z-score each logit vector before softening (see above).
            Probabilities are turned into log-probabilities first, which
            standardize exactly as their logits do.

    Returns:
        A scalar loss in float32 (or a per-sample one with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.KLDivergence(temperature=4.0)
    >>> teacher_logits = np.array([[2.0, 1.0, 0.1]])
    >>> float(loss(teacher_logits, teacher_logits))  # identical distributions
    0.0
    >>> scaled = kd.losses.KLDivergence(temperature=2.0, standardize=True)
    >>> value = scaled(teacher_logits, 10.0 * teacher_logits)  # same relations
    >>> abs(float(value)) < 1e-6
    True
    """

    default_name = "kl_divergence"

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        kl = tf.reduce_sum(
            tf.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1
        )
        return kl * tf.square(temperature)


@register_serializable
class SoftTargetCrossEntropy(_SoftTargetLoss):
    """Cross-entropy of the student against the teacher's soft targets.

    `-T**2 * sum(softmax(teacher / T) * log_softmax(student / T))` over the
    last axis. It differs from `KLDivergence` by the teacher's entropy, a
    constant for the student, so the gradients are the same; the value is
    what many papers and libraries report as "the distillation loss".

    Args:
        temperature: positive float, the softmax temperature.
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities.
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.
        standardize: z-score each logit vector before softening, as in
            `KLDivergence(standardize=True)`.

    Returns:
        A scalar loss in float32 (or a per-sample one with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.SoftTargetCrossEntropy(temperature=1.0)
    >>> round(float(loss(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]]))), 4)
    0.6931
    """

    default_name = "soft_target_cross_entropy"

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        cross_entropy = -tf.reduce_sum(tf.exp(log_p_teacher) * log_p_student, axis=-1)
        return cross_entropy * tf.square(temperature)


def _pearson(a, b, axis, weights=None):
    """Pearson correlation of `a` and `b` along `axis`, optionally weighted.

    `sum(w a' b') / (sqrt(sum(w a'^2) sum(w b'^2)) + 1e-8)` with `a'`, `b'`
    the (weighted) deviations from the mean. Where a vector is constant the
    correlation is 0, with a finite gradient.
    """
    if weights is None:
        mean = lambda v: tf.reduce_mean(v, axis=axis, keepdims=True)
        total = lambda v: tf.reduce_sum(v, axis=axis)
    else:
        norm = tf.reduce_sum(weights, axis=axis, keepdims=True)
        mean = lambda v: tf.math.divide_no_nan(
            tf.reduce_sum(weights * v, axis=axis, keepdims=True), norm
        )
        total = lambda v: tf.reduce_sum(weights * v, axis=axis)
    a = a - mean(a)
    b = b - mean(b)
    # The floor keeps the gradient of sqrt finite where a vector is constant.
    product = tf.maximum(total(tf.square(a)) * total(tf.square(b)), 1e-30)
    return total(a * b) / (tf.sqrt(product) + PEARSON_EPSILON)


@register_serializable
class DIST(_SoftTargetLoss):
    """DIST (Huang et al., NeurIPS 2022): distillation by correlation.

    `T**2 * [beta * (1 - mean_i pearson(p_s[i, :], p_t[i, :]))
             + gamma * (1 - mean_j pearson(p_s[:, j], p_t[:, j]))]`

    with `p = softmax(logits / T)`. The first, *inter-class* term asks each
    sample's predicted distribution to rise and fall with the teacher's over
    the classes; the second, *intra-class* term asks each class's
    probabilities to rise and fall with the teacher's over the samples of
    the batch. Neither asks the student to reproduce the teacher's exact
    probabilities, which a much smaller student often cannot; Huang et al.
    show it helps most when the teacher is much stronger than the student.
    Their reference code (github.com/hunto/DIST_KD) uses `T = 1` for
    ImageNet and `T = 4` on CIFAR-100.

    **The intra-class term is a property of the batch**, not of one sample:

    - *Batch size.* It needs at least 2 samples (with positive weight); on a
      batch with fewer it is 0. Its value is noisy on small batches, so
      prefer batches much larger than the number of classes. Under
      `tf.distribute` it is computed on each replica's share of the batch.
      For outputs with more axes than `(batch, classes)`, such as sequences,
      every position of the batch is one row.
    - *Sample weights.* The class-wise means, variances and covariances of
      the intra-class term are *weighted* by the sample weights: a sample of
      weight 0 does not count, and one of weight 2 counts as two. Then, as
      for any Keras loss, each sample's value is multiplied by its weight
      before the reduction; so with the default reduction the loss is
      `beta * mean_i(w_i * inter_i) + gamma * mean_i(w_i) * intra`: scaling
      all weights by `c` scales the loss by `c`, and weights of 1 give the
      formula above. Weights must not be negative.
    - *`reduction="none"`* returns one value per sample:
      `T**2 * (beta * inter_i + gamma * intra)` (times the sample's weight),
      in which every sample carries an equal share of the batch's
      intra-class term; their mean is the default-reduction loss.

    Args:
        temperature: positive float, the softmax temperature.
        beta: weight of the inter-class term, a number >= 0.
        gamma: weight of the intra-class term, a number >= 0 (not both 0).
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities.
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.
        standardize: z-score each logit vector before softening, as in
            `KLDivergence(standardize=True)`.

    Returns:
        A scalar loss in float32 (or a per-sample one with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.DIST(temperature=1.0, beta=1.0, gamma=1.0)
    >>> teacher = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    >>> round(float(loss(teacher, teacher)), 6)  # perfectly correlated
    0.0

    In a `Distiller`:

    ```python
    distiller.compile(optimizer="adam", loss=hard_loss, metrics=["accuracy"],
                      distillation_loss=kd.losses.DIST(), alpha=0.5)
    ```
    """

    default_name = "dist"

    def __init__(
        self,
        temperature: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        teacher_from_logits: bool = True,
        student_from_logits: bool = True,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
        standardize: bool = False,
    ):
        super().__init__(
            temperature=temperature,
            teacher_from_logits=teacher_from_logits,
            student_from_logits=student_from_logits,
            reduction=reduction,
            name=name,
            standardize=standardize,
        )
        self.beta = check_weight(beta, "beta", "weight of the inter-class term")
        self.gamma = check_weight(gamma, "gamma", "weight of the intra-class term")
        check_some_weight({"beta": self.beta, "gamma": self.gamma})

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The intra-class term needs the batch's weights inside `call`.
        return bound_call(
            self, y_true, y_pred, sample_weight, {"sample_weight": sample_weight}
        )

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred, sample_weight=None):
        """Per-sample values: `T**2 * (beta * inter_i + gamma * intra)`.

        Args:
            y_true: the teacher's outputs.
            y_pred: the student's outputs.
            sample_weight: the batch's sample weights, for the intra-class
                term's statistics (Keras applies them to the values after).
        """
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        p_teacher, p_student = tf.exp(log_p_teacher), tf.exp(log_p_student)
        scale = tf.square(temperature)
        inter = 1.0 - _pearson(p_student, p_teacher, axis=-1)
        value = self.beta * scale * inter
        if self.gamma:
            value = value + self.gamma * scale * self._intra_class_term(
                p_teacher, p_student, weights_like(sample_weight, inter)
            )
        return value

    @staticmethod
    def _intra_class_term(p_teacher, p_student, weights):
        """`1 - mean_j pearson(p_s[:, j], p_t[:, j])` over the batch's rows;
        0 with fewer than 2 rows of positive weight."""
        classes = tf.shape(p_student)[-1]
        p_student = tf.reshape(p_student, [-1, classes])
        p_teacher = tf.reshape(p_teacher, [-1, classes])
        if weights is None:
            rows = tf.shape(p_student)[0]
        else:
            weights = tf.reshape(weights, [-1, 1])
            rows = tf.math.count_nonzero(weights > 0.0, dtype=tf.int32)
        correlation = _pearson(p_student, p_teacher, axis=0, weights=weights)
        term = 1.0 - tf.reduce_mean(correlation)
        return tf.where(rows >= 2, term, tf.zeros_like(term))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"beta": self.beta, "gamma": self.gamma})
        return config
