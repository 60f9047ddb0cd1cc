"""Argument checks of the export functions, run before anything converts.

The general checks (integers, booleans, the model's flavour) are the ones in
`keras_kd._utils`; the ones here know about files, quantization modes,
metadata and converter options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from keras_kd._utils import check_int, check_model, check_number

# The `quantization` modes of `to_tflite`; None is float32.
QUANTIZATIONS = (None, "float16", "dynamic", "int8", "int8_io")
# Modes whose activations are integers, calibrated on representative data.
FULL_INTEGER = ("int8", "int8_io")
# Metadata names the converter writes itself.
RESERVED_METADATA = ("min_runtime_version", "CONVERSION_METADATA", "TFLITE_METADATA")
# Converter attributes that `quantization` and `representative_data` set.
MANAGED_CONVERTER_OPTIONS = (
    "optimizations",
    "representative_dataset",
    "inference_input_type",
    "inference_output_type",
)


def check_export_model(model) -> None:
    """A built Keras model of this flavour, and not a whole `Distiller`."""
    check_model(model, "model")
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


def _fspath(path, expected: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"Argument `path` must be {expected}. Received: path={path!r} of "
            f"type {type(path).__name__}."
        )
    return os.fspath(path)


def check_path(path) -> str:
    """A file to write, in an existing directory, as a str."""
    path = _fspath(path, "a file path (str or os.PathLike)")
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


def check_existing_file(path) -> str:
    """An existing `.tflite` file, as a str."""
    path = _fspath(path, "the path of a .tflite file")
    if not os.path.isfile(path):
        raise ValueError(
            "Argument `path` must be an existing .tflite file. Received: "
            f"path={path!r}, which does not exist."
        )
    return path


def _quantization_names() -> str:
    return ", ".join(repr(q) for q in QUANTIZATIONS)


def check_quantization(quantization):
    """One of `QUANTIZATIONS` (`"float32"` is read as None)."""
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


def check_num_threads(num_threads) -> None:
    """None (the interpreter's default) or a positive integer."""
    if num_threads is not None:
        check_int(num_threads, "num_threads", minimum=1, what="interpreter threads")


def check_metadata(metadata) -> dict:
    """`{name: bytes}` from `{name: str or bytes}` (None gives `{}`)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            "Argument `metadata` must be a dict {name: str or bytes}. "
            f"Received: metadata={metadata!r} of type {type(metadata).__name__}."
        )
    entries = {}
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise TypeError(
                "Argument `metadata` must have non-empty string keys. "
                f"Received key {name!r} of type {type(name).__name__}."
            )
        if not name:
            raise ValueError(
                "Argument `metadata` must have non-empty string keys. "
                "Received the key ''."
            )
        if name in RESERVED_METADATA:
            raise ValueError(
                f"Argument `metadata` uses the name {name!r}, which the "
                f"converter reserves. Expected other names than "
                f"{', '.join(RESERVED_METADATA)}."
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


def check_converter_options(options) -> dict:
    """Further converter attributes, none of those `to_tflite` manages."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(
            "Argument `converter_options` must be a dict of "
            "`tf.lite.TFLiteConverter` attribute names to values. Received: "
            f"converter_options={options!r}."
        )
    clash = sorted(set(MANAGED_CONVERTER_OPTIONS) & set(options))
    if clash:
        raise ValueError(
            f"Argument `converter_options` sets {clash}, which `quantization` "
            "and `representative_data` control. Received: "
            f"converter_options={dict(options)!r}. Expected other converter "
            "attributes (e.g. experimental_new_quantizer)."
        )
    return dict(options)


def check_labels(labels) -> tuple | None:
    """Class names: a sequence of strings, or the path of a text file with
    one per line (blank lines at the end ignored)."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = os.fspath(labels)
        if not os.path.isfile(path):
            raise ValueError(
                "Argument `labels` names a file that does not exist. "
                f"Received: labels={path!r}. Expected a text file with one "
                "class name per line, or a list of names."
            )
        with open(path, encoding="utf-8") as f:
            labels = f.read().rstrip("\n").split("\n")
    elif not isinstance(labels, (list, tuple)):
        raise TypeError(
            "Argument `labels` must be a list of class names or the path of "
            f"a text file. Received: labels={labels!r} of type "
            f"{type(labels).__name__}."
        )
    labels = tuple(labels)
    for label in labels:
        if not isinstance(label, str) or not label or "\n" in label:
            raise ValueError(
                "Argument `labels` must hold non-empty strings without line "
                f"breaks, one per class. Received the label {label!r} in "
                f"labels={list(labels)!r}."
            )
    if len(labels) < 2:
        raise ValueError(
            "Argument `labels` must name at least 2 classes. Received: "
            f"labels={list(labels)!r}."
        )
    return labels


def check_normalization(normalization) -> tuple | None:
    """`(mean, std)`, each a number or a sequence of per-channel numbers,
    as a pair of tuples; std > 0."""
    if normalization is None:
        return None
    expected = (
        "Expected (mean, std) such that the model's input is "
        "(pixel - mean) / std for pixels in [0, 255], each a number or one "
        "per channel: e.g. (127.5, 127.5) for inputs in [-1, 1], (0, 255) "
        "for [0, 1], (0, 1) for a model that rescales raw pixels itself."
    )
    if not isinstance(normalization, (list, tuple)) or len(normalization) != 2:
        raise ValueError(
            "Argument `normalization` must be a pair (mean, std). Received: "
            f"normalization={normalization!r}. {expected}"
        )
    pair = []
    for part, low in zip(normalization, (None, 0.0)):
        values = part if isinstance(part, (list, tuple)) else (part,)
        if not values:
            raise ValueError(
                f"Argument `normalization` has an empty part. Received: "
                f"normalization={normalization!r}. {expected}"
            )
        pair.append(
            tuple(
                check_number(v, "normalization", low=low, low_open=True, what="std > 0")
                if low is not None
                else check_number(v, "normalization")
                for v in values
            )
        )
    if any(v != v or abs(v) == float("inf") for v in pair[0] + pair[1]):
        raise ValueError(
            "Argument `normalization` must hold finite numbers. Received: "
            f"normalization={normalization!r}."
        )
    return tuple(pair)
