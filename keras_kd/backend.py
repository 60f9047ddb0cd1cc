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
# Keras internals keras-kd depends on: each is read or set in one function
# (the overridden build methods in one class) here, and nowhere else
# (tests/test_house_rules.py fails on one elsewhere). Each has a guard test in
# tests/test_backend.py named for the internal; it fails, naming the function
# to update, the day Keras moves it. The docstrings say what to do then.
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


def keras_mask(tensor):
    """The Keras mask a layer attached to `tensor` (`mask_zero=True`), or None.

    Layers attach their output's mask as the tensor's private `_keras_mask`,
    in both flavours (Keras 3 reads it with the non-public
    `keras.src.backend.common.masking.get_keras_mask`); keras-kd reads it to
    weigh a sequence's tokens. If it moves, read it as `Layer.__call__` does.

    Args:
        tensor: a tensor (one without a mask gives None).
    """
    return getattr(tensor, "_keras_mask", None)


def keras_history_layer(tensor):
    """The layer that produced a symbolic tensor of a Functional model, or None.

    Keras records it in the tensor's private `_keras_history`, a named tuple
    whose first field is the layer (`operation` in Keras 3, `layer` in
    tf_keras); keras-kd reads it to find a model's output layers (does the
    teacher end in softmax?). If it moves, find the layer another way
    (Keras 3's `Function` keeps `_operations`).

    Args:
        tensor: a symbolic tensor (`model.outputs[i]`); an eager one gives None.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    return history[0] if layer is None else layer


def is_graph_network(model) -> bool:
    """Whether `model` is a graph of layers: Sequential or Functional.

    Such a model has `inputs`, `outputs` and layers to walk and clone.
    tf_keras says so in the private `Model._is_graph_network`; Keras 3 has
    no flag and no public `Functional` class, so a class named "Functional"
    among the model's bases answers there (subclasses of Functional, such as
    KerasHub's task models, included). If either moves, update the test here.

    Args:
        model: a `keras.Model`.
    """
    return (
        isinstance(model, keras.Sequential)
        or bool(getattr(model, "_is_graph_network", False))
        or any(cls.__name__ == "Functional" for cls in type(model).__mro__)
    )


def build_optimizer(optimizer, variables) -> None:
    """Creates `optimizer`'s variables for `variables` unless it has them.

    Callbacks that save or restore the optimizer's state need its variables
    before the first step. Keras 3 says whether it is built in the public
    `Optimizer.built`; tf_keras sets the private `Optimizer._built` once
    built. If that moves, find out as tf_keras's own `Optimizer.build` does.

    Args:
        optimizer: a `keras.optimizers.Optimizer`.
        variables: the variables it trains (`model.trainable_variables`).
    """
    built = getattr(optimizer, "built", None)
    if built is None:
        built = getattr(optimizer, "_built", False)
    if not built:
        optimizer.build(variables)


def steps_per_execution(model) -> int:
    """The `steps_per_execution` a model was compiled with (1 if it was not).

    Public in both flavours, but an int in Keras 3 and a variable (None
    before `compile`) in tf_keras, whose `_steps_per_execution` holds it.
    """
    value = getattr(model, "steps_per_execution", None)
    if value is None:
        return 1
    return int(value.numpy() if hasattr(value, "numpy") else value)


class _StartAt:
    """tf_keras's hook for a callback to choose the first epoch of `fit`."""

    def __init__(self, epoch):
        self.epoch = epoch

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch, initial_epoch, mode=None
    ):
        return self.epoch, 0


def set_initial_epoch(model, epoch) -> None:
    """Makes the `fit` that is starting begin at `epoch` (None: as asked).

    Call it from `on_train_begin`, as Keras's own `BackupAndRestore` does
    through private state `fit` reads afterwards: Keras 3's
    `Model._initial_epoch` (an int), tf_keras's `Model._training_state` (an
    object whose `maybe_load_initial_counters_from_ckpt` returns
    `(epoch, step)`). If either moves, do what that callback now does.

    Args:
        model: the `keras.Model` being fitted (a callback's `self.model`).
        epoch: the first epoch's index, or None to give back the user's
            `initial_epoch` (call it so from `on_train_end`).
    """
    if LEGACY:
        model._training_state = None if epoch is None else _StartAt(epoch)
    else:
        model._initial_epoch = epoch


