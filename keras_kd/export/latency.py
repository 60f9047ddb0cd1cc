"""Latency as a phone app sees it: `measure_latency`.

A phone app classifies one frame at a time, so the figure that matters is
the time of one invocation on a batch of 1, once the interpreter is warm,
and its spread: the median and the 90th percentile (a frame budget is
missed by the slow invocations, not the typical one). The interpreter is
LiteRT's (`ai_edge_litert`), whose default CPU path is the XNNPACK
delegate, the same as on Android and iOS; each thread count gets an
interpreter of its own. The figures are this machine's, not a phone's:
compare files with each other, on one machine, in one run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from keras_kd._utils import check_int
from keras_kd.export._runner import Runner

# The thread counts measured unless told otherwise: one (a background
# service, or a phone's small core) and four (an app's usual setting).
DEFAULT_THREADS = (1, 4)
DEFAULT_RUNS = 50
DEFAULT_WARMUP = 10


def check_threads(threads, name: str = "threads") -> tuple:
    """`threads` as a tuple of distinct ints >= 1 in the order given."""
    if isinstance(threads, bool) or not isinstance(threads, Sequence | int):
        raise TypeError(
            f"Argument `{name}` must be an int or a sequence of ints (thread "
            f"counts). Received: {name}={threads!r}"
        )
    values = (threads,) if isinstance(threads, int) else tuple(threads)
    if not values:
        raise ValueError(
            f"Argument `{name}` is empty. Expected at least one thread count, "
            "e.g. (1, 4)."
        )
    checked = []
    for value in values:
        check_int(value, name, 1, "threads")
        if value not in checked:
            checked.append(int(value))
    return tuple(checked)


def _inputs(runner: Runner, inputs) -> list:
    """One array per input of the file: `inputs` (an array or a list of
    arrays, at least one sample) or, when None, a random normal sample."""
    if inputs is None:
        rng = np.random.default_rng(0)
        return [
            rng.normal(size=(1,) + tuple(s.shape)[1:]).astype(s.dtype.as_numpy_dtype)
            for s in runner.input_specs()
        ]
    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    if len(arrays) != len(runner.inputs) or any(len(a) < 1 for a in arrays):
        raise ValueError(
            f"Argument `inputs` must hold one array per input of the file "
            f"({len(runner.inputs)}), each with at least one sample. Received "
            f"{len(arrays)} arrays of lengths {[len(a) for a in arrays]}."
        )
    return [np.asarray(a) for a in arrays]


def measure_latency(
    model_file,
    inputs=None,
    *,
    threads=DEFAULT_THREADS,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
) -> dict:
    """Times one invocation of a `.tflite` file, batch 1, at each thread count.

    For each thread count a new LiteRT interpreter (XNNPACK on CPU) is
    created, given the first sample of `inputs`, invoked `warmup` times
    untimed, then `runs` times timed.

    Args:
        model_file: the path of a `.tflite` file, or its bytes.
        inputs: a float array (or a list, one per input) whose first sample
            is fed; None: a random normal sample of the file's input shape
            (latency rarely depends on the values, but a real sample is the
            honest choice).
        threads: a thread count or a sequence of them. Default `(1, 4)`.
        runs: timed invocations per thread count (>= 1).
        warmup: untimed invocations first (>= 0).

    Returns:
        A list of dicts, one per thread count in the order of `threads`:
        `{"threads": n, "median_ms": float, "p90_ms": float}` (plain
        values: it survives JSON unchanged).

    Example:

    ```python
    figures = kd.export.measure_latency("student.tflite", x_test[:1])
    for f in figures:
        print(f"{f['threads']} threads: {f['median_ms']:.3f} ms median, "
              f"{f['p90_ms']:.3f} ms p90")
    ```
    """
    threads = check_threads(threads)
    check_int(runs, "runs", 1, "timed invocations")
    check_int(warmup, "warmup", 0, "untimed invocations")
    if isinstance(model_file, bytes | bytearray):
        source = {"content": bytes(model_file)}
    elif isinstance(model_file, str | os.PathLike):
        if not os.path.isfile(model_file):
            raise ValueError(
                f"Argument `model_file` is not a file. Received: {model_file!r}. "
                "Expected the path of a .tflite file, or its bytes."
            )
        source = {"path": model_file}
    else:
        raise TypeError(
            "Argument `model_file` must be a path or the bytes of a .tflite "
            f"file. Received: {type(model_file).__name__}"
        )
    figures = []
    for count in threads:
        runner = Runner(num_threads=count, **source)
        arrays = _inputs(runner, inputs)
        median, p90 = runner.latency(arrays, runs, warmup)
        figures.append({"threads": count, "median_ms": median, "p90_ms": p90})
    return figures


__all__ = ["DEFAULT_THREADS", "measure_latency"]
