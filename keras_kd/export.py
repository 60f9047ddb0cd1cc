"""TFLite (LiteRT) export: conversion, quantization and a parity check.

`to_tflite` converts a trained student (Keras 3 or tf_keras; Sequential,
Functional or subclassed) into a `.tflite` file with a dynamic batch
dimension, optionally quantized, then runs the file in the LiteRT
interpreter and compares it with the Keras model on real samples. It returns
an `ExportReport` with the file's size, the largest output difference, the
top-1 agreement and the interpreter's latency, so a wrong conversion is seen
before the file reaches a phone.

| `quantization` | weights | activations | inputs / outputs |
| --- | --- | --- | --- |
| `None` | float32 | float32 | float32 |
| `"float16"` | float16 | float32 | float32 |
| `"dynamic"` | int8 | float32 (int8 inside some kernels) | float32 |
| `"int8"` | int8 | int8 (calibrated) | float32 |
| `"int8_io"` | int8 | int8 (calibrated) | int8 |

The full-integer modes calibrate activation ranges on `representative_data`;
a quantization-aware model (`keras_kd.optimize.quantization_aware`) carries
its own ranges and needs none.

`evaluate_tflite` and `predict_tflite` run a `.tflite` file on data, quantizing
inputs and dequantizing outputs of integer models with the tensors' scale and
zero point. `read_metadata` reads back the entries given to `to_tflite`'s
`metadata`.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_kd import backend
from keras_kd.backend import keras, tf

QUANTIZATIONS = (None, "float16", "dynamic", "int8", "int8_io")
_FULL_INTEGER = ("int8", "int8_io")
_RESERVED_METADATA = ("min_runtime_version", "CONVERSION_METADATA")
_QAT_LAYERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
_PRUNING_LAYERS = ("PruneLowMagnitude",)
_VERIFY_BATCH = 256


@dataclasses.dataclass
class ExportReport:
    """What `to_tflite` wrote and how well the file matches the Keras model.

    Attributes:
        path: the `.tflite` file written.
        size_bytes: its size in bytes.
        num_params: the Keras model's parameter count (`count_params()`).
        quantization: `"float32"`, `"float16"`, `"dynamic"`, `"int8"` or
            `"int8_io"`.
        max_abs_diff: the largest absolute difference between the
            interpreter's (dequantized) outputs and the Keras model's on the
            verification sample; None when nothing was verified.
        max_rel_diff: `max_abs_diff` divided by the largest absolute Keras
            output, a scale-free view of the same (float32 rounding gives
            about 1e-6 whatever the size of the logits).
        top1_agreement: the share of verification samples whose arg-max
            class is the same in the file and in the Keras model (first
            output, classifiers only); None otherwise.
        latency_ms: the interpreter's median latency for one sample
            (batch of 1), in milliseconds; None when not measured.
        num_verify_samples: how many samples the comparison used.
        interpreter: `"ai_edge_litert"` or `"tf.lite"` (the fallback).
        input_dtypes: the file's input tensor types, e.g. `["float32"]`.
        output_dtypes: the file's output tensor types.
        notes: anything the figures above need to be read with.
    """

    path: str
    size_bytes: int
    num_params: int
    quantization: str
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    top1_agreement: float | None = None
    latency_ms: float | None = None
    num_verify_samples: int = 0
    interpreter: str | None = None
    input_dtypes: list = dataclasses.field(default_factory=list)
    output_dtypes: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as a dict of plain Python values."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        parts = [
            f"{self.path}: {self.quantization}",
            f"{self.size_bytes:,} bytes",
            f"{self.num_params:,} params",
        ]
        if self.max_abs_diff is not None:
            parts.append(f"max |diff| {self.max_abs_diff:.3g}")
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {100 * self.top1_agreement:.2f}%")
        if self.latency_ms is not None:
            parts.append(f"{self.latency_ms:.3g} ms/sample")
        text = ", ".join(parts)
        for note in self.notes:
            text += f"\n  note: {note}"
        return text


# ----------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------


def to_tflite(
    model,
    path,
    quantization: str | None = None,
    representative_data=None,
    *,
    verify_data=None,
    input_signature=None,
    num_calibration_samples: int = 256,
    num_verify_samples: int = 1000,
    latency_runs: int = 50,
    num_threads: int | None = None,
    select_tf_ops: bool = False,
    metadata: Mapping[str, str | bytes] | None = None,
    converter_options: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> ExportReport:
    """Converts a Keras model to a verified `.tflite` (LiteRT) file.

    Use it on a trained student to ship it: the file has a dynamic batch
    dimension, is written atomically (an existing file at `path` is replaced
    only by a successful export; a failed conversion leaves nothing behind),
    and is run in the LiteRT interpreter against the Keras model before it
    is written.

    Args:
        model: a built `keras.Model` of the current flavour (Keras 3, or
            tf_keras under `TF_USE_LEGACY_KERAS=1`): Sequential, Functional
            or subclassed.
        path: where to write the `.tflite` file; its directory must exist.
        quantization: `None` (float32), `"float16"` (float16 weights),
            `"dynamic"` (dynamic-range int8 weights), `"int8"` (full integer,
            float inputs and outputs) or `"int8_io"` (full integer with int8
            inputs and outputs).
        representative_data: samples for calibrating the full-integer modes
            (required for `"int8"` / `"int8_io"` unless the model is
            quantization-aware), and for verification when `verify_data` is
            None. Anything `fit` takes: a numpy array, a tuple `(x, y)` or
            `(x, y, sample_weight)` of arrays, a `tf.data.Dataset` or tfds
            dataset (batched or not, with or without labels), a generator or
            `PyDataset` of batches. At most `num_calibration_samples` are
            drawn, from the start.
        verify_data: samples to compare the file with the Keras model on
            (same kinds as `representative_data`); at most
            `num_verify_samples` are drawn.
        input_signature: a `tf.TensorSpec` (or a list of them, one per input)
            for models that do not know their inputs (e.g. a subclassed
            Keras 3 model); the batch dimension is made dynamic. By default
            it is read from the model, or else from the data.
        num_calibration_samples: the most samples used for calibration.
        num_verify_samples: the most samples used for verification.
        latency_runs: single-sample invocations timed for `latency_ms`
            (0 to skip).
        num_threads: threads of the interpreter used for verification and
            latency (None: the interpreter's default, one).
        select_tf_ops: allow TensorFlow ops that have no LiteRT builtin
            kernel (the app must then link the select-TF-ops library). The
            Python LiteRT interpreter cannot run such files, so they are not
            verified (the report says so).
        metadata: entries `{name: str or bytes}` stored in the file's
            metadata table (e.g. `{"labels": "cat\\ndog"}`); read them back
            with `read_metadata`.
        converter_options: further `tf.lite.TFLiteConverter` attributes to
            set, e.g. `{"experimental_new_quantizer": True}`.
        verify: run the file in the interpreter and compare it with the
            Keras model (default). With False only the size is reported.

    Returns:
        An `ExportReport`.

    Raises:
        TypeError, ValueError: for bad arguments, before any conversion.
        RuntimeError: when the converter fails (nothing is written).

    Example:

    ```python
    import keras_kd as kd

    report = kd.export.to_tflite(student, "student.tflite",
                                 quantization="int8",
                                 representative_data=train_ds,
                                 verify_data=(x_test, y_test))
    print(report)  # size, max |diff|, top-1 agreement, latency
    accuracy = kd.export.evaluate_tflite("student.tflite", (x_test, y_test))
    ```
    """
    # --- validate everything before converting anything -------------------
    _check_model(model)
    path = _check_path(path)
    quantization = _check_quantization(quantization)
    _check_int(num_calibration_samples, "num_calibration_samples", minimum=1)
    _check_int(num_verify_samples, "num_verify_samples", minimum=1)
    _check_int(latency_runs, "latency_runs", minimum=0)
    _check_num_threads(num_threads)
    _check_bool(select_tf_ops, "select_tf_ops")
    _check_bool(verify, "verify")
    metadata = _check_metadata(metadata)
    converter_options = _check_converter_options(converter_options)
    _check_data_kind(representative_data, "representative_data")
    _check_data_kind(verify_data, "verify_data")
    pruning = _layers_named(model, _PRUNING_LAYERS)
    if pruning:
        raise ValueError(
            "Argument `model` still holds pruning wrappers "
            f"({', '.join(pruning[:3])}{'...' if len(pruning) > 3 else ''}), "
            "which would be exported as extra mask operations. Expected a "
            "stripped model: call `keras_kd.optimize.strip(model)` first."
        )
    quantization_aware = bool(_layers_named(model, _QAT_LAYERS))
    if (
        quantization in _FULL_INTEGER
        and representative_data is None
        and not quantization_aware
    ):
        raise ValueError(
            f'Argument `representative_data` is required for quantization='
            f'"{quantization}": full-integer quantization calibrates the '
            "activation ranges on real inputs. Received: "
            "representative_data=None. Expected samples like those `fit` "
            "takes, e.g. representative_data=x_train or a tf.data.Dataset "
            '(or use quantization="dynamic", which needs no data).'
        )

    representative_data = _replayable(
        representative_data, max(num_calibration_samples, num_verify_samples)
    )
    verify_data = _replayable(verify_data, num_verify_samples)
    specs, structure = _input_specs(
        model, input_signature, [representative_data, verify_data]
    )
    convertible, mixed_note = _float32_model(model)
    calibration = None
    if quantization in _FULL_INTEGER and representative_data is not None:
        calibration = _collect_inputs(
            representative_data, specs, num_calibration_samples,
            "representative_data",
        )
    verification = None
    if verify:
        source, argument = (
            (verify_data, "verify_data")
            if verify_data is not None
            else (representative_data, "representative_data")
        )
        if source is not None:
            verification = _collect_inputs(
                source, specs, num_verify_samples, argument
            )

    # --- convert -----------------------------------------------------------
    content = _convert(
        convertible, specs, structure, quantization, calibration,
        select_tf_ops, converter_options,
    )
    if metadata:
        content = _add_metadata(content, metadata)

    # --- verify, then write ------------------------------------------------
    report = ExportReport(
        path=path,
        size_bytes=len(content),
        num_params=int(model.count_params()),
        quantization=quantization or "float32",
    )
    if mixed_note:
        report.notes.append(mixed_note)
    flex_ops = _flex_ops(content)
    if verify and flex_ops:
        report.notes.append(
            "Not verified: the file uses TensorFlow select ops "
            f"({', '.join(flex_ops)}), which the Python LiteRT interpreter "
            "cannot run; verify it on a runtime linked with the "
            "select-TF-ops library."
        )
    elif verify:
        _verify(
            report, model, content, structure, specs, verification,
            latency_runs, num_threads,
        )
    _write_atomically(content, path)
    return report


def evaluate_tflite(
    path,
    data,
    *,
    batch_size: int = _VERIFY_BATCH,
    max_samples: int | None = None,
    num_threads: int | None = None,
) -> float:
    """Top-1 accuracy of a `.tflite` classifier on labelled data.

    Integer inputs and outputs (`"int8_io"` files) are quantized and
    dequantized with the tensors' scale and zero point, so any file from
    `to_tflite` takes the same float data as the Keras model.

    Args:
        path: a `.tflite` file.
        data: labelled samples: a tuple `(x, y)` of numpy arrays, or a
            `tf.data.Dataset` (batched or not) or generator yielding `(x, y)`.
            Labels are class indices, or one-hot vectors.
        batch_size: samples per interpreter invocation.
        max_samples: evaluate on at most this many samples (None: all).
        num_threads: the interpreter's threads (None: its default).

    Returns:
        The accuracy, a float in [0, 1], of the first output's arg-max.

    Example:

    ```python
    accuracy = kd.export.evaluate_tflite("student.tflite", (x_test, y_test))
    ```
    """
    path = _check_existing_file(path)
    _check_int(batch_size, "batch_size", minimum=1)
    if max_samples is not None:
        _check_int(max_samples, "max_samples", minimum=1)
    _check_num_threads(num_threads)
    if data is None:
        raise ValueError(
            "Argument `data` is required. Received: data=None. Expected "
            "labelled samples, e.g. (x_test, y_test) or a tf.data.Dataset "
            "yielding (x, y)."
        )
    _check_data_kind(data, "data")
    runner = _Runner(path=path, num_threads=num_threads)
    specs = runner.input_specs()
    correct, total = 0, 0
    for inputs, labels in _iterate_batches(
        data, specs, "data", max_samples, with_labels=True
    ):
        if labels is None:
            raise ValueError(
                "Argument `data` must hold labels. Received batches without "
                "them. Expected (x, y) tuples, e.g. a tfds dataset loaded "
                "with as_supervised=True."
            )
        outputs = runner.run(inputs, batch_size=batch_size)
        predicted = _top1(outputs[0], "the file's first output")
        labels = np.asarray(labels)
        if labels.ndim == predicted.ndim + 1 and labels.shape[-1] > 1:
            labels = labels.argmax(-1)  # one-hot
        labels = labels.reshape(predicted.shape)
        correct += int(np.sum(predicted == labels))
        total += int(predicted.size)
    if total == 0:
        raise ValueError("Argument `data` yielded no samples.")
    return correct / total


def predict_tflite(
    path, x, *, batch_size: int = _VERIFY_BATCH, num_threads: int | None = None
):
    """Runs a `.tflite` file on inputs, like `model.predict`.

    Args:
        path: a `.tflite` file.
        x: inputs: a numpy array (or a list of arrays, one per input), a
            `tf.data.Dataset` or generator (labels, if any, are ignored).
        batch_size: samples per interpreter invocation.
        num_threads: the interpreter's threads (None: its default).

    Returns:
        A float32 numpy array (or a list, for several outputs); integer
        outputs are dequantized.
    """
    path = _check_existing_file(path)
    _check_int(batch_size, "batch_size", minimum=1)
    _check_num_threads(num_threads)
    _check_data_kind(x, "x")
    runner = _Runner(path=path, num_threads=num_threads)
    collected = []
    for inputs, _ in _iterate_batches(x, runner.input_specs(), "x", None):
        collected.append(runner.run(inputs, batch_size=batch_size))
    if not collected:
        raise ValueError("Argument `x` yielded no samples.")
    outputs = [np.concatenate(parts) for parts in zip(*collected)]
    return outputs[0] if len(outputs) == 1 else outputs


def read_metadata(path) -> dict:
    """The metadata table of a `.tflite` file, as `{name: bytes}`.

    Holds what `to_tflite(metadata=...)` stored, plus the converter's own
    entries (`min_runtime_version`, `CONVERSION_METADATA`).
    """
    path = _check_existing_file(path)
    with open(path, "rb") as f:
        content = f.read()
    schema = _schema()
    model = schema.Model.GetRootAsModel(content, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buffer = model.Buffers(entry.Buffer())
        entries[entry.Name().decode("utf-8")] = bytes(buffer.DataAsNumpy())
    return entries


# ----------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------


def _model_kind() -> str:
    return "a tf_keras model" if backend.LEGACY else "a Keras 3 model"


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        hint = ""
        if any(
            cls.__name__ == "Model"
            and cls.__module__.split(".")[0] in ("keras", "tf_keras")
            for cls in type(model).__mro__
        ):
            hint = (
                " It seems to come from the other Keras flavour: keras-kd "
                f"uses {backend.FLAVOUR} in this process (TF_USE_LEGACY_KERAS "
                f"{'=1' if backend.LEGACY else 'unset'})."
            )
        raise TypeError(
            f"Argument `model` must be {_model_kind()} (`keras.Model`). "
            f"Received: model={model!r} of type "
            f"{type(model).__module__}.{type(model).__name__}.{hint}"
        )
    if type(model).__name__ == "Distiller" and hasattr(model, "student"):
        raise ValueError(
            "Argument `model` is a `keras_kd.Distiller`, which holds the "
            f"teacher as well as the student. Received: model={model.name!r}. "
            "Expected the student: `to_tflite(distiller.student, ...)`."
        )
    if not model.built:
        raise ValueError(
            f"Argument `model` must be built (its weights created). Received: "
            f"model={model.name!r} with built=False. Call it once on a batch "
            "of inputs (or give it an `Input`) before exporting."
        )


def _check_path(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "Argument `path` must be a file path (str or os.PathLike). "
            f"Received: path={path!r} of type {type(path).__name__}."
        )
    path = os.fspath(path)
    if not path or os.path.isdir(path):
        raise ValueError(
            "Argument `path` must name a file to write, e.g. "
            f"'student.tflite'. Received: path={path!r}, a directory."
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            "Argument `path` must be in an existing directory. Received: "
            f"path={path!r}; the directory {directory!r} does not exist."
        )
    return path


def _check_existing_file(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "Argument `path` must be the path of a .tflite file. Received: "
            f"path={path!r} of type {type(path).__name__}."
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            "Argument `path` must be an existing .tflite file. Received: "
            f"path={path!r}, which does not exist."
        )
    return path


def _check_quantization(quantization):
    if quantization == "float32":
        return None
    if quantization is not None and not isinstance(quantization, str):
        raise TypeError(
            "Argument `quantization` must be None or a string, one of "
            f"{_quantization_names()}. Received: quantization={quantization!r} "
            f"of type {type(quantization).__name__}."
        )
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            "Argument `quantization` names no quantization mode. Received: "
            f"quantization={quantization!r}. Expected one of "
            f"{_quantization_names()}."
        )
    return quantization


def _quantization_names() -> str:
    return ", ".join(repr(q) for q in QUANTIZATIONS)


def _check_int(value, argument: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Argument `{argument}` must be an integer. Received: "
            f"{argument}={value!r} of type {type(value).__name__}."
        )
    if value < minimum:
        raise ValueError(
            f"Argument `{argument}` must be at least {minimum}. Received: "
            f"{argument}={value}."
        )


def _check_num_threads(num_threads) -> None:
    if num_threads is not None:
        _check_int(num_threads, "num_threads", minimum=1)


def _check_bool(value, argument: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Argument `{argument}` must be True or False. Received: "
            f"{argument}={value!r} of type {type(value).__name__}."
        )


def _check_metadata(metadata):
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            "Argument `metadata` must be a dict {name: str or bytes}. "
            f"Received: metadata={metadata!r} of type {type(metadata).__name__}."
        )
    entries = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not name:
            raise TypeError(
                "Argument `metadata` must have non-empty string keys. "
                f"Received key {name!r} of type {type(name).__name__}."
            )
        if name in _RESERVED_METADATA:
            raise ValueError(
                f"Argument `metadata` uses the name {name!r}, which the "
                f"converter reserves. Expected other names than "
                f"{', '.join(_RESERVED_METADATA)}."
            )
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(
                f"Argument `metadata` must map names to str or bytes. "
                f"Received: metadata[{name!r}]={value!r} of type "
                f"{type(value).__name__}."
            )
        entries[name] = bytes(value)
    return entries


def _check_converter_options(options):
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) for k in options
    ):
        raise TypeError(
            "Argument `converter_options` must be a dict of "
            "`tf.lite.TFLiteConverter` attribute names to values. Received: "
            f"converter_options={options!r}."
        )
    managed = {
        "optimizations", "representative_dataset", "inference_input_type",
        "inference_output_type",
    }
    clash = sorted(managed & set(options))
    if clash:
        raise ValueError(
            f"Argument `converter_options` sets {clash}, which `quantization` "
            "and `representative_data` control. Received: "
            f"converter_options={dict(options)!r}. Expected other converter "
            "attributes (e.g. experimental_new_quantizer)."
        )
    return dict(options)


_IN_MEMORY = (np.ndarray, list, tuple, dict)


def _is_tensor(value) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable)) or tf.is_tensor(value)


def _is_stream(data) -> bool:
    """Whether `data` yields batches (as opposed to holding all samples)."""
    if isinstance(data, tf.data.Dataset):
        return True
    if isinstance(data, _IN_MEMORY) or _is_tensor(data):
        return False
    return hasattr(data, "__iter__") or hasattr(data, "__getitem__")


def _check_data_kind(data, argument: str) -> None:
    if data is None:
        return
    if not isinstance(data, (str, bytes)) and (
        isinstance(data, _IN_MEMORY) or _is_tensor(data) or _is_stream(data)
    ):
        return
    raise TypeError(
        f"Argument `{argument}` must be samples like those `fit` takes: a "
        "numpy array, a tuple (x, y) of arrays, a tf.data.Dataset (or tfds "
        f"dataset), a generator or PyDataset. Received: {argument} of type "
        f"{type(data).__module__}.{type(data).__name__}."
    )


# ----------------------------------------------------------------------
# Model structure
# ----------------------------------------------------------------------


def _all_layers(model):
    seen = []
    stack = list(getattr(model, "layers", []) or [])
    while stack:
        layer = stack.pop()
        seen.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
        inner = getattr(layer, "layer", None)
        if inner is not None:
            stack.append(inner)
    return seen


def _layers_named(model, class_names):
    return [
        layer.name
        for layer in _all_layers(model)
        if type(layer).__name__ in class_names
    ]


def _float32_model(model):
    """`(model to convert, note)`: a float32 copy of a mixed-precision model.

    LiteRT has no float16 kernels for a model's own float16 computation
    (its float16 mode stores weights only), so a model built under
    `mixed_float16` / `mixed_bfloat16` is converted from a copy computing in
    float32, with the same weights.
    """
    mixed = sorted({
        str(layer.compute_dtype)
        for layer in _all_layers(model)
        if getattr(layer, "compute_dtype", None) not in (None, "float32")
        and tf.as_dtype(layer.compute_dtype).is_floating
        and tf.as_dtype(layer.compute_dtype) != tf.float32
    })
    if not mixed:
        return model, None
    graph = isinstance(model, keras.Sequential) or getattr(
        model, "_is_graph_network", False
    ) or type(model).__name__ == "Functional"
    if not graph:
        raise ValueError(
            f"Argument `model` computes in {', '.join(mixed)} (a mixed "
            "precision policy), which LiteRT cannot run, and as a subclassed "
            f"model ({type(model).__name__}) it cannot be copied to float32 "
            "here. Build the same model under "
            "keras.mixed_precision.set_global_policy('float32'), copy the "
            "weights with `set_weights(model.get_weights())`, and export that."
        )

    def float32_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    return copy, (
        f"The model computes in {', '.join(mixed)}; the file was converted "
        "from a float32 copy with the same weights, and compared with the "
        "model as it is."
    )


def _input_specs(model, input_signature, data_sources):
    """One `tf.TensorSpec` per flat input (dynamic batch) and the structure.

    Returns `(specs, structure)` where `structure` packs the flat list of
    inputs back into what `model` is called with.
    """
    if input_signature is not None:
        flat = tf.nest.flatten(input_signature)
        if not flat or not all(isinstance(s, tf.TensorSpec) for s in flat):
            raise TypeError(
                "Argument `input_signature` must be a `tf.TensorSpec` or a "
                "list of them, one per model input. Received: "
                f"input_signature={input_signature!r}."
            )
        structure = input_signature
    else:
        structure = _model_input_structure(model)
        if structure is None:
            structure = _spec_from_data(model, data_sources)
        flat = tf.nest.flatten(structure)
    specs = []
    for i, spec in enumerate(flat):
        shape = tuple(spec.shape)
        if not shape:
            raise ValueError(
                f"Input {i} of the model has no batch dimension (shape ()). "
                "Expected inputs of shape (batch, ...)."
            )
        dtype = tf.as_dtype(spec.dtype)
        specs.append(
            tf.TensorSpec((None,) + shape[1:], dtype, name=f"input_{i}")
        )
    return specs, structure


def _model_input_structure(model):
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if structure is None:
        try:
            inputs = model.inputs  # a Keras 3 Sequential has only these
        except (AttributeError, ValueError):
            inputs = None
        if inputs:
            structure = inputs[0] if len(inputs) == 1 else list(inputs)
    if structure is not None:
        return tf.nest.map_structure(
            lambda t: tf.TensorSpec(tuple(t.shape), t.dtype), structure
        )
    save_spec = getattr(model, "save_spec", None)  # tf_keras, after a call
    if callable(save_spec):
        try:
            spec = save_spec(dynamic_batch=True)
        except (TypeError, ValueError):
            spec = None
        if spec:
            args, _ = spec
            if len(args) == 1:
                return args[0]
    return None


def _spec_from_data(model, data_sources):
    """The spec of a single input, read from the first data given.

    Arrays and tuples hold samples along their first axis; generators and
    `PyDataset`s yield batches, as in `fit`; a `tf.data.Dataset` is batched
    when its first dimension is unknown.
    """
    for data in data_sources:
        if data is None:
            continue
        if isinstance(data, tf.data.Dataset):
            flat = tf.nest.flatten(_x_of(data.element_spec))
            if len(flat) != 1 or not flat[0].shape.rank:
                break
            shape, dtype = tuple(flat[0].shape), flat[0].dtype
            if shape[0] is None:
                shape = shape[1:]
        else:
            if _is_stream(data):
                x = _x_of(next(iter(_stream(data)), None))
            else:
                x = _x_of(data)
            flat = tf.nest.flatten(x)
            if len(flat) != 1:
                break
            array = np.asarray(_to_numpy(flat[0]))
            if array.ndim < 1:
                break
            shape, dtype = array.shape[1:], array.dtype
        dtype = tf.as_dtype(dtype)
        if not dtype.is_floating or dtype == tf.float64:
            dtype = tf.float32
        return tf.TensorSpec((None,) + tuple(shape), dtype)
    raise ValueError(
        f"Cannot tell the inputs of model {model.name!r} (a subclassed model "
        "that records no input shapes). Pass "
        "`input_signature=tf.TensorSpec((None, ...), tf.float32)`, or "
        "`representative_data` / `verify_data` to read them from."
    )


# ----------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------


def _x_of(element):
    """The inputs of one element, following `fit`: a tuple is (x, y, w)."""
    if isinstance(element, tuple):
        return element[0] if element else None
    return element


def _y_of(element):
    if isinstance(element, tuple) and len(element) > 1:
        return element[1]
    return None


def _stream(data):
    """The elements of a stream of batches, as numpy values."""
    if isinstance(data, tf.data.Dataset):
        for element in data:
            yield tf.nest.map_structure(_to_numpy, element)
    elif _is_indexed(data):
        for i in range(len(data)):
            yield data[i]
    else:
        yield from data


def _is_indexed(data) -> bool:
    """A `keras.utils.PyDataset` / `Sequence`: batches by index, a length."""
    names = {cls.__name__ for cls in type(data).__mro__}
    return bool(names & {"PyDataset", "Sequence"}) and hasattr(data, "__len__")


class _Batches:
    """Batches drawn once from a one-shot iterator, to be read again."""

    def __init__(self, elements):
        self.elements = elements

    def __iter__(self):
        return iter(self.elements)


def _replayable(data, limit):
    """`data`, or, for a one-shot iterator, its first batches kept in memory.

    A generator can be read only once; calibration, verification and the
    input shapes all read the data, so its first `limit` samples are kept.
    """
    if data is None or not _is_stream(data) or isinstance(data, tf.data.Dataset):
        return data
    if _is_indexed(data) or iter(data) is not data:
        return data
    elements, seen = [], 0
    for element in data:
        elements.append(element)
        x = tf.nest.flatten(_x_of(element))
        seen += len(x[0]) if x and np.ndim(x[0]) else 1
        if seen >= limit:
            break
    return _Batches(elements)


def _to_numpy(value):
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def _flat_inputs(x, specs, argument):
    """The arrays of `x`, one per spec, each with a batch dimension."""
    if isinstance(x, Mapping):
        names = [s.name for s in specs]
        flat = tf.nest.flatten(x)
        if len(x) != len(specs):
            raise ValueError(
                f"Argument `{argument}` yields dicts with keys "
                f"{sorted(x)}, which do not match the model's "
                f"{len(specs)} input(s). For a tfds dataset, load it with "
                "as_supervised=True so that it yields (x, y) tuples."
                if len(specs) == 1
                else f"Argument `{argument}` yields dicts with keys "
                f"{sorted(x)}; expected {len(specs)} inputs ({names})."
            )
    else:
        flat = tf.nest.flatten(x)
    if len(flat) != len(specs):
        raise ValueError(
            f"Argument `{argument}` yields {len(flat)} input array(s); the "
            f"model has {len(specs)} input(s) of shapes "
            f"{[tuple(s.shape) for s in specs]}."
        )
    arrays = []
    for value, spec in zip(flat, specs):
        array = np.asarray(_to_numpy(value))
        rank = spec.shape.rank
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank or not _shape_fits(array.shape, spec.shape):
            raise ValueError(
                f"Argument `{argument}` has samples of shape "
                f"{array.shape[1:] if array.ndim == rank else array.shape}; "
                f"the model expects inputs of shape {tuple(spec.shape)[1:]} "
                "(after the batch dimension)."
            )
        arrays.append(array.astype(spec.dtype.as_numpy_dtype, copy=False))
    return arrays


def _shape_fits(shape, spec_shape) -> bool:
    return all(
        s is None or s == d for s, d in zip(tuple(spec_shape)[1:], shape[1:])
    )


def _iterate_batches(data, specs, argument, limit, with_labels=False):
    """Yields `(inputs, labels)` batches of `data`, at most `limit` samples."""
    seen = 0
    if isinstance(data, tf.data.Dataset):
        x_spec = tf.nest.flatten(_x_of(data.element_spec))
        if x_spec and x_spec[0].shape.rank == specs[0].shape.rank - 1:
            data = data.batch(_VERIFY_BATCH)  # single samples: batch them
    elements = _stream(data) if _is_stream(data) else [data]
    for element in elements:
        if isinstance(element, tuple) and not element:
            continue
        inputs = _flat_inputs(_x_of(element), specs, argument)
        labels = _y_of(element) if with_labels else None
        if labels is not None:
            labels = np.asarray(_to_numpy(labels))
            if labels.ndim == 0:
                labels = labels[None]
        n = len(inputs[0])
        if limit is not None and seen + n > limit:
            keep = limit - seen
            inputs = [a[:keep] for a in inputs]
            labels = None if labels is None else labels[:keep]
            n = keep
        if n:
            yield inputs, labels
        seen += n
        if limit is not None and seen >= limit:
            return


def _collect_inputs(data, specs, limit, argument):
    parts = [inputs for inputs, _ in _iterate_batches(data, specs, argument, limit)]
    if not parts:
        raise ValueError(
            f"Argument `{argument}` yielded no samples. Expected at least one."
        )
    return [np.concatenate(arrays) for arrays in zip(*parts)]


# ----------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------


def _serving_fn(model, structure, specs):
    def serve(*inputs):
        packed = tf.nest.pack_sequence_as(structure, list(inputs))
        outputs = tf.nest.flatten(model(packed, training=False))
        result = {}
        for i, output in enumerate(outputs):
            if output.dtype.is_floating and output.dtype != tf.float32:
                output = tf.cast(output, tf.float32)  # mixed precision
            result[f"output_{i}"] = output
        return result

    return serve


def _save_serving_model(model, structure, specs, directory):
    serve = _serving_fn(model, structure, specs)
    if backend.LEGACY:
        module = tf.Module()
        module.model_variables = list(model.variables)
        function = tf.function(serve, input_signature=specs, autograph=False)
        module.serve = function
        tf.saved_model.save(
            module,
            directory,
            signatures={"serving_default": function.get_concrete_function()},
        )
    else:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve, input_signature=specs)
        archive.write_out(directory, verbose=False)


def _make_converter(saved_model_dir):
    """The converter (a function of its own so tests can make it fail)."""
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)


def _convert(model, specs, structure, quantization, calibration,
             select_tf_ops, converter_options) -> bytes:
    with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as directory:
        _save_serving_model(model, structure, specs, directory)
        converter = _make_converter(directory)
        _configure(converter, quantization, calibration, specs, select_tf_ops)
        for name, value in converter_options.items():
            if not hasattr(converter, name):
                raise ValueError(
                    "Argument `converter_options` names an attribute that "
                    f"`tf.lite.TFLiteConverter` does not have: {name!r}."
                )
            setattr(converter, name, value)
        try:
            with warnings.catch_warnings():
                # The converter's calibrator uses the deprecated
                # tf.lite.Interpreter, and warns about int8 inputs it handles.
                warnings.filterwarnings(
                    "ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated"
                )
                warnings.filterwarnings(
                    "ignore", message="Statistics for quantized inputs"
                )
                content = converter.convert()
        except Exception as e:  # the converter raises many kinds
            raise RuntimeError(_conversion_message(model, quantization, e,
                                                   select_tf_ops)) from e
    if not content:
        raise RuntimeError(
            f"Converting model {model.name!r} to TFLite returned no bytes."
        )
    return bytes(content)


def _configure(converter, quantization, calibration, specs, select_tf_ops):
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in _FULL_INTEGER and calibration is not None:
        # Integer kernels only; the calibration fills in the ranges that a
        # quantization-aware model (if partly annotated) does not carry.
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = _representative_dataset(
            calibration, specs
        )
    # A quantization-aware model without calibration data: the converter
    # takes every range from its fake-quantization nodes.
    if quantization == "int8_io":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops


def _representative_dataset(calibration, specs):
    n = len(calibration[0])
    names = [s.name for s in specs]

    def generate():
        for i in range(n):
            yield {name: array[i : i + 1] for name, array in zip(names, calibration)}

    return generate


def _conversion_message(model, quantization, error, select_tf_ops) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    summary = "\n".join(lines[-12:]) if lines else type(error).__name__
    hint = ""
    if "TF Select" in text and not select_tf_ops:
        hint = (
            " Some operations have no LiteRT builtin kernel: pass "
            "select_tf_ops=True to keep them as TensorFlow ops (the app then "
            "needs the select-TF-ops library)."
        )
    return (
        f"Converting model {model.name!r} to TFLite "
        f"(quantization={quantization!r}) failed; nothing was written.{hint}\n"
        f"Converter error: {summary}"
    )


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _add_metadata(content: bytes, metadata: dict) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    if model.metadata is None:
        model.metadata = []
    if model.buffers is None:
        model.buffers = []
    for name, value in metadata.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value, dtype=np.uint8).copy()
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _flex_ops(content: bytes):
    schema = _schema()
    model = schema.Model.GetRootAsModel(content, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i).CustomCode()
        if code and code.startswith(b"Flex"):
            names.add(code.decode("utf-8")[len("Flex"):])
    return sorted(names)


def _write_atomically(content: bytes, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# ----------------------------------------------------------------------
# Interpreter
# ----------------------------------------------------------------------


def _interpreter_class():
    """`(class, name, note)`: LiteRT's interpreter, else tf.lite's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return (
            tf.lite.Interpreter,
            "tf.lite",
            "ai-edge-litert is not installed, so the file was checked with "
            "the deprecated tf.lite.Interpreter; install it with "
            "`pip install keras-kd[litert]`.",
        )
    return Interpreter, "ai_edge_litert", None


class _Runner:
    """Runs a `.tflite` model on float inputs, returning float outputs."""

    def __init__(self, path=None, content=None, num_threads=None):
        cls, self.name, self.note = _interpreter_class()
        kwargs = {"num_threads": num_threads} if num_threads else {}
        with warnings.catch_warnings():
            # The fallback is deprecated; the report's note says so.
            warnings.filterwarnings(
                "ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated"
            )
            if content is not None:
                self.interpreter = cls(model_content=content, **kwargs)
            else:
                self.interpreter = cls(model_path=os.fspath(path), **kwargs)
        self.interpreter.allocate_tensors()
        self.inputs, self.outputs = self._details()
        self._shapes = None

    def _details(self):
        signatures = self.interpreter.get_signature_list()
        if len(signatures) == 1:
            key = next(iter(signatures))
            runner = self.interpreter.get_signature_runner(key)
            ins = runner.get_input_details()
            outs = runner.get_output_details()
            return (
                [ins[k] for k in sorted(ins, key=_natural_key)],
                [outs[k] for k in sorted(outs, key=_natural_key)],
            )
        return (
            self.interpreter.get_input_details(),
            self.interpreter.get_output_details(),
        )

    def input_specs(self):
        specs = []
        for i, detail in enumerate(self.inputs):
            shape = tuple(
                None if d < 0 else int(d) for d in detail["shape_signature"]
            )
            shape = (None,) + shape[1:]
            dtype = detail["dtype"]
            if _quantization(detail) is not None:
                dtype = np.float32
            specs.append(tf.TensorSpec(shape, dtype, name=f"input_{i}"))
        return specs

    def dtypes(self):
        return (
            [np.dtype(d["dtype"]).name for d in self.inputs],
            [np.dtype(d["dtype"]).name for d in self.outputs],
        )

    def _resize(self, shapes):
        if shapes == self._shapes:
            return
        for detail, shape in zip(self.inputs, shapes):
            self.interpreter.resize_tensor_input(detail["index"], list(shape))
        self.interpreter.allocate_tensors()
        self._shapes = shapes

    def set_inputs(self, arrays):
        self._resize([tuple(a.shape) for a in arrays])
        for detail, array in zip(self.inputs, arrays):
            self.interpreter.set_tensor(detail["index"], _quantize(array, detail))

    def outputs_now(self):
        return [
            _dequantize(self.interpreter.get_tensor(d["index"]), d)
            for d in self.outputs
        ]

    def run(self, arrays, batch_size=_VERIFY_BATCH):
        n = len(arrays[0])
        parts = []
        for start in range(0, n, batch_size):
            self.set_inputs([a[start : start + batch_size] for a in arrays])
            self.interpreter.invoke()
            parts.append(self.outputs_now())
        return [np.concatenate(p) for p in zip(*parts)]

    def latency_ms(self, arrays, runs):
        self.set_inputs([a[:1] for a in arrays])
        for _ in range(min(5, runs)):
            self.interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append(time.perf_counter() - start)
        return 1000.0 * float(np.median(times))


def _natural_key(name):
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _quantization(detail):
    """`(scale, zero_point)` of an integer tensor, or None."""
    if np.dtype(detail["dtype"]).kind not in "iu":
        return None
    scale, zero_point = detail["quantization"]
    if not scale:
        return None
    return float(scale), int(zero_point)


def _quantize(array, detail):
    dtype = np.dtype(detail["dtype"])
    params = _quantization(detail)
    if params is None:
        return np.ascontiguousarray(array, dtype=dtype)
    scale, zero_point = params
    info = np.iinfo(dtype)
    q = np.round(np.asarray(array, np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(array, detail):
    params = _quantization(detail)
    if params is None:
        return np.asarray(array).copy()
    scale, zero_point = params
    return (array.astype(np.float32) - zero_point) * scale


def _top1(outputs, what):
    outputs = np.asarray(outputs)
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        raise ValueError(
            f"Top-1 accuracy needs a classifier: {what} has shape "
            f"{outputs.shape}, expected (batch, num_classes) with "
            "num_classes >= 2."
        )
    return outputs.argmax(-1)


def _keras_outputs(model, structure, arrays, batch_size=_VERIFY_BATCH):
    n = len(arrays[0])
    parts = []
    for start in range(0, n, batch_size):
        batch = [tf.constant(a[start : start + batch_size]) for a in arrays]
        packed = tf.nest.pack_sequence_as(structure, batch)
        outputs = tf.nest.flatten(model(packed, training=False))
        parts.append([np.asarray(o, np.float32) for o in outputs])
    return [np.concatenate(p) for p in zip(*parts)]


def _verify(report, model, content, structure, specs, verification,
            latency_runs, num_threads):
    runner = _Runner(content=content, num_threads=num_threads)
    report.interpreter = runner.name
    report.input_dtypes, report.output_dtypes = runner.dtypes()
    if runner.note:
        report.notes.append(runner.note)
    if verification is None:
        report.notes.append(
            "No verify_data or representative_data: the file was run on "
            "random inputs for latency only, not compared with the model."
        )
        rng = np.random.default_rng(0)
        sample = [
            rng.normal(size=(1,) + tuple(s.shape)[1:]).astype(
                s.dtype.as_numpy_dtype
            )
            for s in specs
        ]
        runner.run(sample)
    else:
        expected = _keras_outputs(model, structure, verification)
        actual = runner.run(verification)
        if len(expected) != len(actual):
            raise RuntimeError(
                f"The file has {len(actual)} outputs and the Keras model "
                f"{len(expected)}; the conversion lost outputs."
            )
        report.num_verify_samples = int(len(verification[0]))
        report.max_abs_diff = float(
            max(np.max(np.abs(e - a.reshape(e.shape))) for e, a in
                zip(expected, actual))
        )
        scale = max(float(np.max(np.abs(e))) for e in expected)
        report.max_rel_diff = report.max_abs_diff / max(scale, 1e-30)
        first = expected[0]
        if first.ndim >= 2 and first.shape[-1] >= 2:
            report.top1_agreement = float(
                np.mean(first.argmax(-1) == actual[0].reshape(first.shape).argmax(-1))
            )
        if len(expected) > 1:
            report.notes.append(
                "top1_agreement is measured on the first output; "
                "max_abs_diff on all outputs."
            )
        sample = verification
    if latency_runs:
        report.latency_ms = runner.latency_ms(sample, latency_runs)


__all__ = [
    "ExportReport",
    "QUANTIZATIONS",
    "evaluate_tflite",
    "predict_tflite",
    "read_metadata",
    "to_tflite",
]
