"""The report's plots as PNG bytes, drawn with matplotlib's Agg backend.

Figures are `matplotlib.figure.Figure` objects rendered by `FigureCanvasAgg`:
no pyplot, no global state, no window. matplotlib is optional
(`pip install keras-kd[report]`); without it, `require_matplotlib` raises.
"""

from __future__ import annotations

import io

import numpy as np

from keras_kd.report.history import loss_keys

_INSTALL = (
    "The plots of kd.report need matplotlib, which is not installed. Install "
    "it with `pip install keras-kd[report]` (JSON, Markdown and HTML without "
    "plots work without it)."
)

# The models drawn in the per-class bars, in this order, when present.
_BAR_MODELS = ("teacher", "student", "baseline")
_COLORS = {
    "teacher": "#4c72b0",
    "student": "#dd8452",
    "baseline": "#55a868",
    "tflite": "#8172b3",
}


def require_matplotlib():
    """matplotlib's `Figure` and `FigureCanvasAgg`; ImportError saying how."""
    try:
        import matplotlib  # noqa: F401 - fails first when it is missing
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_INSTALL) from error
    return Figure, FigureCanvasAgg


def _png(figure, canvas_class) -> bytes:
    canvas_class(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def reliability_figure(report, Figure):
    """One reliability diagram per model, side by side."""
    names = list(report.reliability)
    figure = Figure(figsize=(3.6 * len(names), 3.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(names), sharey=True))
    for ax, name in zip(axes, names):
        bins = report.reliability[name]
        edges = np.asarray(bins["edges"])
        width = np.diff(edges)
        filled = np.array([n > 0 for n in bins["count"]])
        accuracy = np.array([0.0 if a is None else a for a in bins["accuracy"]])
        confidence = np.array([0.0 if c is None else c for c in bins["confidence"]])
        gap = np.where(filled, confidence - accuracy, 0.0)  # empty bins: nothing
        ax.bar(
            edges[:-1],
            accuracy,
            width=width,
            align="edge",
            color=_COLORS.get(name, "#888888"),
            edgecolor="black",
            linewidth=0.5,
            label="accuracy",
        )
        ax.bar(
            edges[:-1],
            gap,
            bottom=accuracy,
            width=width,
            align="edge",
            color="none",
            edgecolor="red",
            hatch="//",
            linewidth=0.5,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1)")
        ax.set_title(f"{name}: ECE {report.models[name]['ece']:.4f}")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize="small")
    return figure


def per_class_figure(report, Figure):
    """Per-class accuracy bars, teacher / student / baseline side by side."""
    names = [n for n in _BAR_MODELS if n in report.models]
    num_classes = len(report.class_names)
    figure = Figure(
        figsize=(max(6.0, 0.45 * num_classes * len(names)), 3.8), layout="constrained"
    )
    ax = figure.subplots()
    x = np.arange(num_classes)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [
            0.0 if v is None else v for v in report.models[name]["per_class_accuracy"]
        ]
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            values,
            width=width,
            color=_COLORS.get(name, "#888888"),
            label=f"{name} ({100 * report.models[name]['accuracy']:.1f}%)",
        )
    ax.set_xticks(x)
    ax.set_xticklabels(
        report.class_names,
        rotation=45 if num_classes > 12 else 0,
        ha="right" if num_classes > 12 else "center",
    )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_title("Per-class accuracy")
    ax.legend(loc="lower right", fontsize="small")
    return figure


def history_series(segments) -> tuple:
    """`(series, boundaries)`: each loss key's values over all epochs (NaN
    where a generation did not log it) and the epochs where a generation
    starts (after the first)."""
    keys = loss_keys(segments)
    series = {key: [] for key in keys}
    boundaries, total = [], 0
    for i, segment in enumerate(segments):
        length = max((len(v) for v in segment.values()), default=0)
        if i:
            boundaries.append(total)
        for key in keys:
            values = list(segment.get(key, []))
            series[key].extend(values + [float("nan")] * (length - len(values)))
        total += length
    return series, boundaries


def history_figure(report, Figure):
    """Every loss component over epochs; generations split by vertical lines."""
    series, boundaries = history_series(report.history)
    figure = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = figure.subplots()
    colors: dict = {}
    for key, values in series.items():
        epochs = np.arange(1, len(values) + 1)
        validation = key.startswith("val_")
        # A training loss and its val_ twin share a colour; val_ is dashed.
        base = key[4:] if validation else key
        color = colors.setdefault(base, f"C{len(colors) % 10}")
        ax.plot(
            epochs,
            values,
            "--" if validation else "-",
            color=color,
            marker="o",
            markersize=3,
            label=key,
        )
    for boundary in boundaries:
        ax.axvline(boundary + 0.5, color="gray", linestyle=":", linewidth=1)
    if boundaries:
        ax.set_title(f"Loss components over epochs ({len(boundaries) + 1} generations)")
    else:
        ax.set_title("Loss components over epochs")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if series:
        ax.legend(fontsize="small")
    return figure


def figures(report) -> dict:
    """The report's plots: `{"reliability", "per_class"[, "history"]: PNG}`."""
    Figure, canvas = require_matplotlib()
    result = {
        "reliability": _png(reliability_figure(report, Figure), canvas),
        "per_class": _png(per_class_figure(report, Figure), canvas),
    }
    if report.history:
        result["history"] = _png(history_figure(report, Figure), canvas)
    return result
