"""Using a `.tflite` file from Python: accuracy, predictions, metadata.

`evaluate_tflite` and `predict_tflite` run a file in the LiteRT interpreter
on data, quantizing inputs and dequantizing outputs of integer models with
the tensors' scale and zero point; `read_metadata` reads back the entries
given to `to_tflite(metadata=...)`. `TFLiteRunner` keeps one interpreter on
a file open for many calls (`run(arrays)`, `latency_ms(arrays, runs)`), as
`kd.report.compare` uses it.
"""

from __future__ import annotations

import numpy as np

from keras_kd._batches import check_data_kind, iterate_batches
from keras_kd._utils import check_int
from keras_kd.export._checks import check_existing_file, check_num_threads
from keras_kd.export._convert import metadata_entries
from keras_kd.export._metadata import FIELD_NAME, parse
from keras_kd.export._runner import BATCH_SIZE, Runner

# Public for other packages (kd.report): one interpreter on a file, kept open.
TFLiteRunner = Runner


def _top1(outputs, what):
    outputs = np.asarray(outputs)
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        raise ValueError(
            f"Top-1 accuracy needs a classifier: {what} has shape "
            f"{outputs.shape}, expected (batch, num_classes) with "
            "num_classes >= 2."
        )
    return outputs.argmax(-1)


def _open(path, data, argument: str, expected: str, batch_size, num_threads):
    """Checks the arguments both functions take, then opens the file."""
    path = check_existing_file(path)
    check_int(batch_size, "batch_size", minimum=1, what="samples per invocation")
    check_num_threads(num_threads)
    if data is None:
        raise ValueError(
            f"Argument `{argument}` is required. Received: {argument}=None. "
            f"Expected {expected}."
        )
    check_data_kind(data, argument)
    return Runner(path=path, num_threads=num_threads)


def evaluate_tflite(
    path,
    data,
    *,
    batch_size: int = BATCH_SIZE,
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
    if max_samples is not None:
        check_int(max_samples, "max_samples", minimum=1, what="samples")
    runner = _open(
        path,
        data,
        "data",
        "labelled samples, e.g. (x_test, y_test) or a tf.data.Dataset yielding (x, y)",
        batch_size,
        num_threads,
    )
    specs = runner.input_specs()
    correct, total = 0, 0
    for inputs, labels in iterate_batches(
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
    path, x, *, batch_size: int = BATCH_SIZE, num_threads: int | None = None
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

    Example:

    ```python
    logits = kd.export.predict_tflite("student.tflite", x_test)
    predicted = logits.argmax(-1)
    ```
    """
    runner = _open(
        path,
        x,
        "x",
        "inputs, e.g. x_test or a tf.data.Dataset",
        batch_size,
        num_threads,
    )
    collected = []
    for inputs, _ in iterate_batches(x, runner.input_specs(), "x", None):
        collected.append(runner.run(inputs, batch_size=batch_size))
    if not collected:
        raise ValueError("Argument `x` yielded no samples.")
    outputs = [np.concatenate(parts) for parts in zip(*collected)]
    return outputs[0] if len(outputs) == 1 else outputs


def read_metadata(path) -> dict:
    """The metadata table of a `.tflite` file, as `{name: bytes}`.

    Holds what `to_tflite(metadata=...)` stored, plus the converter's own
    entries (`min_runtime_version`, `CONVERSION_METADATA`). The standard
    metadata that `to_tflite(labels=..., normalization=...)` writes (or any
    other tool writing the TFLite metadata schema) comes parsed, under
    `"TFLITE_METADATA"`: a dict with the model's `name`, `description`,
    `version`, `author`, `min_parser_version`, its `inputs` and `outputs`
    (one dict per tensor: `name`, `description`, `color_space`, `mean`,
    `std`, `min`, `max`, `associated_files`, `labels`) and `labels` (the
    class names read from the label file zipped into the file).

    Args:
        path: a `.tflite` file.

    Returns:
        A dict from entry names to their bytes (to the parsed dict for
        `"TFLITE_METADATA"`).

    Example:

    ```python
    kd.export.to_tflite(student, "student.tflite",
                        metadata={"labels": "cat\\ndog"})
    labels = kd.export.read_metadata("student.tflite")["labels"].decode()

    kd.export.to_tflite(student, "phone.tflite", labels=["cat", "dog"],
                        normalization=(127.5, 127.5))
    kd.export.read_metadata("phone.tflite")["TFLITE_METADATA"]["labels"]
    # ['cat', 'dog']
    ```
    """
    path = check_existing_file(path)
    with open(path, "rb") as f:
        content = f.read()
    entries = metadata_entries(content)
    if FIELD_NAME in entries:
        entries[FIELD_NAME] = parse(entries[FIELD_NAME], content)
    return entries
