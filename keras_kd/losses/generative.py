"""The objectives of generative-model distillation, token by token.

`ReverseKL` (mode-seeking: MiniLLM, Gu et al. 2024), `GeneralizedJSD` (GKD,
Agarwal et al. 2024), `SkewKL` (DistiLLM, Ko et al. 2024) and
`TotalVariation` (Wen et al. 2023). Each compares two distributions over the
last axis, so it applies as it is to `(batch, vocab)` or `(batch, time,
vocab)` outputs; the `Distiller` masks padded positions and averages over
the real tokens, as for `KLDivergence`. They are computed in float32 in log
space (`logsumexp` for the mixtures), whatever the mixed-precision policy.

Like `KLDivergence`, every divergence at a temperature `T` is multiplied by
`T**2`, so that `alpha` means the same at every temperature; at `T = 1` (the
default here, as in GKD and DistiLLM) the factor is 1.
"""

from __future__ import annotations

from keras_kd import _utils
from keras_kd.backend import register_serializable, tf
from keras_kd.losses._base import _SoftTargetLoss


def _kl(log_p, log_q):
    """KL(p || q) over the last axis from log-probabilities."""
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def _log_mixture(log_p, log_q, weight_p: float):
    """`log(w p + (1 - w) q)`, computed as a logsumexp (0 < w < 1)."""
    return tf.reduce_logsumexp(
        tf.stack(
            [
                log_p + tf.math.log(tf.constant(weight_p, tf.float32)),
                log_q + tf.math.log(tf.constant(1.0 - weight_p, tf.float32)),
            ]
        ),
        axis=0,
    )


