"""Running a `.tflite` file in the LiteRT interpreter on float data.

`Runner` takes float inputs whatever the file's input types (integer inputs
are quantized with the tensor's scale and zero point) and returns float
outputs (integer outputs are dequantized), so every file from `to_tflite`
reads the same data as the Keras model it came from.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np

from keras_kd.backend import tf

# Samples per interpreter invocation, unless told otherwise.
BATCH_SIZE = 256


def interpreter_class():
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


class Runner:
    """Runs a `.tflite` model on float inputs, returning float outputs.

    Args:
        path: a `.tflite` file, or None when `content` is given.
        content: the bytes of a `.tflite` file.
        num_threads: the interpreter's threads (None: its default).

    Attributes:
        name: `"ai_edge_litert"` or `"tf.lite"` (the fallback).
        note: why the fallback was used, or None.
    """

    def __init__(self, path=None, content=None, num_threads=None):
        cls, self.name, self.note = interpreter_class()
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

    def input_specs(self) -> list:
        """One float `tf.TensorSpec` per input (dynamic batch)."""
        specs = []
        for i, detail in enumerate(self.inputs):
            shape = tuple(None if d < 0 else int(d) for d in detail["shape_signature"])
            shape = (None,) + shape[1:]
            dtype = detail["dtype"]
            if _quantization(detail) is not None:
                dtype = np.float32
            specs.append(tf.TensorSpec(shape, dtype, name=f"input_{i}"))
        return specs

    def dtypes(self):
        """`(input dtype names, output dtype names)` of the file's tensors."""
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

    def _set_inputs(self, arrays):
        self._resize([tuple(a.shape) for a in arrays])
        for detail, array in zip(self.inputs, arrays):
            self.interpreter.set_tensor(detail["index"], _quantize(array, detail))

    def _outputs_now(self):
        return [
            _dequantize(self.interpreter.get_tensor(d["index"]), d)
            for d in self.outputs
        ]

    def run(self, arrays, batch_size: int = BATCH_SIZE) -> list:
        """The file's outputs (a list of arrays) on inputs `arrays`."""
        n = len(arrays[0])
        parts = []
        for start in range(0, n, batch_size):
            self._set_inputs([a[start : start + batch_size] for a in arrays])
            self.interpreter.invoke()
            parts.append(self._outputs_now())
        return [np.concatenate(p) for p in zip(*parts)]

    def latency(self, arrays, runs: int, warmup: int = 5) -> tuple:
        """`(median, 90th percentile)` in ms of one invocation on the first
        sample (a batch of 1), after `warmup` untimed invocations."""
        self._set_inputs([a[:1] for a in arrays])
        for _ in range(warmup):
            self.interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append(time.perf_counter() - start)
        times = 1000.0 * np.asarray(times)
        return float(np.median(times)), float(np.percentile(times, 90))

    def latency_ms(self, arrays, runs: int) -> float:
        """The median time of one invocation on the first sample, in ms."""
        return self.latency(arrays, runs, warmup=min(5, runs))[0]
