"""What every distillation loss shares: argument checks, softening, the base.

`_SoftTargetLoss` holds the arguments of the temperature-softened losses
(temperature, its variable for schedules, `*_from_logits`, `standardize`) and
their config; `_bound_call` gives a loss whose per-sample values depend on
more than one sample's outputs (the batch's sample weights, the labels)
Keras's own reduction, sample weighting and per-replica scaling.
"""

from __future__ import annotations

import numbers

from keras_kd import _utils, backend
from keras_kd.backend import keras, tf

# Added to the standard deviation of a logit vector before dividing by it
# (Sun et al. 2024), so that a constant vector standardizes to zeros.
STANDARDIZE_EPSILON = 1e-7


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


def standardize_logits(logits):
    """Each logit vector z-scored over the last axis, in float32.

    `(z - mean(z)) / (std(z) + 1e-7)`, with the sample standard deviation
    (divided by `K - 1` for `K` classes), as in the code of Sun et al.
    (CVPR 2024, "Logit Standardization in Knowledge Distillation"). The
    result does not change when a constant is added to `z`, so
    log-probabilities standardize exactly as the logits they came from.

    Args:
        logits: a tensor of logits along its last axis.

    Returns:
        A float32 tensor of the same shape.
    """
    logits = tf.cast(logits, tf.float32)
    centred = logits - tf.reduce_mean(logits, axis=-1, keepdims=True)
    count = tf.cast(tf.shape(logits)[-1], tf.float32)
    variance = tf.reduce_sum(tf.square(centred), axis=-1, keepdims=True) / tf.maximum(
        count - 1.0, 1.0
    )
    # The floor keeps the gradient of sqrt finite for a constant vector.
    std = tf.sqrt(tf.maximum(variance, 1e-30))
    return centred / (std + STANDARDIZE_EPSILON)


def softened_log_probs(
    values, temperature, from_logits: bool = True, standardize: bool = False
):
    """Log-probabilities of `softmax(logits / temperature)`, in float32.

    Args:
        values: logits (`from_logits=True`) or probabilities along the last
            axis.
        temperature: the softmax temperature, a positive number or scalar
            tensor.
        from_logits: whether `values` are logits. Probabilities are turned
            into log-probabilities first (`log(p)` is a valid set of logits
            for `p`), clipped away from 0.
        standardize: z-score the logits over the last axis before dividing
            by the temperature (see `standardize_logits`).

    Returns:
        A float32 tensor of the same shape as `values`.
    """
    values = tf.cast(values, tf.float32)
    if not from_logits:
        values = _utils.log_probs(values)
    if standardize:
        values = standardize_logits(values)
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


class _BoundCall(keras.losses.Loss):
    """One call of `owner.call(y_true, y_pred, **bound)` under Keras's
    reduction, sample weighting and per-replica scaling, with `owner`'s name
    and reduction.

    Built afresh for each call (at trace time in a compiled step), so that
    nothing about one batch is stored on the loss itself, which replicas of
    a `tf.distribute` strategy share.
    """

    def __init__(self, owner, **bound):
        super().__init__(name=owner.name, reduction=owner.reduction)
        self._owner = owner
        self._bound = bound
        # tf_keras: the Distiller allows the batch mean under a strategy on
        # the loss it was given (backend.allow_batch_mean_under_strategy).
        backend.copy_batch_mean_permission(owner, self)

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def call(self, y_true, y_pred):
        return self._owner.call(y_true, y_pred, **self._bound)


def bound_call(owner, y_true, y_pred, sample_weight, bound: dict):
    """`owner(y_true, y_pred, sample_weight)` with `bound` passed to its `call`.

    Args:
        owner: a `keras.losses.Loss` whose `call` takes `bound` as keywords.
        y_true: the targets.
        y_pred: the predictions.
        sample_weight: sample weights applied by Keras, or None.
        bound: extra tensors `owner.call` needs (labels, the weights), by
            keyword.

    Returns:
        What `owner.__call__` would return: the reduced loss.
    """
    return _BoundCall(owner, **bound)(y_true, y_pred, sample_weight=sample_weight)


class _SoftTargetLoss(keras.losses.Loss):
    """Shared arguments and config of the temperature-softened losses.

    Subclasses set `default_name` and implement `call`.
    """

    default_name: str | None = None
    # Whether the Distiller must pass the batch's labels:
    # `loss(teacher, student, sample_weight=..., labels=y)` (see DecoupledKD).
    requires_labels = False

    def __init__(
        self,
        temperature: float = 2.0,
        teacher_from_logits: bool = True,
        student_from_logits: bool = True,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
        standardize: bool = False,
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
        self.standardize = _utils.check_bool(standardize, "standardize")

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
        """Softened log-probabilities of the teacher (gradient stopped) and
        the student, and the temperature as a float32 scalar."""
        temperature = tf.cast(self._current_temperature(), tf.float32)
        log_p_teacher = tf.stop_gradient(
            softened_log_probs(
                y_true, temperature, self.teacher_from_logits, self.standardize
            )
        )
        log_p_student = softened_log_probs(
            y_pred, temperature, self.student_from_logits, self.standardize
        )
        return log_p_teacher, log_p_student, temperature

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "teacher_from_logits": self.teacher_from_logits,
                "student_from_logits": self.student_from_logits,
                "standardize": self.standardize,
            }
        )
        return config


def check_weight(value, argument: str, what: str) -> float:
    """A non-negative term weight as a float."""
    return _utils.check_number(value, argument, low=0.0, what=what)


def check_some_weight(weights: dict) -> None:
    """Raises when every term of a loss is weighted 0 (it would be 0)."""
    if all(value == 0.0 for value in weights.values()):
        received = ", ".join(f"{k}={v}" for k, v in weights.items())
        raise ValueError(
            f"Arguments {', '.join(f'`{k}`' for k in weights)} cannot all be 0: "
            f"the loss would always be 0. Received: {received}. Give at least "
            "one term a positive weight."
        )


def weights_like(sample_weight, values):
    """`sample_weight` as float32 of `values`' shape (None stays None).

    Trailing axes of size 1 are added up to `values`' rank (one weight per
    sequence for per-position values); a trailing axis of size 1 beyond it
    is dropped.
    """
    if sample_weight is None:
        return None
    weight = tf.cast(sample_weight, tf.float32)
    rank = values.shape.rank
    if weight.shape.rank == rank + 1 and weight.shape[-1] == 1:
        weight = tf.squeeze(weight, axis=-1)
    extra = rank - weight.shape.rank
    if extra > 0:
        weight = tf.reshape(weight, tf.concat([tf.shape(weight), [1] * extra], 0))
    return tf.broadcast_to(weight, tf.shape(values))
