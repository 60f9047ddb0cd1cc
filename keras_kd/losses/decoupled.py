"""Decoupled knowledge distillation (Zhao et al., CVPR 2022).

`DecoupledKD` needs the ground-truth class of each sample. It declares so
with `requires_labels = True`; the `Distiller` then calls it as
`loss(teacher_output, student_output, sample_weight=..., labels=y)`. Any
distillation loss may join that protocol: set the class attribute and accept
`labels=` (None on a batch without labels) in `__call__`.
"""

from __future__ import annotations

import numbers

from keras_kd import _utils
from keras_kd.backend import register_serializable, tf
from keras_kd.losses._base import (
    _SoftTargetLoss,
    bound_call,
    check_some_weight,
    check_weight,
)

# How far below a row's smallest log-probability the target class is pushed
# to leave it out of the non-target softmax: exp(-1000) is 0 in float32.
_EXCLUDED = 1000.0


@register_serializable
class DecoupledKD(_SoftTargetLoss):
    """Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022).

    Splits the KL divergence of Hinton et al. into two parts and weights
    them separately, both computed on `softmax(logits / T)` and scaled by
    `T**2`:

    - **TCKD** (target class): the KL divergence between the teacher's and
      the student's binary distributions `[p_target, 1 - p_target]`, how
      sure each is of the true class; weighted by `target_weight` (the
      paper's alpha).
    - **NCKD** (non-target classes): the KL divergence between their
      distributions over the other classes, renormalised without the true
      class, the "dark knowledge"; weighted by `non_target_weight` (the
      paper's beta). Classic KD couples it to `1 - p_target`, which shrinks
      it exactly where the teacher is confident; DKD weights it freely.

    `loss = warmup * T**2 * (target_weight * TCKD + non_target_weight * NCKD)`

    The defaults are those of the authors' code (github.com/megvii-research/
    mdistiller) for CIFAR-100; they suggest raising `non_target_weight` for
    more confident teachers.

    **Labels.** The true class comes from the `labels` argument:
    `loss(teacher_logits, student_logits, labels=y)`, with `y` sparse class
    indices (`(batch,)` or `(batch, 1)`) or one-hot / soft labels
    (`(batch, classes)`, their argmax is the class). A `Distiller` passes its
    batch's labels by itself (this loss has `requires_labels = True`). On a
    batch without labels (`labels=None`: a `Distiller` fitted on inputs
    only, or a plain `model.compile(loss=DecoupledKD())` whose `y_true` is
    the teacher's logits) **the teacher's top class stands in** for the
    true class. Labels must lie in `[0, classes)`.

    **Warm-up.** With `warmup_steps=W > 0` the loss is multiplied by
    `min(step / W, 1)`, where `step` counts training steps from 1 (DKD's
    warm-up, which the authors count in epochs). The loss reads the number
    of steps already taken from `step_counter`, which a `Distiller` sets to
    its optimizer's `iterations` in `compile`; elsewhere set it yourself
    (`loss.step_counter = model.optimizer.iterations`), or the loss raises.
    Evaluation uses the factor of the next training step.

    Args:
        temperature: positive float, the softmax temperature (4 in the
            paper).
        target_weight: weight of TCKD, a number >= 0 (the paper's alpha).
        non_target_weight: weight of NCKD, a number >= 0 (the paper's beta;
            not both 0).
        warmup_steps: integer >= 0; the number of training steps over which
            the loss's weight grows linearly to 1. 0: no warm-up.
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
    >>> loss = kd.losses.DecoupledKD(temperature=4.0)
    >>> teacher = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    >>> student = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    >>> labels = np.array([0, 1])
    >>> float(loss(teacher, student, labels=labels)) > 0
    True
    >>> round(float(loss(teacher, teacher, labels=labels)), 6)
    0.0

    In a `Distiller`, which passes the labels:

    ```python
    distiller.compile(optimizer="adam", loss=hard_loss, metrics=["accuracy"],
                      distillation_loss=kd.losses.DecoupledKD(warmup_steps=500),
                      alpha=0.5)
    ```
    """

    default_name = "decoupled_kd"
    requires_labels = True

    def __init__(
        self,
        temperature: float = 4.0,
        target_weight: float = 1.0,
        non_target_weight: float = 8.0,
        warmup_steps: int = 0,
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
        self.target_weight = check_weight(
            target_weight, "target_weight", "weight of the target-class term"
        )
        self.non_target_weight = check_weight(
            non_target_weight,
            "non_target_weight",
            "weight of the non-target-class term",
        )
        check_some_weight(
            {
                "target_weight": self.target_weight,
                "non_target_weight": self.non_target_weight,
            }
        )
        self.warmup_steps = _utils.check_int(
            warmup_steps, "warmup_steps", minimum=0, what="a number of training steps"
        )
        self._step_counter = None

    @property
    def step_counter(self):
        """The number of training steps taken, read by the warm-up.

        An integer variable such as `optimizer.iterations` (read at each
        step, no retracing), or a Python int; None until set. A `Distiller`
        sets it in `compile`.
        """
        return self._step_counter

    @step_counter.setter
    def step_counter(self, value):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = _utils.check_int(value, "step_counter", minimum=0)
        elif value is not None and not hasattr(value, "dtype"):
            raise TypeError(
                "Argument `step_counter` must be an integer variable (such as "
                "`optimizer.iterations`), an int >= 0, or None. Received: "
                f"step_counter={value!r} of type {type(value).__name__}."
            )
        self._step_counter = value

    def __call__(self, y_true, y_pred, sample_weight=None, labels=None):
        """The loss between `y_true` (teacher) and `y_pred` (student).

        Args:
            y_true: the teacher's outputs.
            y_pred: the student's outputs.
            sample_weight: optional sample weights.
            labels: the true classes, sparse or one-hot; None: the teacher's
                top class.

        Returns:
            The reduced loss, a float32 tensor.
        """
        return bound_call(self, y_true, y_pred, sample_weight, {"labels": labels})

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred, labels=None):
        """Per-sample values of the loss; see the class docstring."""
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        target = _target_mask(labels, log_p_teacher)
        t_target, t_rest, t_others = _split(log_p_teacher, target)
        s_target, s_rest, s_others = _split(log_p_student, target)
        tckd = tf.exp(t_target) * (t_target - s_target) + tf.exp(t_rest) * (
            t_rest - s_rest
        )
        nckd = tf.reduce_sum(tf.exp(t_others) * (t_others - s_others), axis=-1)
        value = tf.square(temperature) * (
            self.target_weight * tckd + self.non_target_weight * nckd
        )
        factor = self._warmup_factor()
        return value if factor is None else value * factor

    def _warmup_factor(self):
        if not self.warmup_steps:
            return None
        if self._step_counter is None:
            raise ValueError(
                f"DecoupledKD(warmup_steps={self.warmup_steps}) reads the "
                "training step from its `step_counter`, which is not set. "
                "Use the loss in a `keras_kd.Distiller` (its `compile` sets "
                "it), or set `loss.step_counter = optimizer.iterations` "
                "(or warmup_steps=0)."
            )
        step = tf.cast(self._step_counter, tf.float32) + 1.0
        return tf.minimum(step / float(self.warmup_steps), 1.0)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "target_weight": self.target_weight,
                "non_target_weight": self.non_target_weight,
                "warmup_steps": self.warmup_steps,
            }
        )
        return config


