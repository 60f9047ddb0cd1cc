"""A `Report` as text: a printable table, Markdown and a self-contained HTML page."""

from __future__ import annotations

import base64
import html

_COLUMNS = (
    "model",
    "accuracy",
    "agreement",
    "ECE",
    "NLL",
    "params",
    "size",
    "latency/sample",
)

_FIGURE_TITLES = {
    "reliability": "Reliability diagrams",
    "per_class": "Per-class accuracy",
    "history": "Loss components over epochs",
}


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _size(num_bytes) -> str:
    if num_bytes is None:
        return "-"
    if num_bytes < 1024:
        return f"{num_bytes} B"
    if num_bytes < 1024**2:
        return f"{num_bytes / 1024:.1f} KiB"
    return f"{num_bytes / 1024**2:.2f} MiB"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3g} ms"


def model_rows(report) -> list:
    """One list of formatted cells per model, in `_COLUMNS` order."""
    return [
        [
            name,
            percent(row["accuracy"]),
            percent(row["agreement"]),
            f"{row['ece']:.4f}",
            f"{row['nll']:.4f}",
            f"{row['params']:,}",
            _size(row["size_bytes"]),
            _ms(row["latency_ms"]),
        ]
        for name, row in report.models.items()
    ]


_LATENCY_TITLE = "LiteRT file, batch 1 (XNNPACK), after warm-up"


def latency_rows(report) -> tuple:
    """The `.tflite` file's latency per thread count (no rows without)."""
    header = ("threads", "median", "p90")
    rows = [
        [str(f["threads"]), _ms(f["median_ms"]), _ms(f["p90_ms"])]
        for f in report.tflite_latency or []
    ]
    return header, rows


def worst_rows(report) -> tuple:
    header = ("class", "teacher", "student", "gap")
    rows = [
        [r["name"], percent(r["teacher"]), percent(r["student"]), percent(r["gap"])]
        for r in report.worst_classes
    ]
    return header, rows


def bias_rows(report) -> tuple:
    header = ("class", "baseline", "student", "teacher", "drop", "kind")
    rows = [
        [
            r["name"],
            percent(r["baseline"]),
            percent(r["student"]),
            percent(r["teacher"]),
            percent(r["drop"]),
            r["kind"],
        ]
        for r in report.bias or []
    ]
    return header, rows


_BIAS_RULE = (
    "Classes where the distilled student is below the scratch baseline. "
    "inherited: the teacher is below the baseline there too and the student "
    "is no worse than the teacher; amplified: the teacher is below the "
    "baseline and the student worse still; introduced: the teacher is at or "
    "above the baseline, so the drop comes from distillation itself."
)


_OOD_TITLE = "Out-of-distribution inputs"
_OOD_RULE = (
    "Mean predictive entropy (nats) on the labelled data and on the "
    "out-of-distribution inputs, and the AUROC of the entropy telling them "
    "apart (OOD as the positive class; 1.0 separates them, 0.5 is chance)."
)
_BIAS_TITLE_OOD = "Where distillation made the student worse"


def ood_rows(report) -> tuple:
    """Per model its mean entropy on the data and off it, and the AUROC."""
    header = ("model", "entropy (data)", "entropy (OOD)", "AUROC")
    rows = [
        [name, f"{r['entropy_in']:.4f}", f"{r['entropy_ood']:.4f}", f"{r['auroc']:.4f}"]
        for name, r in (report.ood or {}).get("models", {}).items()
    ]
    return header, rows


def ood_verdict(report) -> str:
    """The bias section's row on OOD inputs: is the student surer than its
    teacher off the data? Empty without OOD figures."""
    if not report.ood:
        return ""
    models = report.ood["models"]
    student, teacher = (
        models["student"]["entropy_ood"],
        models["teacher"]["entropy_ood"],
    )
    verdict = (
        "more confident than its teacher (overconfident off the data)"
        if report.ood["student_more_confident"]
        else "not more confident than its teacher"
    )
    return (
        f"OOD confidence: the student is {verdict} on the "
        f"{report.ood['num_samples']} out-of-distribution inputs: mean "
        f"entropy {student:.4f} vs {teacher:.4f} nats."
    )


