"""The parts of `keras_kd.budget`: the candidates, the Pareto fronts, the plot.

Candidates are the grid of the hyperparameters `student_fn(hp)` declares
(keras-tuner's `HyperParameters`), or a list of value dicts; the Pareto
front keeps the candidates no other beats on both accuracy and cost; the
plot draws accuracy against size and against latency, the fronts marked.
"""

from __future__ import annotations

import inspect
import io
import itertools
import math

import numpy as np

from keras_kd import _utils
from keras_kd.backend import keras

# More candidates than this is a mistake (a Float without a step, a wide
# Int): each one is exported, and those within budget are trained.
MAX_CANDIDATES = 256


def _grid_values(hp) -> list:
    """The values a declared hyperparameter takes in the grid."""
    unstepped = type(hp).__name__ == "Float" and getattr(hp, "step", None) is None
    try:
        values = list(itertools.islice(hp.values, MAX_CANDIDATES + 1))
    except (TypeError, ValueError, AttributeError):
        values = None
    # keras-tuner lists ten samples of a Float without a step: not a grid.
    if unstepped or not values or len(values) > MAX_CANDIDATES:
        raise ValueError(
            f"Argument `student_fn` declares the hyperparameter {hp.name!r} "
            f"({type(hp).__name__}) without a finite list of values. Expected "
            "`hp.Choice`, `hp.Boolean`, `hp.Fixed`, or `hp.Int` / `hp.Float` "
            "with a `step`, so that every candidate can be listed; or pass "
            "`candidates=[{...}, ...]`."
        )
    return values


def candidate_grid(space) -> list:
    """Every combination of the declared values: a list of dicts, the first
    the defaults' order of declaration (`space`: keras-tuner's `hp.space`)."""
    names, columns = [], []
    for hp in space:
        if hp.name in names:
            continue
        names.append(hp.name)
        columns.append(_grid_values(hp))
    count = math.prod(len(c) for c in columns)
    if count > MAX_CANDIDATES:
        raise ValueError(
            f"Argument `student_fn` declares {count} combinations of "
            f"hyperparameters ({', '.join(names)}); at most {MAX_CANDIDATES} "
            "are searched. Expected fewer values, or `candidates=[...]`."
        )
    return [dict(zip(names, combo)) for combo in itertools.product(*columns)]


