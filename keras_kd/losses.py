"""Distillation losses.

Each loss compares a student's output (`y_pred`) with a teacher's output
(`y_true`) softened by a temperature. They are ordinary `keras.losses.Loss`
subclasses: the `Distiller` uses them, and so can any Keras model compiled
with teacher outputs as its targets (`model.compile(loss=KLDivergence(4.0))`
with `model.fit(x, teacher_logits)`).

The computation always runs in float32, whatever the mixed-precision policy,
and softens logits with a numerically stable `log_softmax`, never
`log(softmax(...))`.
"""

from __future__ import annotations

import numbers

from keras_kd import _utils
from keras_kd.backend import keras, register_serializable, tf


def validate_temperature(temperature, argument: str = "temperature") -> float:
    """Returns `temperature` as a float, or raises if it is not positive.

    Args:
        temperature: the value to check.
        argument: the argument's name, for the error message.

    Returns:
        The temperature as a Python float.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"Argument `{argument}` must be a positive number. "
            f"Received: {argument}={temperature!r} "
            f"(of type {type(temperature).__name__})."
        )
    if not temperature > 0:
        raise ValueError(
            f"Argument `{argument}` must be greater than 0 (the softmax "
            f"temperature divides the logits). Received: {argument}={temperature}."
        )
    return float(temperature)


def softened_log_probs(values, temperature, from_logits: bool = True):
    """Log-probabilities of `softmax(logits / temperature)`, in float32.

    Args:
        values: logits (`from_logits=True`) or probabilities along the last
            axis.
        temperature: the softmax temperature, a positive number or scalar
            tensor.
        from_logits: whether `values` are logits. Probabilities are turned
            into log-probabilities first (`log(p)` is a valid set of logits
            for `p`), clipped away from 0.

    Returns:
        A float32 tensor of the same shape as `values`.
    """
    values = tf.cast(values, tf.float32)
    if not from_logits:
        values = _utils.log_probs(values)
    temperature = tf.cast(temperature, tf.float32)
    return tf.nn.log_softmax(values / temperature, axis=-1)


class _FunctionLoss(keras.losses.Loss):
    """A plain `fn(y_true, y_pred)` with Keras's reduction, sample weighting
    and distribution scaling."""

    def __init__(self, fn, name=None):
        if name is None:
            name = getattr(fn, "__name__", "")
            if not name.isidentifier() or name == "<lambda>":
                name = "loss"
        super().__init__(name=name)
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def as_loss(value, argument: str = "loss", example: str | None = None):
    """A `keras.losses.Loss` from a loss, its name, or a function.

    A function `fn(y_true, y_pred)` returning per-sample values (or a Keras
    loss function found by name, such as `"kl_divergence"`) is wrapped so that
    it gets Keras's reduction, sample weights and scaling under
    `tf.distribute`, like any `keras.losses.Loss`.

    Args:
        value: a `keras.losses.Loss`, the name of a Keras loss, or a callable
            `fn(y_true, y_pred)`.
        argument: the argument's name, for error messages.
        example: an example of a valid value, for error messages.

    Returns:
        A `keras.losses.Loss` (`value` itself when it is one).

    Raises:
        ValueError: `value` is a string that names no Keras loss.
        TypeError: `value` is neither a loss, a name nor a callable.

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.as_loss(lambda t, s: (t - s) ** 2)
    >>> float(loss(np.array([[1.0]]), np.array([[3.0]])))
    4.0
    """
    example = example or "keras_kd.losses.KLDivergence(temperature=4.0)"
    if isinstance(value, keras.losses.Loss):
        return value
    if isinstance(value, str):
        try:
            found = keras.losses.get(value)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"Argument `{argument}` names no Keras loss. Received: "
                f"{argument}={value!r}. Expected a `keras.losses.Loss` such as "
                f"`{example}`."
            ) from e
        return found if isinstance(found, keras.losses.Loss) else _FunctionLoss(found)
    if callable(value) and not isinstance(value, (type, keras.Model)):
        return _FunctionLoss(value)
    raise TypeError(
        f"Argument `{argument}` must be a `keras.losses.Loss`, its name, or a "
        f"callable `fn(y_true, y_pred)`, e.g. `{example}`. Received: "
        f"{argument}={value!r} of type {type(value).__name__}."
    )


class _SoftTargetLoss(keras.losses.Loss):
    """Shared arguments and config of the temperature-softened losses.

    Subclasses set `default_name` and implement `call`.
    """

    default_name: str | None = None

    def __init__(
        self,
        temperature: float = 2.0,
        teacher_from_logits: bool = True,
        student_from_logits: bool = True,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
    ):
        super().__init__(name=name or self.default_name, reduction=reduction)
        self._temperature = validate_temperature(temperature)
        self._temperature_variable = None
        self.teacher_from_logits = _utils.check_bool(
            teacher_from_logits, "teacher_from_logits"
        )
        self.student_from_logits = _utils.check_bool(
            student_from_logits, "student_from_logits"
        )

    @property
    def temperature(self) -> float:
        """The softmax temperature, a positive float."""
        if self._temperature_variable is not None:
            return float(self._temperature_variable.numpy())
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        value = validate_temperature(value)
        self._temperature = value
        if self._temperature_variable is not None:
            self._temperature_variable.assign(value)

    @property
    def temperature_is_variable(self) -> bool:
        """Whether the temperature lives in a variable (see below)."""
        return self._temperature_variable is not None

    def temperature_variable(self):
        """The temperature as a `tf.Variable`, created on first call.

        Once it exists, the loss reads the temperature from it, so that a
        schedule (`keras_kd.callbacks.TemperatureSchedule`) can change it
        between steps without retracing a compiled train function. A train
        function traced before the variable existed keeps the old constant:
        create the variable before the first `fit` (the schedules do).
        """
        if self._temperature_variable is None:
            self._temperature_variable = tf.Variable(
                self._temperature,
                trainable=False,
                dtype=tf.float32,
                name="temperature",
            )
        return self._temperature_variable

    def _current_temperature(self):
        if self._temperature_variable is not None:
            return self._temperature_variable
        return self._temperature

    def _log_probs(self, y_true, y_pred):
        temperature = self._current_temperature()
        log_p_teacher = tf.stop_gradient(
            softened_log_probs(y_true, temperature, self.teacher_from_logits)
        )
        log_p_student = softened_log_probs(
            y_pred, temperature, self.student_from_logits
        )
        return log_p_teacher, log_p_student, temperature

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "teacher_from_logits": self.teacher_from_logits,
                "student_from_logits": self.student_from_logits,
            }
        )
        return config


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

    Returns:
        A scalar loss in float32 (or a per-sample one with
        `reduction="none"`).

    Example:

    >>> import numpy as np, keras_kd as kd
    >>> loss = kd.losses.KLDivergence(temperature=4.0)
    >>> teacher_logits = np.array([[2.0, 1.0, 0.1]])
    >>> float(loss(teacher_logits, teacher_logits))  # identical distributions
    0.0
    """

    default_name = "kl_divergence"

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        log_p_teacher, log_p_student, temperature = self._log_probs(y_true, y_pred)
        kl = tf.reduce_sum(
            tf.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1
        )
        return kl * tf.square(tf.cast(temperature, tf.float32))


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
        return cross_entropy * tf.square(tf.cast(temperature, tf.float32))


__all__ = [
    "KLDivergence",
    "SoftTargetCrossEntropy",
    "as_loss",
    "softened_log_probs",
    "validate_temperature",
]
