"""The measuring parts of `keras_kd.budget`: its argument checks, a
candidate exported as it would ship and measured, and the error when no
candidate fits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from keras_kd import _utils
from keras_kd._budget_space import values_text
from keras_kd.export import QUANTIZATIONS, to_tflite

# Arguments of `to_tflite` that `tune_for_budget` sets itself.
RESERVED = (
    "quantization",
    "representative_data",
    "verify_data",
    "num_threads",
    "latency_threads",
    "latency_runs",
    "verify",
)


def check_budget(max_bytes, max_latency_ms):
    if max_bytes is None and max_latency_ms is None:
        raise ValueError(
            "No budget given: pass `max_bytes` (the largest .tflite file, in "
            "bytes) and/or `max_latency_ms` (the largest median latency of one "
            "sample). Received: max_bytes=None, max_latency_ms=None."
        )
    if max_bytes is not None:
        max_bytes = _utils.check_int(
            max_bytes, "max_bytes", 1, "bytes of the .tflite file"
        )
    if max_latency_ms is not None:
        max_latency_ms = _utils.check_number(
            max_latency_ms,
            "max_latency_ms",
            low=0.0,
            low_open=True,
            what="milliseconds",
        )
    return max_bytes, max_latency_ms


def check_options(
    quantization, export_options, candidates, recipes, num_threads, validation_data
):
    """The export options as a dict, after checking the search's arguments."""
    if validation_data is None:
        raise ValueError(
            "Argument `validation_data` is required: candidates are scored on "
            "it. Received: validation_data=None. Expected `(x_val, y_val)` or "
            "a `tf.data.Dataset`."
        )
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Argument `quantization` must be one of {list(QUANTIZATIONS)}. "
            f"Received: quantization={quantization!r}."
        )
    if export_options is None:
        export_options = {}
    if not isinstance(export_options, Mapping):
        raise TypeError(
            "Argument `export_options` must be a dict of `kd.export.to_tflite` "
            f"keywords. Received: {export_options!r}."
        )
    taken = sorted(set(export_options) & set(RESERVED))
    if taken:
        raise ValueError(
            f"Argument `export_options` sets {taken}, which `tune_for_budget` "
            "sets itself (use its own arguments: quantization, "
            "representative_data, num_threads, latency_runs)."
        )
    if candidates is not None:
        if not isinstance(candidates, list | tuple) or not candidates:
            raise ValueError(
                "Argument `candidates` must be a non-empty list of dicts of "
                f"hyperparameter values. Received: {candidates!r}."
            )
        for c in candidates:
            if not isinstance(c, Mapping):
                raise TypeError(
                    "Argument `candidates` must hold dicts of hyperparameter "
                    f"values, e.g. {{'width': 0.5}}. Received an item {c!r}."
                )
    _utils.check_int(recipes, "recipes", 1, "distilled trials per candidate")
    _utils.check_int(num_threads, "num_threads", 1, "threads")
    return dict(export_options)


@dataclasses.dataclass
class Exporter:
    """Exports a candidate as it would ship and measures it."""

    quantization: str | None
    representative_data: object
    validation_data: object
    num_threads: int
    latency_runs: int
    options: dict
    max_bytes: int | None
    max_latency_ms: float | None

    def measure(self, model, path) -> dict:
        report = to_tflite(
            model,
            path,
            self.quantization,
            self.representative_data,
            verify_data=self.validation_data,
            num_threads=self.num_threads,
            latency_threads=(self.num_threads,),
            latency_runs=self.latency_runs,
            **self.options,
        )
        return {
            "size_bytes": report.size_bytes,
            "latency_ms": report.latency_ms,
            "latency_p90_ms": report.latency_p90_ms,
        }

    def over(self, figures: dict) -> str | None:
        """Which budget the figures exceed, or None."""
        if self.max_bytes is not None and figures["size_bytes"] > self.max_bytes:
            return "over max_bytes"
        if (
            self.max_latency_ms is not None
            and figures["latency_ms"] > self.max_latency_ms
        ):
            return "over max_latency_ms"
        return None


def nothing_fits(rows, exporter) -> ValueError:
    smallest = min(rows, key=lambda r: r["size_bytes"])
    fastest = min(rows, key=lambda r: r["latency_ms"])
    budget = []
    if exporter.max_bytes is not None:
        budget.append(f"max_bytes={exporter.max_bytes:,}")
    if exporter.max_latency_ms is not None:
        budget.append(f"max_latency_ms={exporter.max_latency_ms:g}")
    return ValueError(
        f"No candidate fits the budget ({', '.join(budget)}): the smallest, "
        f"{smallest['id']} ({values_text(smallest['hyperparameters'])}), is "
        f"{smallest['size_bytes']:,} bytes as a .tflite file "
        f"({exporter.quantization or 'float32'}), and the "
        f"fastest, {fastest['id']}, takes "
        f"{fastest['latency_ms']:.3g} ms (median, batch 1, "
        f"{exporter.num_threads} thread(s)). Expected a larger budget, or "
        "smaller candidates from `student_fn`."
    )