class _DivergenceLoss(_SoftTargetLoss):
    """A temperature-softened divergence with a default temperature of 1."""

    def __init__(
        self,
        temperature: float = 1.0,
        teacher_from_logits: bool = True,
        student_from_logits: bool = True,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
    ):
        super().__init__(
            temperature=temperature,
            teacher_from_logits=teacher_from_logits,
            student_from_logits=student_from_logits,
            reduction=reduction,
            name=name,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("standardize")  # always False here
        return config


@register_serializable
class ReverseKL(_DivergenceLoss):
    """Reverse KL: `T**2 * KL(softmax(student / T) || softmax(teacher / T))`.

    The student is charged for putting mass where the teacher puts little,
    not for missing some of the teacher's modes: it is *mode-seeking*, the
    objective MiniLLM (Gu et al. 2024) uses for generative models, where a
    small student that spreads its mass over everything the teacher might
    say writes text the teacher would not. Forward KL (`KLDivergence`) is the
    mode-covering one.

    Args:
        temperature: positive float, the softmax temperature (default 1).
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities.
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar loss in float32 (or per-position values with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.ReverseKL()
    >>> teacher, student = np.array([[2.0, 0.0, -1.0]]), np.array([[0.0, 0.0, 0.0]])
    >>> forward = kd.losses.KLDivergence(temperature=1.0)  # arguments swapped:
    >>> bool(np.isclose(loss(teacher, student), forward(student, teacher)))
    True
    """

    default_name = "reverse_kl"

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        return _kl(log_p_student, log_p_teacher) * tf.square(temperature)


@register_serializable
class GeneralizedJSD(_DivergenceLoss):
    """Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024).

    With `p` the teacher's and `q` the student's softened distributions and
    the mixture `m = beta * p + (1 - beta) * q`:

    `JSD(beta) = T**2 * [beta * KL(p || m) + (1 - beta) * KL(q || m)]`.

    It is bounded, and `beta` moves it between the two KLs: as in the
    paper's reference implementation (TRL's `GKDTrainer`), `beta=0` is
    *exactly* forward KL, `KL(p || q)` (`KLDivergence`), and `beta=1`
    exactly reverse KL, `KL(q || p)` (`ReverseKL`); between them the
    mixture form above is used (which itself tends to 0 at both ends, hence
    the special cases). GKD's experiments favour `beta` near 0.5 to 0.9 for
    on-policy distillation of generative models.

    Args:
        beta: a number in [0, 1], the teacher's share of the mixture.
        temperature: positive float, the softmax temperature (default 1).
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities.
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar loss in float32 (or per-position values with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> teacher, student = np.array([[2.0, 0.0, -1.0]]), np.array([[0.5, 0.0, 0.0]])
    >>> jsd = kd.losses.GeneralizedJSD(beta=0.0)
    >>> kl = kd.losses.KLDivergence(temperature=1.0)
    >>> float(jsd(teacher, student)) == float(kl(teacher, student))
    True

    In a `Distiller` (token-level, on `(batch, time, vocab)` logits):

    ```python
    distiller.compile(optimizer="adam", distillation_loss=kd.losses.GeneralizedJSD(0.5),
                      alpha=1.0)
    ```
    """

    default_name = "generalized_jsd"

    def __init__(
        self,
        beta: float = 0.5,
        temperature: float = 1.0,
        teacher_from_logits: bool = True,
        student_from_logits: bool = True,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
    ):
        super().__init__(
            temperature=temperature,
            teacher_from_logits=teacher_from_logits,
            student_from_logits=student_from_logits,
            reduction=reduction,
            name=name,
        )
        self.beta = _utils.check_number(
            beta, "beta", low=0.0, high=1.0, what="the teacher's share of the mixture"
        )

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        if self.beta == 0.0:
            value = _kl(log_p_teacher, log_p_student)
        elif self.beta == 1.0:
            value = _kl(log_p_student, log_p_teacher)
        else:
            log_m = _log_mixture(log_p_teacher, log_p_student, self.beta)
            value = self.beta * _kl(log_p_teacher, log_m) + (1.0 - self.beta) * _kl(
                log_p_student, log_m
            )
        return value * tf.square(temperature)

    def get_config(self) -> dict:
        config = super().get_config()
        config["beta"] = self.beta
        return config


@register_serializable
class SkewKL(_DivergenceLoss):
    """Skew KL and skew reverse KL (DistiLLM, Ko et al., ICML 2024).

    With `p` the teacher's and `q` the student's softened distributions and
    `a = skew`:

    - `reverse=False`, skew KL: `T**2 * KL(p || a p + (1 - a) q)`;
    - `reverse=True`, skew reverse KL: `T**2 * KL(q || (1 - a) p + a q)`.

    Mixing a little of the other distribution into the second argument
    keeps the divergence and its gradient finite where that distribution is
    near 0, which Ko et al. show stabilises training on student-generated
    text. `skew=0` gives plain forward (or reverse) KL. DistiLLM uses 0.1.
    (Their code returns the cross-entropy `-sum p log m`; this is the KL,
    which differs by the entropy of `p` and so is 0 when the two agree. For
    skew KL the gradients are the same.)

    Args:
        skew: a number in [0, 1), the share of the first distribution in
            the second argument's mixture.
        reverse: False for skew KL, True for skew reverse KL.
        temperature: positive float, the softmax temperature (default 1).
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities.
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar loss in float32 (or per-position values with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> teacher = np.array([[2.0, 0.0, -1.0]])
    >>> abs(float(kd.losses.SkewKL(skew=0.1)(teacher, teacher))) < 1e-6
    True
    """

    default_name = "skew_kl"

    def __init__(
        self,
        skew: float = 0.1,
        reverse: bool = False,
        temperature: float = 1.0,
        teacher_from_logits: bool = True,
        student_from_logits: bool = True,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
    ):
        reverse = _utils.check_bool(reverse, "reverse")
        super().__init__(
            temperature=temperature,
            teacher_from_logits=teacher_from_logits,
            student_from_logits=student_from_logits,
            reduction=reduction,
            name=name or ("skew_reverse_kl" if reverse else None),
        )
        self.skew = _utils.check_number(
            skew,
            "skew",
            low=0.0,
            high=1.0,
            high_open=True,
            what="the first distribution's share of the mixture; at 1 the "
            "divergence is always 0",
        )
        self.reverse = reverse

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        first, second = log_p_teacher, log_p_student
        if self.reverse:
            first, second = log_p_student, log_p_teacher
        if self.skew == 0.0:
            value = _kl(first, second)
        else:
            value = _kl(first, _log_mixture(first, second, self.skew))
        return value * tf.square(temperature)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"skew": self.skew, "reverse": self.reverse})
        return config


