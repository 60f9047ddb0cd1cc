"""`to_tflite`: a Keras model to a verified `.tflite` (LiteRT) file.

The steps, each in its own module: the arguments are checked (`_checks`),
the data is read the way `fit` reads it (`keras_kd._batches`), the model is
converted (`_convert`), the file is run in the interpreter and compared with
the model (`_verify`), and only then written, atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keras_kd._batches import check_data_kind, collect_inputs, input_specs, replayable
from keras_kd._utils import check_bool, check_int, write_atomically
from keras_kd.export._checks import (
    FULL_INTEGER,
    QUANTIZATIONS,
    check_converter_options,
    check_export_model,
    check_labels,
    check_metadata,
    check_normalization,
    check_num_threads,
    check_path,
    check_quantization,
)
from keras_kd.export._convert import (
    PRUNING_LAYERS,
    QAT_LAYERS,
    add_metadata,
    convert,
    float32_model,
    layers_named,
)
from keras_kd.export._metadata import attach, describe
from keras_kd.export._verify import verify as verify_file
from keras_kd.export.latency import check_threads
from keras_kd.export.report import ExportReport


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
    latency_threads=None,
    select_tf_ops: bool = False,
    metadata: Mapping[str, str | bytes] | None = None,
    labels=None,
    normalization=None,
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
        latency_runs: single-sample invocations timed per thread count,
            after 10 untimed ones, for `latency` (0 to skip).
        num_threads: threads of the interpreter used for verification
            (None: the interpreter's default, one).
        latency_threads: the thread counts at which latency is measured,
            each with an interpreter of its own (batch 1, XNNPACK, the
            median and 90th percentile): an int or a sequence of ints.
            None: `num_threads` (or 1) and 4, as a phone app runs on one
            or four threads. `latency_ms` and `latency_p90_ms` are at the
            first.
        select_tf_ops: allow TensorFlow ops that have no LiteRT builtin
            kernel (the app must then link the select-TF-ops library). The
            Python LiteRT interpreter cannot run such files, so they are not
            verified (the report says so).
        metadata: entries `{name: str or bytes}` stored in the file's
            metadata table (e.g. `{"labels": "cat\\ndog"}`); read them back
            with `read_metadata`.
        labels: the class names of an image classifier, in class order: a
            list of strings, or the path of a text file with one per line.
            With `normalization`, the file gets the standard TFLite
            metadata that MediaPipe Tasks and the Task Library read (the
            image input's colour space and normalization, the output as
            class scores with a `labels.txt` file zipped into the file), so
            a phone app loads it as it is. Needs one image input
            `(batch, height, width, 3 or 1)` and one `(batch, classes)`
            output with as many classes as labels.
        normalization: `(mean, std)`, each a number or one per channel,
            such that the model's input is `(pixel - mean) / std` for
            pixels in [0, 255]: `(127.5, 127.5)` for inputs in [-1, 1],
            `(0, 255)` for [0, 1], `(0, 1)` for a model that rescales raw
            pixels itself. Required with `labels`; alone, it writes the
            metadata without a label file.
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
    # Everything is checked before anything is read or converted.
    check_export_model(model)
    path = check_path(path)
    quantization = check_quantization(quantization)
    check_int(num_calibration_samples, "num_calibration_samples", 1, "samples")
    check_int(num_verify_samples, "num_verify_samples", 1, "samples")
    check_int(latency_runs, "latency_runs", 0, "timed invocations")
    check_num_threads(num_threads)
    if latency_threads is None:
        latency_threads = (num_threads or 1, 4)
    latency_threads = check_threads(latency_threads, "latency_threads")
    check_bool(select_tf_ops, "select_tf_ops")
    verify = check_bool(verify, "verify")
    metadata = check_metadata(metadata)
    labels, normalization = check_labels(labels), check_normalization(normalization)
    if labels is not None and normalization is None:
        describe(model, [], labels, normalization, quantization)  # raises
    converter_options = check_converter_options(converter_options)
    check_data_kind(representative_data, "representative_data")
    check_data_kind(verify_data, "verify_data")
    _check_convertible(model, quantization, representative_data)

    specs, structure, calibration, verification = _read_samples(
        model,
        input_signature,
        quantization,
        representative_data,
        verify_data,
        num_calibration_samples,
        num_verify_samples,
        verify,
    )
    image = describe(model, specs, labels, normalization, quantization)
    convertible, mixed_note = float32_model(model)
    content = convert(
        convertible,
        specs,
        structure,
        quantization,
        calibration,
        select_tf_ops,
        converter_options,
    )
    content = _with_metadata(content, metadata, image)
    report = ExportReport(
        path=path,
        size_bytes=len(content),
        num_params=int(model.count_params()),
        quantization=quantization or "float32",
    )
    report.mediapipe_ready, phone_note = _phone_status(image, specs)
    report.notes.extend(note for note in (mixed_note, phone_note) if note)
    if verify:
        verify_file(
            report,
            model,
            content,
            structure,
            specs,
            verification,
            latency_runs,
            num_threads,
            latency_threads,
        )
    write_atomically(path, content)  # only once verified
    return report


def _with_metadata(content: bytes, metadata: dict, image) -> bytes:
    """`content` with the custom `metadata` entries, then the standard
    image-classifier metadata (last: it appends the label file as a zip)."""
    if metadata:
        content = add_metadata(content, metadata)
    if image is not None:
        content = attach(content, image)
    return content


def _phone_status(image, specs):
    """`(mediapipe_ready, note)`: whether a MediaPipe `ImageClassifier` can
    load the file as it is, judged from its metadata and tensor types, and
    a note for an image model that it cannot load."""
    if image is None:
        shape = tuple(specs[0].shape) if len(specs) == 1 else ()
        if len(shape) != 4 or shape[-1] not in (1, 3):
            return False, None  # not an image model: nothing to say
        return False, (
            "no standard metadata: MediaPipe's ImageClassifier (and the Task "
            "Library) will not load this file, since a float image input "
            "needs NormalizationOptions; pass labels= and normalization= "
            "to write them"
        )
    if image.integer_input:
        return False, (
            "int8_io: MediaPipe's ImageClassifier takes uint8 or float32 "
            'input tensors, not int8; quantization="int8" keeps the '
            "integer kernels with a float input and output"
        )
    if image.channels == 1:
        return False, (
            "grayscale input: MediaPipe's ImageClassifier loads RGB models "
            "only (it says 'Only RGB color space is supported'); the metadata "
            "is written for readers that take grayscale, such as the Task "
            "Library"
        )
    if image.labels is None:
        return True, (
            "no labels: MediaPipe reports class indices without names; "
            "pass labels= to name them"
        )
    return True, None


def _check_convertible(model, quantization, representative_data) -> None:
    """Raises for a model that still holds pruning wrappers, or a
    full-integer mode without calibration data (a quantization-aware model
    carries its own ranges)."""
    pruning = layers_named(model, PRUNING_LAYERS)
    if pruning:
        raise ValueError(
            "Argument `model` still holds pruning wrappers "
            f"({', '.join(pruning[:3])}{'...' if len(pruning) > 3 else ''}), "
            "which would be exported as extra mask operations. Expected a "
            "stripped model: call `keras_kd.optimize.strip(model)` first."
        )
    if quantization not in FULL_INTEGER or representative_data is not None:
        return
    if layers_named(model, QAT_LAYERS):  # quantization-aware: its own ranges
        return
    raise ValueError(
        "Argument `representative_data` is required for quantization="
        f'"{quantization}": full-integer quantization calibrates the '
        "activation ranges on real inputs. Received: "
        "representative_data=None. Expected samples like those `fit` "
        "takes, e.g. representative_data=x_train or a tf.data.Dataset "
        '(or use quantization="dynamic", which needs no data).'
    )


def _read_samples(
    model,
    input_signature,
    quantization,
    representative_data,
    verify_data,
    num_calibration_samples: int,
    num_verify_samples: int,
    verify: bool,
):
    """`(specs, structure, calibration, verification)`: the model's input
    specs and structure, and the inputs (one array per spec, or None) to
    calibrate on (the full-integer modes) and to compare the file on
    (with `verify`: `verify_data`'s, else `representative_data`'s), read
    the way `fit` reads data."""
    representative_data = replayable(
        representative_data, max(num_calibration_samples, num_verify_samples)
    )
    verify_data = replayable(verify_data, num_verify_samples)
    specs, structure = input_specs(
        model, input_signature, [representative_data, verify_data]
    )
    calibration = None
    if quantization in FULL_INTEGER and representative_data is not None:
        calibration = collect_inputs(
            representative_data, specs, num_calibration_samples, "representative_data"
        )
    source, argument = verify_data, "verify_data"
    if source is None:
        source, argument = representative_data, "representative_data"
    verification = None
    if verify and source is not None:
        verification = collect_inputs(source, specs, num_verify_samples, argument)
    return specs, structure, calibration, verification


__all__ = ["QUANTIZATIONS", "to_tflite"]
