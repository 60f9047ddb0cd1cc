"""Quantization- and pruning-aware distillation (tensorflow-model-optimization).

The teacher guides a student that is being made small: either a
quantization-aware student, whose forward pass simulates int8 arithmetic
(fake quantization), so that it learns weights that survive conversion to a
full-integer `.tflite`; or a student whose smallest weights are pruned to
zero on a schedule, so that the file compresses.

```python
import keras_kd as kd

# quantization-aware distillation
student_q = kd.optimize.quantization_aware(student)
distiller = kd.Distiller(teacher=teacher, student=student_q)
distiller.compile(optimizer="adam", loss=hard_loss, alpha=0.9,
                  distillation_loss=kd.losses.KLDivergence(temperature=4.0))
distiller.fit(train_ds, epochs=2)
kd.export.to_tflite(student_q, "student_int8.tflite", quantization="int8",
                    representative_data=train_ds)

# pruning-aware distillation
student_p = kd.optimize.prune(student, target_sparsity=0.8,
                              end_step=epochs * steps_per_epoch)
distiller = kd.Distiller(teacher=teacher, student=student_p)
distiller.compile(...)
distiller.fit(train_ds, epochs=epochs)      # no callback to remember
pruned = kd.optimize.strip(student_p)        # a plain Keras model again
kd.export.to_tflite(pruned, "student_pruned.tflite")
kd.optimize.sparsity(pruned), kd.optimize.gzipped_size("student_pruned.tflite")
```

tensorflow-model-optimization works with tf_keras (Keras 2) only: these
functions need `TF_USE_LEGACY_KERAS=1` set before TensorFlow is imported and
`pip install keras-kd[optimize]`. In the Keras 3 flavour they raise an error
that says so. `sparsity` and `gzipped_size` work in both flavours.

The pruning step counter, which tfmot otherwise asks the user to drive with
its `UpdatePruningStep` callback, is started by `prune` itself, and `strip`
re-applies the masks before removing the wrappers, so training needs no
callback; `pruning_callbacks` gives the callbacks for those who want the masks
re-applied at each epoch's end (sparse checkpoints) or TensorBoard summaries.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from keras_kd import backend
from keras_kd._utils import (
    check_int,
    check_model,
    check_number,
    is_graph_model,
    unwrap_layer,
    walk_layers,
)
from keras_kd.backend import keras

_GZIP_CHUNK = 1 << 20


# ----------------------------------------------------------------------
# Flavour and package checks
# ----------------------------------------------------------------------


def _tfmot(function: str):
    """tensorflow-model-optimization, or an error that explains the fix."""
    if not backend.LEGACY:
        raise RuntimeError(
            f"`keras_kd.optimize.{function}` needs tensorflow-model-"
            "optimization, which works with tf_keras (Keras 2) only, and this "
            "process uses Keras 3. Set the environment variable "
            "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported (e.g. "
            "`TF_USE_LEGACY_KERAS=1 python train.py`), install the extra with "
            "`pip install keras-kd[optimize]`, and build the models with "
            "`from keras_kd.backend import keras`."
        )
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"`keras_kd.optimize.{function}` needs tensorflow-model-"
            "optimization. Install it with `pip install keras-kd[optimize]` "
            "(or `pip install tensorflow-model-optimization tf-keras`)."
        ) from e
    return tfmot


def _check_graph_model(model, argument: str, function: str) -> None:
    check_model(model, argument)
    if not is_graph_model(model):
        raise ValueError(
            f"`keras_kd.optimize.{function}` needs a Sequential or Functional "
            "model: tensorflow-model-optimization rewrites the model's graph "
            f"of layers. Received: {argument}={model.name!r}, a subclassed "
            f"{type(model).__name__}. Rebuild the student with the Functional "
            "API (keras.Input ... keras.Model(inputs, outputs))."
        )
    if not model.built:
        raise ValueError(
            f"Argument `{argument}` must be built. Received: "
            f"{argument}={model.name!r} with built=False. Give it a "
            "`keras.Input`."
        )


def _layer_selector(model, layers, argument: str = "layers"):
    """A predicate over the model's layers, from names and / or classes."""
    if layers is None:
        return None
    if isinstance(layers, (str, type)):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set)):
        raise TypeError(
            f"Argument `{argument}` must be None or a non-empty list of layer "
            "names and / or layer classes (e.g. [keras.layers.Dense]). "
            f"Received: {argument}={layers!r} of type {type(layers).__name__}."
        )
    if not layers:
        raise ValueError(
            f"Argument `{argument}` must be None or a non-empty list of layer "
            "names and / or layer classes (e.g. [keras.layers.Dense]). "
            f"Received: {argument}={layers!r}."
        )
    names = {layer.name for layer in model.layers}
    wanted_names, wanted_types = set(), []
    for item in layers:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(
                    f"Argument `{argument}` names a layer that the model does "
                    f"not have. Received: {item!r}. Expected one of "
                    f"{sorted(names)}."
                )
            wanted_names.add(item)
        elif isinstance(item, type) and issubclass(item, keras.layers.Layer):
            wanted_types.append(item)
        else:
            raise TypeError(
                f"Argument `{argument}` must hold layer names or layer "
                f"classes. Received the item {item!r} of type "
                f"{type(item).__name__}."
            )

    def selected(layer) -> bool:
        return layer.name in wanted_names or isinstance(layer, tuple(wanted_types))

    if not any(selected(layer) for layer in model.layers):
        raise ValueError(
            f"Argument `{argument}` selects no layer of model {model.name!r}. "
            f"Received: {argument}={layers!r}; its layers are "
            f"{[f'{layer.name} ({type(layer).__name__})' for layer in model.layers]}."
        )
    return selected


