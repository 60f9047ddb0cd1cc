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

With `labels` and `normalization`, `to_tflite` writes the standard TFLite
metadata of an image classifier (what MediaPipe Tasks and the Task Library
read), so a phone app loads the file as it is.

`evaluate_tflite` and `predict_tflite` run a `.tflite` file on data, quantizing
inputs and dequantizing outputs of integer models with the tensors' scale and
zero point. `read_metadata` reads back the entries given to `to_tflite`'s
`metadata`, and the standard metadata parsed. `measure_latency` times a file
as a phone app runs it: batch 1, warm-up, median and 90th percentile.

The package holds one step a module: `tflite` (`to_tflite`), `runtime`
(`evaluate_tflite`, `predict_tflite`, `read_metadata`), `latency`
(`measure_latency`) and `report` (`ExportReport`) are public; `_checks`
(argument checks), `_convert` (SavedModel, converter, flatbuffer),
`_metadata` (the standard metadata flatbuffer and its label file), `_runner`
(the interpreter on float data) and `_verify` (parity with the Keras model)
are their parts.
"""

from keras_kd.export.latency import measure_latency
from keras_kd.export.report import ExportReport
from keras_kd.export.runtime import evaluate_tflite, predict_tflite, read_metadata
from keras_kd.export.tflite import QUANTIZATIONS, to_tflite

__all__ = [
    "ExportReport",
    "QUANTIZATIONS",
    "evaluate_tflite",
    "measure_latency",
    "predict_tflite",
    "read_metadata",
    "to_tflite",
]