def _target_mask(labels, log_p_teacher):
    """A float32 one-hot of each row's true class (the teacher's top class
    where `labels` is None), shaped like `log_p_teacher`."""
    classes = log_p_teacher.shape[-1]
    if classes is not None and classes < 2:
        raise ValueError(
            "DecoupledKD needs at least 2 classes (a target and a non-target "
            f"one). Received outputs of shape {tuple(log_p_teacher.shape)}."
        )
    rank = log_p_teacher.shape.rank
    if labels is None:
        index = tf.argmax(log_p_teacher, axis=-1)
    else:
        labels = tf.convert_to_tensor(labels)
        shape = labels.shape
        if shape.rank == rank and shape[-1] == classes:
            index = tf.argmax(labels, axis=-1)  # one-hot or soft labels
        elif shape.rank == rank and shape[-1] == 1:
            index = tf.squeeze(labels, axis=-1)
        elif shape.rank == rank - 1:
            index = labels
        else:
            raise ValueError(
                "Argument `labels` must hold class indices (shape "
                f"{tuple(log_p_teacher.shape[:-1])}) or one-hot labels (shape "
                f"{tuple(log_p_teacher.shape)}) for outputs of that shape. "
                f"Received: labels of shape {tuple(shape)}."
            )
        if not index.dtype.is_integer:
            index = tf.cast(tf.round(tf.cast(index, tf.float32)), tf.int64)
    depth = classes if classes is not None else tf.shape(log_p_teacher)[-1]
    return tf.one_hot(tf.cast(index, tf.int32), depth, dtype=tf.float32)


def _split(log_p, target):
    """`(log p_target, log(1 - p_target), log-probabilities among the
    non-target classes)` from log-probabilities and the target's one-hot.

    The last is `log_softmax` of `log_p` with the target pushed far below
    every other class, so its probability is exactly 0; every value stays
    finite, and so does every gradient.
    """
    log_target = tf.reduce_sum(log_p * target, axis=-1)
    floor = tf.stop_gradient(tf.reduce_min(log_p, axis=-1, keepdims=True))
    masked = tf.where(target > 0.0, floor - _EXCLUDED, log_p)
    log_rest = tf.reduce_logsumexp(masked, axis=-1)
    return log_target, log_rest, masked - log_rest[..., None]