# ----------------------------------------------------------------------
# Quantization-aware training
# ----------------------------------------------------------------------


def quantization_aware(model, layers=None):
    """A quantization-aware copy of `model`, to distil into and export as int8.

    Wraps the layers with tfmot's fake quantization (8-bit weights and
    activations, as the int8 `.tflite` will compute them), so that training
    (usually a short fine-tuning of an already distilled student, with the
    teacher still guiding it) adapts the weights to int8 arithmetic. The
    returned model starts from `model`'s weights. Hand it to
    `keras_kd.Distiller` as the student, then export it with
    `keras_kd.export.to_tflite(..., quantization="int8")` (no calibration
    data is needed when every layer is annotated).

    Needs the tf_keras flavour (`TF_USE_LEGACY_KERAS=1`) and
    `pip install keras-kd[optimize]`.

    Args:
        model: a built Sequential or Functional tf_keras model.
        layers: None to quantize every layer (`tfmot...quantize_model`), or a
            list of layer names and / or classes to annotate only those
            (e.g. `[keras.layers.Dense]`); the others stay float (give
            `representative_data` to `to_tflite` to calibrate them).

    Returns:
        A new quantization-aware `keras.Model`.

    Example:

    ```python
    student_q = kd.optimize.quantization_aware(student)
    distiller = kd.Distiller(teacher=teacher, student=student_q)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4), loss=hard_loss,
                      alpha=0.9)
    distiller.fit(x_train, y_train, epochs=1)
    kd.export.to_tflite(student_q, "student_qat.tflite", quantization="int8")
    ```
    """
    tfmot = _tfmot("quantization_aware")
    _check_graph_model(model, "model", "quantization_aware")
    selected = _layer_selector(model, layers)
    quantize = tfmot.quantization.keras
    try:
        if selected is None:
            return quantize.quantize_model(model)

        def annotate(layer):
            if selected(layer):
                return quantize.quantize_annotate_layer(layer)
            return layer

        annotated = keras.models.clone_model(model, clone_function=annotate)
        with quantize.quantize_scope():
            return quantize.quantize_apply(annotated)
    except RuntimeError as e:
        if "not supported" not in str(e):
            raise
        raise ValueError(
            f"tensorflow-model-optimization cannot quantize every layer of "
            f"model {model.name!r}: {e} Pass `layers=[...]` to annotate only "
            "the supported ones (e.g. [keras.layers.Dense, "
            "keras.layers.Conv2D])."
        ) from e


# ----------------------------------------------------------------------
# Pruning
# ----------------------------------------------------------------------


