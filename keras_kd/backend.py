"""Which Keras keras-kd runs on.

keras-kd works with two flavours of Keras on TensorFlow:

* **Keras 3** (the default), the `keras` package with the TensorFlow backend.
* **tf_keras** (Keras 2), used when the environment variable
  `TF_USE_LEGACY_KERAS=1` is set before TensorFlow is imported. This is the
  switch TensorFlow itself reads, and the flavour that
  tensorflow-model-optimization (quantization- and pruning-aware training)
  needs.

Every other module of keras-kd takes `keras` from here, so one process never
mixes the two. The training steps' differences between the flavours (loss
scaling, per-replica scaling) and the few Keras internals keras-kd relies on
live here too, each in one function.
"""

from __future__ import annotations

import os

import tensorflow as tf

_TRUE = ("1", "true", "yes", "y", "on")


def use_legacy_keras() -> bool:
    """Returns whether `TF_USE_LEGACY_KERAS` asks for tf_keras (Keras 2)."""
    return os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in _TRUE


LEGACY = use_legacy_keras()

if LEGACY:
    try:
        import tf_keras as keras
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "TF_USE_LEGACY_KERAS=1 is set, so keras-kd uses tf_keras, which is "
            "not installed. Install it with `pip install keras-kd[optimize]` "
            "(or `pip install tf-keras`), or unset TF_USE_LEGACY_KERAS to use "
            "Keras 3."
        ) from e
    FLAVOUR = "tf_keras"
else:
    import keras

    FLAVOUR = "keras3"


def check_tensorflow_backend(where: str = "keras_kd") -> None:
    """Raises a `ValueError` unless Keras runs on the TensorFlow backend.

    Args:
        where: what is being built, for the message.
    """
    if LEGACY:
        return
    name = keras.backend.backend()
    if name != "tensorflow":
        raise ValueError(
            f"{where} needs the TensorFlow backend of Keras. Received: "
            f"keras.backend.backend()={name!r}. Set the environment variable "
            "KERAS_BACKEND=tensorflow before importing keras."
        )


def register_serializable(cls):
    """Registers `cls` for Keras serialization under the `keras_kd` package."""
    return keras.saving.register_keras_serializable(package="keras_kd")(cls)


