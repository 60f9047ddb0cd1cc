"""Parity of a converted file with the Keras model it came from.

The file is run in the LiteRT interpreter on the verification samples and
compared with the Keras model on the same samples: the largest absolute (and
relative) difference of the outputs, the top-1 agreement of classifiers, and
the interpreter's latency for one sample.
"""

from __future__ import annotations

import numpy as np

from keras_kd.backend import tf
from keras_kd.export._convert import flex_ops
from keras_kd.export._runner import BATCH_SIZE, Runner, interpreter_class

# Untimed invocations before the timed ones, as an app's first frames.
WARMUP_RUNS = 10


def keras_outputs(model, structure, arrays, batch_size: int = BATCH_SIZE) -> list:
    """The Keras model's float32 outputs (a list of arrays) on `arrays`."""
    n = len(arrays[0])
    parts = []
    for start in range(0, n, batch_size):
        batch = [tf.constant(a[start : start + batch_size]) for a in arrays]
        packed = tf.nest.pack_sequence_as(structure, batch)
        outputs = tf.nest.flatten(model(packed, training=False))
        parts.append([np.asarray(o, np.float32) for o in outputs])
    return [np.concatenate(p) for p in zip(*parts)]


def _random_inputs(specs) -> list:
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(1,) + tuple(s.shape)[1:]).astype(s.dtype.as_numpy_dtype)
        for s in specs
    ]


def verify(
    report,
    model,
    content: bytes,
    structure,
    specs,
    verification,
    latency_runs: int,
    num_threads,
    latency_threads=(1,),
) -> None:
    """Runs `content` and fills in `report`'s parity and latency fields.

    A file that uses TensorFlow select ops is not run (the Python LiteRT
    interpreter cannot): the report gets a note saying so instead.

    Args:
        report: the `ExportReport` to fill in.
        model: the Keras model the file came from.
        content: the `.tflite` bytes.
        structure: packs the flat inputs into what `model` is called with.
        specs: one `tf.TensorSpec` per flat input.
        verification: a list of arrays (one per input) to compare on, or
            None to run the file on random inputs (for latency only).
        latency_runs: invocations to time per thread count (0: none).
        num_threads: the interpreter's threads for the comparison (None:
            its default).
        latency_threads: the thread counts to time at, each with an
            interpreter of its own (batch 1, `WARMUP_RUNS` untimed runs).
    """
    select_ops = flex_ops(content)
    if select_ops:
        report.notes.append(
            "Not verified: the file uses TensorFlow select ops "
            f"({', '.join(select_ops)}), which the Python LiteRT interpreter "
            "cannot run; verify it on a runtime linked with the "
            "select-TF-ops library."
        )
        return
    try:
        runner = Runner(content=content, num_threads=num_threads)
    except RuntimeError as error:
        raise RuntimeError(_unprepared(content, error)) from error
    report.interpreter = runner.name
    report.input_dtypes, report.output_dtypes = runner.dtypes()
    if runner.note:
        report.notes.append(runner.note)
    if verification is None:
        report.notes.append(
            "No verify_data or representative_data: the file was run on "
            "random inputs for latency only, not compared with the model."
        )
        sample = _random_inputs(specs)
        runner.run(sample)
    else:
        expected = keras_outputs(model, structure, verification)
        actual = runner.run(verification)
        if len(expected) != len(actual):
            raise RuntimeError(
                f"The file has {len(actual)} outputs and the Keras model "
                f"{len(expected)}; the conversion lost outputs."
            )
        actual = [a.reshape(e.shape) for e, a in zip(expected, actual)]
        report.num_verify_samples = int(len(verification[0]))
        report.max_abs_diff = float(
            max(np.max(np.abs(e - a)) for e, a in zip(expected, actual))
        )
        scale = max(float(np.max(np.abs(e))) for e in expected)
        report.max_rel_diff = report.max_abs_diff / max(scale, 1e-30)
        first = expected[0]
        if first.ndim >= 2 and first.shape[-1] >= 2:
            report.top1_agreement = float(
                np.mean(first.argmax(-1) == actual[0].argmax(-1))
            )
        if len(expected) > 1:
            report.notes.append(
                "top1_agreement is measured on the first output; "
                "max_abs_diff on all outputs."
            )
        sample = verification
    if latency_runs:
        for threads in latency_threads:
            timed = runner
            if threads != (num_threads or 1):
                timed = Runner(content=content, num_threads=threads)
            median, p90 = timed.latency(sample, latency_runs, WARMUP_RUNS)
            report.latency.append(
                {"threads": threads, "median_ms": median, "p90_ms": p90}
            )
        lead = report.latency[0]
        report.latency_ms = lead["median_ms"]
        report.latency_p90_ms = lead["p90_ms"]


# A quantized tensor whose scale is below this was calibrated on a range that
# is (nearly) a single value: XNNPACK refuses to prepare such a file.
_DEGENERATE_SCALE = 1e-6


def _unprepared(content: bytes, error: Exception) -> str:
    """Why the interpreter could not prepare the file, with the tensors whose
    calibrated range is (nearly) constant named where there are any."""
    names = []
    try:
        cls = interpreter_class()[0]
        details = cls(model_content=content).get_tensor_details()
    except (RuntimeError, ValueError):
        details = []
    for detail in details:
        scales = detail.get("quantization_parameters", {}).get("scales")
        if scales is not None and len(scales) and np.min(scales) < _DEGENERATE_SCALE:
            names.append(detail["name"])
    message = f"The converted file does not prepare in the LiteRT interpreter: {error}"
    if names:
        message += (
            f" The quantized tensors {names} were calibrated on a range of "
            "(nearly) one value: the layer's output did not vary over "
            "`representative_data` (e.g. a ReLU that is never positive, as in "
            "an untrained or collapsed layer). Train the model, or give "
            "representative data that exercises every layer."
        )
    return message