def _default_frequency(span: int) -> int:
    """The largest divisor of `span` up to a tenth of it (and 100)."""
    cap = max(1, min(100, span // 10))
    return max(d for d in range(1, cap + 1) if span % d == 0)


def prune(
    model,
    target_sparsity: float,
    end_step: int,
    begin_step: int = 0,
    initial_sparsity: float = 0.0,
    frequency: int | None = None,
    layers=None,
):
    """A copy of `model` whose weights are pruned to `target_sparsity`.

    Wraps the layers with tfmot's `prune_low_magnitude` on a polynomial
    schedule: from `begin_step` to `end_step` (training steps of the
    returned model, i.e. batches), every `frequency` steps, the smallest
    weights of each kernel are set to zero, until the share of zeros reaches
    `target_sparsity` at `end_step`. Distil into the returned model (no
    callback needed), then `strip` it and export it; the zeros make the file
    compress (`gzipped_size`).

    Needs the tf_keras flavour (`TF_USE_LEGACY_KERAS=1`) and
    `pip install keras-kd[optimize]`.

    Args:
        model: a built Sequential or Functional tf_keras model.
        target_sparsity: the share of zeros to reach in each pruned kernel,
            in [0, 1).
        end_step: the training step at which the target is reached; at
            most the number of steps `fit` will run
            (`epochs * steps_per_epoch`).
        begin_step: the step at which pruning starts.
        initial_sparsity: the sparsity applied at `begin_step`.
        frequency: steps between two mask updates; it must divide
            `end_step - begin_step` so that the last update falls on
            `end_step`. None picks the largest such divisor up to a tenth of
            the span (and 100).
        layers: None to prune every prunable layer, or a list of layer names
            and / or classes.

    Returns:
        A new `keras.Model` with pruning wrappers, starting from `model`'s
        weights; `model` itself is left unchanged.

    Example:

    ```python
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    student_p = kd.optimize.prune(student, target_sparsity=0.8, end_step=steps)
    distiller = kd.Distiller(teacher=teacher, student=student_p)
    distiller.compile(optimizer="adam", loss=hard_loss, alpha=0.9)
    distiller.fit(x_train, y_train, batch_size=batch_size, epochs=epochs)
    pruned = kd.optimize.strip(student_p)
    ```
    """
    tfmot = _tfmot("prune")
    _check_graph_model(model, "model", "prune")
    target_sparsity = check_number(
        target_sparsity,
        "target_sparsity",
        0.0,
        1.0,
        high_open=True,
        what="the share of zeros to reach",
    )
    initial_sparsity = check_number(
        initial_sparsity,
        "initial_sparsity",
        0.0,
        1.0,
        high_open=True,
        what="the share of zeros at `begin_step`",
    )
    if initial_sparsity > target_sparsity:
        raise ValueError(
            "Argument `initial_sparsity` must not exceed `target_sparsity`. "
            f"Received: initial_sparsity={initial_sparsity}, "
            f"target_sparsity={target_sparsity}."
        )
    begin_step = check_int(begin_step, "begin_step", 0, "a training step")
    end_step = check_int(end_step, "end_step", begin_step + 1, "a training step")
    span = end_step - begin_step
    if frequency is None:
        frequency = _default_frequency(span)
    frequency = check_int(frequency, "frequency", 1, "training steps")
    if span % frequency:
        raise ValueError(
            "Argument `frequency` must divide `end_step - begin_step`, or the "
            "last mask update falls before `end_step` and the target "
            f"sparsity is never reached. Received: frequency={frequency}, "
            f"begin_step={begin_step}, end_step={end_step} (span {span}). "
            f"Expected a divisor of {span}, e.g. "
            f"{_default_frequency(span)} (or frequency=None)."
        )
    selected = _layer_selector(model, layers)
    sparsity_api = tfmot.sparsity.keras
    schedule = sparsity_api.PolynomialDecay(
        initial_sparsity=initial_sparsity,
        final_sparsity=target_sparsity,
        begin_step=begin_step,
        end_step=end_step,
        frequency=frequency,
    )
    # tfmot wraps the layers themselves; a copy leaves `model` untouched.
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    if selected is None:
        pruned = sparsity_api.prune_low_magnitude(copy, pruning_schedule=schedule)
    else:

        def annotate(layer):
            if selected(layer):
                return sparsity_api.prune_low_magnitude(
                    layer, pruning_schedule=schedule
                )
            return layer

        pruned = keras.models.clone_model(copy, clone_function=annotate)
    _start_pruning_steps(pruned)
    return pruned


def _pruning_wrappers(model):
    return [
        layer
        for layer in walk_layers(model)
        if type(layer).__name__ == "PruneLowMagnitude"
    ]


def _start_pruning_steps(model) -> None:
    """What tfmot's `UpdatePruningStep.on_train_begin` does, done once here."""
    for layer in _pruning_wrappers(model):
        if int(layer.pruning_step.numpy()) == -1:
            layer.pruning_step.assign(0)


def pruning_callbacks(log_dir: str | None = None) -> list:
    """tfmot's pruning callbacks, for `fit` on a model from `prune`.

    Not required (`prune` starts the step counter and `strip` re-applies the
    masks), but `UpdatePruningStep` re-applies the masks at the end of every
    epoch, so checkpoints saved between epochs are sparse, and
    `PruningSummaries` logs the sparsity of each layer to TensorBoard.

    Args:
        log_dir: a TensorBoard log directory for `PruningSummaries`, or None.

    Returns:
        A list of callbacks to pass to `fit(callbacks=...)`.
    """
    tfmot = _tfmot("pruning_callbacks")
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    if log_dir is not None:
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(
                "Argument `log_dir` must be a directory path or None. "
                f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}."
            )
        if not os.fspath(log_dir):
            raise ValueError(
                "Argument `log_dir` must be a directory path or None. "
                "Received: log_dir=''."
            )
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "Argument `log_dir` asks for TensorBoard pruning summaries, "
                "and TensorBoard is not installed. Install it with "
                f"`pip install tensorboard`, or pass log_dir=None. Received: "
                f"log_dir={os.fspath(log_dir)!r}."
            )
        callbacks.append(
            tfmot.sparsity.keras.PruningSummaries(log_dir=os.fspath(log_dir))
        )
    return callbacks