def pareto_front(points) -> list:
    """Indices of the points `(cost, accuracy)` that no other point beats:
    none has cost <= and accuracy >= with one of them strict. Cheapest
    first."""
    front = []
    for i, (cost, accuracy) in enumerate(points):
        dominated = any(
            c <= cost and a >= accuracy and (c < cost or a > accuracy)
            for j, (c, a) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def plot_png(rows, max_bytes, max_latency_ms, title: str) -> bytes:
    """Accuracy against size (KiB) and against median latency (ms): trained
    candidates as dots, each front as a line, the returned one starred,
    candidates discarded before training as crosses at the bottom, the
    budget as a dashed line. PNG bytes."""
    from keras_kd.report.plots import require_matplotlib

    Figure, Canvas = require_matplotlib()
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    trained = [r for r in rows if r["accuracy"] is not None]
    discarded = [r for r in rows if r["accuracy"] is None]
    floor = min((r["accuracy"] for r in trained), default=0.0)
    panels = (
        (axes[0], "size_bytes", 1 / 1024, "file size (KiB)", "pareto_size", max_bytes),
        (
            axes[1],
            "latency_ms",
            1.0,
            "median latency, batch 1 (ms)",
            "pareto_latency",
            max_latency_ms,
        ),
    )
    for ax, key, scale, label, front_key, limit in panels:
        xs = [r[key] * scale for r in trained]
        ys = [r["accuracy"] for r in trained]
        ax.scatter(xs, ys, color="#4c72b0", label="trained, within budget", zorder=2)
        front = sorted((r for r in trained if r[front_key]), key=lambda r: r[key])
        ax.plot(
            [r[key] * scale for r in front],
            [r["accuracy"] for r in front],
            color="#dd8452",
            marker="o",
            label="Pareto front",
            zorder=3,
        )
        chosen = [r for r in trained if r["selected"]]
        ax.scatter(
            [r[key] * scale for r in chosen],
            [r["accuracy"] for r in chosen],
            marker="*",
            s=250,
            color="#c44e52",
            label="returned",
            zorder=4,
        )
        measured = [r for r in discarded if r[key] is not None]
        if measured:
            ax.scatter(
                [r[key] * scale for r in measured],
                [floor] * len(measured),
                marker="x",
                color="#999999",
                label="over budget (not trained)",
                zorder=1,
            )
        if limit is not None:
            ax.axvline(limit * scale, color="#c44e52", linestyle="--", label="budget")
        for r in trained:
            ax.annotate(r["id"], (r[key] * scale, r["accuracy"]), fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy of the .tflite file (validation)")
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    Canvas(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def values_text(values: dict) -> str:
    return (
        ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in values.items()
        )
        or "-"
    )


def import_keras_tuner():
    try:
        import keras_tuner
    except ImportError as error:
        raise ImportError(
            "`tune_for_budget` needs keras-tuner (candidates come from "
            "`student_fn(hp)`, and each is trained by `kd.tune`). Install it "
            "with `pip install keras-kd[tune]`."
        ) from error
    return keras_tuner


def takes_hp(fn) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in parameters
    )


class Builder:
    """Builds the candidate students: `student_fn(hp)` with given values."""

    def __init__(self, student_fn, seed):
        if not callable(student_fn) or isinstance(student_fn, keras.Model):
            raise TypeError(
                "Argument `student_fn` must be a function returning a new, "
                "untrained student: `student_fn(hp)` (keras-tuner "
                "hyperparameters) or `student_fn()`. Received: "
                f"{student_fn!r}."
            )
        self.student_fn, self.seed = student_fn, seed
        self.takes_hp = takes_hp(student_fn)
        self.keras_tuner = import_keras_tuner()

    def grid(self) -> list:
        """The candidates: every combination of the declared values."""
        if not self.takes_hp:
            return [{}]
        hp = self.keras_tuner.HyperParameters()
        self.student_fn(hp)
        return candidate_grid(hp.space) or [{}]

    def __call__(self, values: dict):
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        if not self.takes_hp:
            model = self.student_fn()
        else:
            hp = self.keras_tuner.HyperParameters()
            hp.values.update(values)
            model = self.student_fn(hp)
        _utils.check_model(model, "student_fn()")
        return model


def fill_zero_weights(model, seed: int) -> None:
    """Gives every all-zero weight (biases, fresh BatchNorm means) small
    random values. The converter stores an all-zero constant in fewer bytes
    than a trained one, so an untrained model's file is smaller than the
    same architecture's trained file; filled, it is the same size."""
    rng = np.random.default_rng(seed)
    weights = model.get_weights()
    model.set_weights(
        [
            w if np.any(w) else (1e-3 * rng.standard_normal(w.shape)).astype(w.dtype)
            for w in weights
        ]
    )


def redraw_weights(model, seed: int) -> None:
    """Draws every kernel afresh (normal, std 1/sqrt(fan-in)) and gives
    vectors that are all zero small positive values, so that ReLUs fire.
    An untrained model's weights are arbitrary; a draw in which a layer never
    fires calibrates to one value under int8, which LiteRT refuses."""
    rng = np.random.default_rng(seed)
    drawn = []
    for w in model.get_weights():
        if w.ndim >= 2:
            fan_in = max(int(np.prod(w.shape[:-1])), 1)
            w = rng.standard_normal(w.shape) / np.sqrt(fan_in)
        elif not np.any(w):
            w = 0.05 * np.abs(rng.standard_normal(w.shape))
        drawn.append(np.asarray(w).astype(model.get_weights()[len(drawn)].dtype))
    model.set_weights(drawn)


def recipe_text(config: dict) -> str:
    if config.get("is_baseline"):
        return "labels only"
    text = (
        f"{config['objective']} T={config['temperature']:g} alpha={config['alpha']:g}"
    )
    return text + (" mixup" if config.get("mixup") else "")


def mark_fronts(rows) -> dict | None:
    """Sets `pareto_size`, `pareto_latency` and `selected`; returns the
    selected row: the most accurate file, then the smallest, the fastest."""
    trained = [r for r in rows if r["accuracy"] is not None]
    for key, front in (("size_bytes", "pareto_size"), ("latency_ms", "pareto_latency")):
        on_front = pareto_front([(r[key], r["accuracy"]) for r in trained])
        for i in on_front:
            trained[i][front] = True
    best = min(
        trained,
        key=lambda r: (-r["accuracy"], r["size_bytes"], r["latency_ms"]),
        default=None,
    )
    if best is not None:
        best["selected"] = True
    return best