@register_serializable
class TotalVariation(_DivergenceLoss):
    """Total variation distance: `T**2 * 0.5 * sum |p - q|` over the last axis.

    `p` the teacher's, `q` the student's softened distribution. It lies in
    [0, 1] (before the `T**2`), is symmetric, and, unlike the KLs, does not
    blow up where either distribution is near 0 (Wen et al., ACL 2023,
    f-divergence minimisation for sequence-level KD).

    Args:
        temperature: positive float, the softmax temperature (default 1).
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities.
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar loss in float32 (or per-position values with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.TotalVariation(teacher_from_logits=False,
    ...                                 student_from_logits=False)
    >>> round(float(loss(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))), 4)
    0.5
    """

    default_name = "total_variation"

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        distance = 0.5 * tf.reduce_sum(
            tf.abs(tf.exp(log_p_teacher) - tf.exp(log_p_student)), axis=-1
        )
        return distance * tf.square(temperature)


@register_serializable
class UniversalLogitDistance(_DivergenceLoss):
    """ULD (Boizard et al. 2024): distillation across different vocabularies.

    The teacher's and the student's softened probabilities are each sorted
    in decreasing order, the shorter vector padded with zeros to the longer
    one's size, and the loss is the L1 distance of the two:

    `T**2 * sum_i |sort(p)_i - sort(q)_i|`

    (a closed form of the Wasserstein-1 distance between the two
    distributions over ranks). It compares the *shape* of the distributions
    (how sure, how spread), not which token is which, so it needs no mapping
    between vocabularies: a teacher and a student with different tokenizers
    and vocabulary sizes can distil, position by position, once their
    sequences are aligned. Boizard et al. add it to the student's
    cross-entropy on its own labels (`alpha` < 1), which is what tells the
    student which token is right.

    Its outputs' last axes may differ (`vocabulary_agnostic = True`); every
    other axis must match.

    Args:
        temperature: positive float, the softmax temperature (default 1).
        teacher_from_logits: whether `y_true` holds logits (default) or
            probabilities.
        student_from_logits: whether `y_pred` holds logits (default) or
            probabilities.
        reduction: a Keras loss reduction, `"sum_over_batch_size"` by default.
        name: optional name of the loss.

    Returns:
        A scalar loss in float32 (or per-position values with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.UniversalLogitDistance(
    ...     teacher_from_logits=False, student_from_logits=False)
    >>> teacher = np.array([[0.7, 0.2, 0.1, 0.0]])  # 4 tokens
    >>> student = np.array([[0.1, 0.7, 0.2]])  # 3 tokens, the same shape
    >>> abs(float(loss(teacher, student))) < 1e-6
    True
    """

    default_name = "universal_logit_distance"
    vocabulary_agnostic = True

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        teacher = _sorted_padded(tf.exp(log_p_teacher), tf.shape(log_p_student)[-1])
        student = _sorted_padded(tf.exp(log_p_student), tf.shape(log_p_teacher)[-1])
        distance = tf.reduce_sum(tf.abs(teacher - student), axis=-1)
        return distance * tf.square(temperature)


def _sorted_padded(probs, other_size):
    """`probs` sorted in decreasing order over the last axis, zero-padded to
    `max(its size, other_size)`."""
    size = tf.shape(probs)[-1]
    ranked = tf.math.top_k(probs, k=size, sorted=True).values
    missing = tf.maximum(other_size - size, 0)
    rank = tf.rank(probs)
    paddings = tf.concat([tf.zeros([rank - 1, 2], tf.int32), [[0, missing]]], axis=0)
    return tf.pad(ranked, paddings)