def strip(model):
    """`model` without its pruning wrappers: a plain Keras model to export.

    Re-applies each wrapper's mask first (the last optimizer step may have
    moved pruned weights away from zero), then removes the wrappers with
    tfmot's `strip_pruning`. A model without pruning wrappers is returned
    unchanged. Quantization-aware wrappers stay: the converter needs them.

    Args:
        model: a model from `prune`, after training.

    Returns:
        A `keras.Model` with the same layers and sparse weights.
    """
    check_model(model, "model")
    wrappers = _pruning_wrappers(model)
    if not wrappers:
        return model
    tfmot = _tfmot("strip")
    for layer in wrappers:
        layer.pruning_obj.weight_mask_op()
    return tfmot.sparsity.keras.strip_pruning(model)


# ----------------------------------------------------------------------
# Measures (both flavours)
# ----------------------------------------------------------------------


_KERNEL_NAMES = ("kernel", "depthwise_kernel")


def _kernels(model):
    """`(layer name, kernel variable)` of each Dense / Conv-like layer.

    Wrappers (tfmot's) and nested models are looked through: the kernel is
    counted once, under the name of the layer that owns it.
    """
    found, seen = [], set()
    for layer in walk_layers(model):
        if unwrap_layer(layer) is not layer or getattr(layer, "layers", None):
            continue  # a wrapper or a nested model: its layers come next
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in _KERNEL_NAMES and id(weight) not in seen:
                seen.add(id(weight))
                found.append((layer.name, weight))
    return found


def sparsity(model, per_layer: bool = False):
    """The share of exactly-zero weights in a model's kernels.

    Counts the kernels of Dense and convolution layers (what pruning acts
    on; biases are not pruned), through pruning and quantization wrappers.

    Args:
        model: a `keras.Model` (either flavour).
        per_layer: return `{layer name: sparsity}` instead of the overall
            share.

    Returns:
        A float in [0, 1], or a dict of them.
    """
    check_model(model, "model")
    kernels = _kernels(model)
    if not kernels:
        raise ValueError(
            f"Model {model.name!r} has no Dense or convolution kernels to "
            "measure the sparsity of."
        )
    counts = {}
    for name, kernel in kernels:
        values = np.asarray(kernel.numpy())
        zeros, size = counts.get(name, (0, 0))
        counts[name] = (zeros + int(np.sum(values == 0)), size + int(values.size))
    if per_layer:
        return {name: zeros / size for name, (zeros, size) in counts.items()}
    zeros = sum(z for z, _ in counts.values())
    size = sum(s for _, s in counts.values())
    return zeros / size


class _Counter:
    def __init__(self):
        self.size = 0

    def write(self, data):
        self.size += len(data)
        return len(data)

    def flush(self):
        pass


def gzipped_size(path) -> int:
    """The size in bytes of a file once gzipped (level 9).

    Pruned weights are zeros, which a `.tflite` stores as they are; the app
    download (APK, IPA, web bundle) compresses them. This is the size that
    compression gives.

    Args:
        path: a file, e.g. a `.tflite`.

    Returns:
        The number of bytes of the gzipped file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "Argument `path` must be a file path. Received: "
            f"path={path!r} of type {type(path).__name__}."
        )
    if not os.path.isfile(path):
        raise ValueError(
            f"Argument `path` must be an existing file. Received: path={path!r}."
        )
    counter = _Counter()
    with (
        open(path, "rb") as source,
        gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=9, mtime=0) as target,
    ):
        while True:
            chunk = source.read(_GZIP_CHUNK)
            if not chunk:
                break
            target.write(chunk)
    return counter.size


__all__ = [
    "gzipped_size",
    "prune",
    "pruning_callbacks",
    "quantization_aware",
    "sparsity",
    "strip",
]