def num_replicas() -> int:
    """Number of replicas of the current `tf.distribute` strategy."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def regularization_loss(model):
    """The sum of `model.losses` in float32, scaled as Keras scales it.

    Under a `tf.distribute` strategy each replica's loss is divided by the
    number of replicas, because the replicas' gradients are summed; Keras
    does this for the regularization losses too, in both flavours.

    Args:
        model: a `keras.Model` (or layer) whose `losses` to add up.

    Returns:
        A float32 scalar; 0 when `model` has no losses.
    """
    losses = [tf.cast(tf.reduce_sum(loss), tf.float32) for loss in model.losses]
    if not losses:
        return tf.zeros((), tf.float32)
    total = tf.add_n(losses)
    replicas = num_replicas()
    return total / float(replicas) if replicas > 1 else total


def minimize(optimizer, loss, variables, tape) -> None:
    """One optimizer step on `variables` from the gradients `tape` recorded.

    Under `mixed_float16` the loss is scaled (and the gradients unscaled) by
    the loss-scale optimizer that `compile` installs, in either flavour.

    Args:
        optimizer: the optimizer to apply the gradients with.
        loss: the scalar loss, computed under `tape`.
        variables: the variables to update.
        tape: the `tf.GradientTape` that recorded `loss`.
    """
    if LEGACY:
        optimizer.minimize(loss, variables, tape=tape)
        return
    with tape:
        scaled = optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, variables)
    optimizer.apply_gradients(zip(gradients, variables))


# ---------------------------------------------------------------------------
# Keras internals keras-kd depends on: each use of one lives in one function
# here. tests/test_distiller.py::test_keras_internals_the_distiller_relies_on
# fails with the reason the day Keras moves them.
# ---------------------------------------------------------------------------


def compiled_loss(model):
    """The loss container `compile` built from its `loss` argument.

    Keras's own container is used so that lists, dicts and `loss_weights`
    mean what they mean in `keras.Model.compile`. tf_keras exposes it as
    `Model.compiled_loss`. Keras 3 keeps it private (`Model._compile_loss`):
    its public `compute_loss` adds the regularization losses of every
    sublayer (a distiller's teacher's included), so it cannot give the
    compiled loss alone.

    Args:
        model: a compiled `keras.Model`.

    Returns:
        A callable `(y, y_pred, sample_weight)` (tf_keras's also takes
        `regularization_losses`).
    """
    attribute = "compiled_loss" if LEGACY else "_compile_loss"
    if not hasattr(model, attribute):
        raise RuntimeError(
            "keras-kd evaluates the hard-label loss with the loss container "
            f"that `compile` stores in `Model.{attribute}`, which this Keras "
            f"({FLAVOUR} {keras.__version__}) does not have. keras-kd needs "
            "updating for this Keras version; please report it."
        )
    return getattr(model, attribute)


def is_keras_loss_tracker(metric) -> bool:
    """Whether `metric` is the tracker Keras's own train step reports as "loss".

    `compile` gives every model a `Mean` named "loss" (Keras 3's
    `_loss_tracker`, tf_keras's `compiled_loss` total). A model whose steps
    report their own total under that name leaves Keras's out of `metrics`,
    told by its public name rather than by the private attribute holding it.

    Args:
        metric: a `keras.metrics.Metric`.
    """
    return metric.name == "loss"


def allow_batch_mean_under_strategy(loss) -> None:
    """Lets a tf_keras loss average over the batch inside a strategy.

    tf_keras refuses the default `sum_over_batch_size` reduction inside a
    `tf.distribute` strategy unless told that its caller divides by the
    number of replicas, as `compile` does (through the loss's private
    `_allow_sum_over_batch_size`). Callers of this function must divide too.
    Keras 3 losses scale per replica themselves; there this does nothing.

    Args:
        loss: a `keras.losses.Loss`.
    """
    if LEGACY:
        loss._allow_sum_over_batch_size = True


def is_multi_worker(strategy) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` over 2+ workers.

    Its replicas then outnumber the devices of this process.
    """
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


def multi_worker_step_logs(strategy, logs):
    """A step's logs in the shape Keras 3 can average across workers.

    Keras 3 averages every output of a train or test step over the workers
    of a `MultiWorkerMirroredStrategy` with `strategy.reduce("MEAN", value,
    axis=0)`, which refuses scalars ("Invalid reduction dimension 0 for
    input with 0 dimensions", tensorflow/tensorflow#72388), whatever
    `distribute_reduction_method` says. A log of shape `(1,)` averages to
    the scalar it holds: metric results are the same on every replica.
    Elsewhere (and in tf_keras, which reduces "first") the logs are
    returned as they are.

    Args:
        strategy: the model's `tf.distribute` strategy.
        logs: the dict of scalars a step returns.
    """
    if LEGACY or not is_multi_worker(strategy):
        return logs
    return tf.nest.map_structure(lambda value: tf.reshape(value, [1]), logs)


def first_local_batch(strategy, iterator):
    """The first batch of a Keras 3 epoch iterator, this process's share.

    Keras 3 builds a model made under a strategy from one batch first
    (`Model._maybe_symbolic_build`), averaging the replicas' shares with
    `strategy.reduce`, which under a multi-worker strategy takes no nest
    such as `(x, y)`. The first local replica's share has the shapes and
    dtypes needed.

    Args:
        strategy: the model's `tf.distribute` strategy.
        iterator: the `iterator` Keras passes to `_maybe_symbolic_build`.
    """
    for _, _, batches in iterator:
        batch = next(batches)
        break
    else:
        return None

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch)


__all__ = [
    "FLAVOUR",
    "LEGACY",
    "allow_batch_mean_under_strategy",
    "check_tensorflow_backend",
    "compiled_loss",
    "first_local_batch",
    "is_multi_worker",
    "is_keras_loss_tracker",
    "keras",
    "minimize",
    "multi_worker_step_logs",
    "num_replicas",
    "register_serializable",
    "regularization_loss",
    "tf",
    "use_legacy_keras",
]
