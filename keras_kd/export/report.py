"""`ExportReport`: what `to_tflite` wrote and how well the file matches."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ExportReport:
    """What `to_tflite` wrote and how well the file matches the Keras model.

    `str(report)` gives a one-line summary (plus one line per note);
    `report.to_dict()` gives plain values to log or save as JSON.

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
            (batch of 1, after warm-up), in milliseconds, at the first
            thread count of `latency`; None when not measured.
        latency_p90_ms: the 90th percentile of the same invocations.
        latency: one dict per thread count, `{"threads": n, "median_ms":
            ..., "p90_ms": ...}` (by default at 1 and 4 threads; see
            `to_tflite`'s `latency_threads`); empty when not measured.
        num_verify_samples: how many samples the comparison used.
        interpreter: `"ai_edge_litert"` or `"tf.lite"` (the fallback).
        input_dtypes: the file's input tensor types, e.g. `["float32"]`.
        output_dtypes: the file's output tensor types.
        mediapipe_ready: whether the file carries the standard image
            classifier metadata (`to_tflite`'s `labels` and
            `normalization`) with tensor types that MediaPipe's
            `ImageClassifier` takes (an RGB input; float32 input and output:
            every mode but `"int8_io"`), so a phone app loads it as it is.
        notes: anything the figures above need to be read with.

    Example:

    ```python
    report = kd.export.to_tflite(student, "student.tflite")
    print(report)  # size, max |diff|, top-1 agreement, latency
    json.dump(report.to_dict(), open("export.json", "w"))
    ```
    """

    path: str
    size_bytes: int
    num_params: int
    quantization: str
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    top1_agreement: float | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency: list = dataclasses.field(default_factory=list)
    num_verify_samples: int = 0
    interpreter: str | None = None
    input_dtypes: list = dataclasses.field(default_factory=list)
    output_dtypes: list = dataclasses.field(default_factory=list)
    mediapipe_ready: bool = False
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
        for figures in self.latency:
            threads = figures["threads"]
            parts.append(
                f"{figures['median_ms']:.3g} ms/sample median, "
                f"{figures['p90_ms']:.3g} p90 ({threads} "
                f"thread{'s' if threads > 1 else ''})"
            )
        if self.latency_ms is not None and not self.latency:
            parts.append(f"{self.latency_ms:.3g} ms/sample")
        if self.mediapipe_ready:
            parts.append("MediaPipe-ready metadata")
        text = ", ".join(parts)
        for note in self.notes:
            text += f"\n  note: {note}"
        return text
