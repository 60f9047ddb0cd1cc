"""Training histories read into one shape: a list of generations.

`compare(history=...)` takes a Keras `History`, a dict of per-epoch lists,
`SelfDistillation.generation_results`, or a list of any of these (one per
generation). Each becomes a list of segments, one per generation, each a dict
from metric names to per-epoch floats, so the plot can draw the generations
one after the other with a line between them.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np


def _fail(value, detail: str):
    raise TypeError(
        "Argument `history` must be a keras History, a dict of per-epoch lists "
        "(History.history), SelfDistillation's `generation_results`, or a list "
        f"of these (one per generation). Received: {detail} of type "
        f"{type(value).__module__}.{type(value).__name__}."
    )


def _numbers(values, key, value) -> list:
    if isinstance(values, numbers.Real) or np.ndim(values) == 0:
        values = [values]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        _fail(value, f"history[{key!r}]={values!r}")


def _segment(value) -> dict:
    """One generation's `{name: [per-epoch floats]}`."""
    logs = getattr(value, "history", None)
    if isinstance(logs, Mapping):  # a keras History
        value = logs
    if not isinstance(value, Mapping):
        _fail(value, "an element")
    if isinstance(value.get("metrics"), Mapping):  # a generation_results entry
        value = value["metrics"]
    return {str(k): _numbers(v, k, value) for k, v in value.items()}


def _split_generations(segment: dict) -> list:
    """A single History of `SelfDistillation` split at its "generation" key."""
    generations = segment.get("generation")
    if not generations or len(set(generations)) < 2:
        return [segment]
    parts, start = [], 0
    for i in range(1, len(generations) + 1):
        if i == len(generations) or generations[i] != generations[i - 1]:
            parts.append(
                {
                    k: v[start:i]
                    for k, v in segment.items()
                    if len(v) == len(generations)
                }
            )
            start = i
    return parts


def normalize_history(history) -> list | None:
    """`history` as a list of generations, each `{name: [floats]}`; or None."""
    if history is None:
        return None
    if isinstance(history, (list, tuple)):
        if not history:
            raise ValueError(
                "Argument `history` is an empty list. Expected one History (or "
                "dict of per-epoch lists) per generation, or history=None."
            )
        if all(isinstance(h, Mapping) and "metrics" in h for h in history):
            # generation_results: one point per generation, in one segment
            merged: dict = {}
            for entry in history:
                for key, values in _segment(entry).items():
                    merged.setdefault(key, []).extend(values)
            return [merged]
        return [_segment(h) for h in history]
    return _split_generations(_segment(history))


def loss_keys(segments) -> list:
    """Every key ending in "loss" (val_ ones included), in first-seen order."""
    keys: list = []
    for segment in segments or []:
        for key in segment:
            if key.endswith("loss") and key not in keys:
                keys.append(key)
    return keys