def replace_train_function(model, function):
    """Puts `function` in the place of `model`'s train function; returns the old.

    `fit` calls `model.train_function(iterator)` once per step, reading the
    attribute anew each time, in both flavours: a callback may swap it
    between batches. The attribute is public, its calling convention is
    not: if it changes, update this and `batch_skipping_train_function`.

    Args:
        model: the `keras.Model` being fitted.
        function: a callable `function(iterator) -> logs`, or a function an
            earlier call returned.
    """
    previous = model.train_function
    model.train_function = function
    return previous


def batch_skipping_train_function(model):
    """A train function that draws one batch and does not train on it.

    For `replace_train_function`: returns the logs Keras's own returns (the
    metrics' current results), leaving weights and metrics untouched.

    Args:
        model: the compiled `keras.Model` being fitted.
    """

    def skip(iterator):
        next(iterator)
        results = getattr(model, "get_metrics_result", None)
        if callable(results):  # Keras 3
            return results()
        return {m.name: m.result() for m in model.metrics}

    return skip


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


def copy_batch_mean_permission(source, target) -> None:
    """Gives `target` what `allow_batch_mean_under_strategy` gave `source`.

    For a loss built afresh from another at each call (keras-kd's bound
    losses): tf_keras reads `_allow_sum_over_batch_size` on the loss it
    calls. Keras 3 losses have no such flag: nothing to copy.

    Args:
        source: the `keras.losses.Loss` the user gave.
        target: the `keras.losses.Loss` that computes it.
    """
    allowed = getattr(source, "_allow_sum_over_batch_size", None)
    if allowed is not None:
        target._allow_sum_over_batch_size = allowed


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


class ModelBuildHooks:
    """Mixin for a `keras.Model` whose batches Keras 3 cannot read alone.

    Keras 3 builds a model created under a `tf.distribute` strategy from one
    batch before the first step (the private `Model._maybe_symbolic_build`,
    which calls `Model._symbolic_build(data_batch=...)`). Two things go
    wrong there for keras-kd's models, and are put right here, the only
    place that overrides these private methods:

    * under a `MultiWorkerMirroredStrategy` Keras averages the replicas'
      first batch with `strategy.reduce`, which takes no nest such as
      `(x, y)`: this worker's share is read instead (`first_local_batch`);
    * the build reads the batch as `(x, y, sample_weight)`: a batch of
      another shape (a `keras_kd.data.TeacherBatch`) is handed over as the
      public hook `symbolic_build_batch` returns it.

    tf_keras has neither method (it builds on the first step), so there the
    overrides are never called and the mixin does nothing. Put the mixin
    before `keras.Model` in the bases. When Keras renames or re-signs the
    methods, `tests/test_backend.py::test_model_symbolic_build_methods`
    fails: update the two overrides below.

    Example:

    ```python
    class MyModel(backend.ModelBuildHooks, keras.Model):
        def symbolic_build_batch(self, batch):
            return batch["x"], batch["y"]
    ```
    """

    def symbolic_build_batch(self, batch):
        """The batch Keras 3's symbolic build reads as `(x, y, sample_weight)`.

        Override it when the model's datasets yield batches of another shape.

        Args:
            batch: the first batch, as the data yields it (tensors).

        Returns:
            `batch` itself here; an override returns `(x, y, sample_weight)`
            (or `(x, y)`, or `x`).
        """
        return batch

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is not None and is_multi_worker(strategy):
            data_batch = first_local_batch(strategy, iterator)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _symbolic_build(self, iterator=None, data_batch=None):
        if data_batch is not None:
            data_batch = self.symbolic_build_batch(data_batch)
        return super()._symbolic_build(iterator=iterator, data_batch=data_batch)


__all__ = [
    "FLAVOUR",
    "LEGACY",
    "ModelBuildHooks",
    "allow_batch_mean_under_strategy",
    "batch_skipping_train_function",
    "build_optimizer",
    "check_tensorflow_backend",
    "compiled_loss",
    "copy_batch_mean_permission",
    "first_local_batch",
    "is_graph_network",
    "is_keras_loss_tracker",
    "is_multi_worker",
    "keras",
    "keras_history_layer",
    "keras_mask",
    "minimize",
    "multi_worker_step_logs",
    "num_replicas",
    "register_serializable",
    "regularization_loss",
    "replace_train_function",
    "set_initial_epoch",
    "steps_per_execution",
    "tf",
    "use_legacy_keras",
]