def _table(header, rows) -> list:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths))
    lines = [line, "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return [line.rstrip() for line in lines]


def text(report) -> str:
    """A printable summary: the models table, worst classes, bias."""
    lines = [
        f"Report on {report.num_samples} samples, {len(report.class_names)} "
        f"classes (ECE: {report.num_bins} bins)"
    ]
    lines += _table(_COLUMNS, model_rows(report))
    if report.tflite_latency:
        lines += ["", f"{_LATENCY_TITLE}:"]
        lines += _table(*latency_rows(report))
    if report.worst_classes:
        lines += ["", "Classes where the student falls furthest behind the teacher:"]
        lines += _table(*worst_rows(report))
    if report.ood:
        lines += ["", f"{_OOD_TITLE} ({report.ood['num_samples']}):"]
        lines += _table(*ood_rows(report))
    if report.bias is not None:
        header, rows = bias_rows(report)
        if rows:
            lines += [
                "",
                "Classes where distillation left the student below the baseline:",
            ]
            lines += _table(header, rows)
        else:
            lines += ["", "No class where the student is below the baseline."]
    if report.ood:
        lines += ([""] if report.bias is None else []) + [ood_verdict(report)]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _md_table(header, rows) -> list:
    def cell(value):
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown(report) -> str:
    """The report as Markdown: the tables and the bias rule."""
    lines = [
        "# Teacher vs student",
        "",
        f"{report.num_samples} samples, {len(report.class_names)} classes. "
        f"Agreement: top-1 agreement with the teacher. ECE: expected "
        f"calibration error over {report.num_bins} equal-width confidence "
        "bins. NLL: mean negative log-likelihood (nats). Latency: per sample, "
        "batch of 1, median.",
        "",
    ]
    lines += _md_table(_COLUMNS, model_rows(report))
    if report.tflite_latency:
        lines += ["", f"## {_LATENCY_TITLE}", ""]
        lines += _md_table(*latency_rows(report))
    if report.worst_classes:
        lines += ["", "## Classes where the student falls furthest behind", ""]
        lines += _md_table(*worst_rows(report))
    if report.ood:
        lines += ["", f"## {_OOD_TITLE}", "", _OOD_RULE, ""]
        lines += _md_table(*ood_rows(report))
    if report.bias is not None:
        lines += ["", "## Where distillation made a class worse", "", _BIAS_RULE, ""]
        header, rows = bias_rows(report)
        lines += _md_table(header, rows) if rows else ["None."]
    if report.ood:
        if report.bias is None:
            lines += ["", f"## {_BIAS_TITLE_OOD}"]
        lines += ["", f"- {ood_verdict(report)}"]
    if report.notes:
        lines += [""] + [f"- note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; }
.note { color: #666; }
"""


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(report, figures: dict, missing: str | None) -> str:
    """A self-contained page: inline CSS, `figures` ({name: PNG bytes}) inline."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>keras-kd report: teacher vs student</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Teacher vs student</h1>",
        f"<p>{report.num_samples} samples, {len(report.class_names)} classes. "
        "Agreement: top-1 agreement with the teacher. ECE: expected "
        f"calibration error over {report.num_bins} equal-width confidence "
        "bins. NLL: mean negative log-likelihood (nats). Latency: per sample, "
        "batch of 1, median.</p>",
        _html_table(_COLUMNS, model_rows(report)),
    ]
    if report.tflite_latency:
        parts.append(f"<h2>{html.escape(_LATENCY_TITLE)}</h2>")
        parts.append(_html_table(*latency_rows(report)))
    if report.worst_classes:
        parts.append("<h2>Classes where the student falls furthest behind</h2>")
        parts.append(_html_table(*worst_rows(report)))
    if report.ood:
        parts.append(f"<h2>{_OOD_TITLE}</h2>")
        parts.append(f"<p>{html.escape(_OOD_RULE)}</p>")
        parts.append(_html_table(*ood_rows(report)))
    if report.bias is not None:
        parts.append("<h2>Where distillation made a class worse</h2>")
        parts.append(f"<p>{html.escape(_BIAS_RULE)}</p>")
        header, rows = bias_rows(report)
        parts.append(_html_table(header, rows) if rows else "<p>None.</p>")
    if report.ood:
        if report.bias is None:
            parts.append(f"<h2>{_BIAS_TITLE_OOD}</h2>")
        parts.append(f"<p>{html.escape(ood_verdict(report))}</p>")
    for name, content in figures.items():
        encoded = base64.b64encode(content).decode("ascii")
        title = _FIGURE_TITLES.get(name, name)
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'
        )
    if missing:
        parts.append(f'<p class="note">No plots: {html.escape(missing)}</p>')
    for note in report.notes:
        parts.append(f'<p class="note">note: {html.escape(note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
