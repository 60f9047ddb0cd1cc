"""Alpha and temperature schedules.

`AlphaSchedule` and `TemperatureSchedule` change `alpha` and the softmax
temperature by epoch or by step. The values live in variables, so the
compiled train function is not retraced when they change. `linear` and
`cosine` build common schedules.
"""

from __future__ import annotations

import math

from keras_kd import _utils
from keras_kd.backend import keras, tf
from keras_kd.distiller import Distiller
from keras_kd.losses import validate_temperature


def linear(start: float, end: float, duration: int):
    """A schedule going linearly from `start` to `end` over `duration`
    epochs (or steps), then staying at `end`.

    Args:
        start: the value at epoch (or step) 0.
        end: the value from `duration` on.
        duration: the number of epochs (or steps) the change takes, >= 1.

    Returns:
        A function of the epoch (or step) returning a float.

    Example:

    >>> f = linear(1.0, 0.0, 4)
    >>> [f(t) for t in range(6)]
    [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    duration = _utils.check_int(duration, "duration", minimum=1)

    def schedule(t):
        return start + (end - start) * min(t / duration, 1.0)

    return schedule


def cosine(start: float, end: float, duration: int):
    """A half-cosine schedule from `start` to `end` over `duration` epochs
    (or steps), then staying at `end`.

    Args:
        start: the value at epoch (or step) 0.
        end: the value from `duration` on.
        duration: the number of epochs (or steps) the change takes, >= 1.

    Returns:
        A function of the epoch (or step) returning a float.

    Example:

    >>> f = cosine(8.0, 2.0, 10)
    >>> [round(f(t), 6) for t in (0, 5, 10, 20)]
    [8.0, 5.0, 2.0, 2.0]
    """
    duration = _utils.check_int(duration, "duration", minimum=1)

    def schedule(t):
        progress = min(t / duration, 1.0)
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


class _VariableSchedule(keras.callbacks.Callback):
    """Sets variables from `schedule(epoch)` or `schedule(step)`."""

    name = "value"

    def __init__(self, schedule, per: str = "epoch", verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                "Argument `schedule` must be a callable of the epoch (or "
                f"step) returning a number. Received: schedule={schedule!r}."
            )
        if per not in ("epoch", "step"):
            raise ValueError(
                f"Argument `per` must be 'epoch' or 'step'. Received: per={per!r}."
            )
        self.schedule = schedule
        self.per = per
        self.verbose = verbose
        self._variables = []
        self._step = 0

    def _get_variables(self):
        """Returns `(variables, newly_created)`."""
        raise NotImplementedError

    def _check(self, value):
        raise NotImplementedError

    def _set(self, t):
        value = self._check(self.schedule(t))
        for variable in self._variables:
            variable.assign(value)
        return value

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, Distiller):
            raise TypeError(
                f"{type(self).__name__} must be used in `fit` of a "
                f"`keras_kd.Distiller`. Received: {type(self.model).__name__}."
            )
        self._variables, created = self._get_variables()
        if created:
            # A train function traced before the variable existed holds the
            # old value as a constant: trace once more, now, with the variable.
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)
        self._step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            value = self._set(epoch)
            if self.verbose:
                print(
                    f"\n{type(self).__name__}: epoch {epoch + 1}, "
                    f"{self.name}={value:.4g}"
                )

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "step":
            self._set(self._step)
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._variables:
            logs[self.name] = float(self._variables[0].numpy())


class AlphaSchedule(_VariableSchedule):
    """Changes the Distiller's `alpha` (the weight of the distillation term)
    by epoch or by step, without retracing the train function.

    `loss = alpha * distillation + (1 - alpha) * hard`, with the scheduled
    alpha. The History gets an `alpha` entry per epoch.

    Args:
        schedule: `fn(epoch)` (or `fn(step)` with `per="step"`) returning
            alpha in [0, 1]; `keras_kd.callbacks.linear` and `cosine` build
            common ones.
        per: "epoch" or "step". With `steps_per_execution=N` a per-step
            schedule is applied every N steps.
        verbose: 1 prints the value at each epoch.

    Example:

    ```python
    # Lean on the teacher early, on the labels late.
    schedule = kd.callbacks.AlphaSchedule(kd.callbacks.linear(0.9, 0.1, 10))
    distiller.fit(x, y, epochs=10, callbacks=[schedule])
    ```
    """

    name = "alpha"

    def _get_variables(self):
        return [self.model.alpha_variable], False

    def _check(self, value):
        return _utils.check_alpha(value)


def _has_temperature(loss) -> bool:
    return loss is not None and hasattr(loss, "temperature_variable")


class TemperatureSchedule(_VariableSchedule):
    """Changes the distillation temperature by epoch or by step, without
    retracing the train function.

    The temperature moves into a variable of each driven loss
    (`loss.temperature_variable()`) at the start of training; the History
    gets a `temperature` entry per epoch.

    Args:
        schedule: `fn(epoch)` (or `fn(step)`) returning a positive number.
        per: "epoch" or "step".
        loss: the keras_kd loss (or a list of them) to drive; the other
            losses keep their temperature. By default every distillation
            loss of the Distiller that has a temperature.
        verbose: 1 prints the value at each epoch.

    Example:

    ```python
    schedule = kd.callbacks.TemperatureSchedule(kd.callbacks.cosine(8.0, 1.0, 20))
    distiller.fit(x, y, epochs=20, callbacks=[schedule])
    ```
    """

    name = "temperature"

    def __init__(self, schedule, per: str = "epoch", loss=None, verbose: int = 0):
        super().__init__(schedule, per=per, verbose=verbose)
        if loss is not None:
            for item in tf.nest.flatten(loss):
                if not _has_temperature(item):
                    raise TypeError(
                        "Argument `loss` must be a keras_kd loss with a "
                        "temperature (e.g. `keras_kd.losses.KLDivergence`), "
                        f"or a list of them. Received: loss={item!r} of type "
                        f"{type(item).__name__}."
                    )
        self.loss = loss

    def _get_variables(self):
        driven = self.loss if self.loss is not None else self.model.distillation_loss
        losses = [loss for loss in tf.nest.flatten(driven) if _has_temperature(loss)]
        if not losses:
            raise ValueError(
                "TemperatureSchedule found no loss with a temperature: the "
                "Distiller's distillation loss must be a keras_kd loss "
                "(e.g. KLDivergence), or pass `loss=`."
            )
        created = any(not loss.temperature_is_variable for loss in losses)
        return [loss.temperature_variable() for loss in losses], created

    def _check(self, value):
        return validate_temperature(float(value))
