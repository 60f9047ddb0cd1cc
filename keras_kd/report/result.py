"""`Report`: what `compare` found, printable and savable as files."""

from __future__ import annotations

import dataclasses
import json
import os

from keras_kd._utils import write_atomically
from keras_kd.report import plots, render

FORMATS = ("json", "md", "html", "png")


def _directory(directory) -> str:
    """`directory` created if missing; its parent must exist."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            "Argument `directory` must be a path (str or os.PathLike). "
            f"Received: directory={directory!r} of type {type(directory).__name__}."
        )
    path = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ValueError(
            f"Argument `directory` must be in an existing directory. Received: "
            f"directory={os.fspath(directory)!r}, whose parent {parent!r} does "
            "not exist."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"Argument `directory` must be a directory. Received: "
            f"directory={os.fspath(directory)!r}, which is a file."
        )
    os.makedirs(path, exist_ok=True)
    return path


@dataclasses.dataclass
class Report:
    """Teacher vs student (vs baseline, vs `.tflite`): the result of `compare`.

    `print(report)` shows a table; `report.save(directory)` writes
    `report.json`, `report.md`, `report.html` (self-contained) and the plots.

    Attributes:
        models: name ("teacher", "student", and "baseline" / "tflite" when
            given) to a dict of `accuracy`, `agreement` (top-1, with the
            teacher), `ece`, `nll`, `params`, `size_bytes`, `latency_ms`
            (per sample, batch 1; None if not measured) and
            `per_class_accuracy` (None for a class without samples).
        worst_classes: the classes where the student falls furthest behind
            the teacher: dicts of `class`, `name`, `teacher`, `student`,
            `gap` (teacher minus student accuracy), largest gap first.
        bias: with a baseline, the classes where the student is below it:
            dicts of `class`, `name`, `teacher`, `student`, `baseline`,
            `drop` (baseline minus student), `teacher_below_baseline` and
            `kind` ("inherited", "amplified" or "introduced", see
            `kd.report.compare`); None without a baseline.
        class_names: one name per class.
        num_samples: the samples compared.
        num_bins: the confidence bins of ECE and the reliability diagrams.
        reliability: name to the per-bin "edges", "count", "accuracy" and
            "confidence" of its reliability diagram.
        history: the training history as a list of generations, each
            `{metric: [per-epoch values]}`; None when none was given.
        tflite_latency: with a `.tflite` file, its latency at 1 and 4
            threads, batch 1, after warm-up: a list of `{"threads": n,
            "median_ms": ..., "p90_ms": ...}`; None otherwise.
        notes: anything the figures need to be read with.
        ood: with `ood_data`, the out-of-distribution figures: `num_samples`
            (OOD inputs), `models` (name to `entropy_in` and `entropy_ood`,
            mean predictive entropies in nats on the data and on the OOD
            inputs, and `auroc` of the entropy separating them, OOD
            positive), `entropy_gap` (the student's mean OOD entropy minus
            the teacher's) and `student_more_confident` (the gap is
            negative); None without `ood_data`.
    """

    models: dict
    worst_classes: list
    bias: list | None
    class_names: list
    num_samples: int
    num_bins: int = 15
    reliability: dict = dataclasses.field(default_factory=dict)
    history: list | None = None
    tflite_latency: list | None = None
    notes: list = dataclasses.field(default_factory=list)
    ood: dict | None = None

    def to_dict(self) -> dict:
        """The report as plain Python values (JSON-able)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return render.text(self)

    def to_markdown(self) -> str:
        """The report as a Markdown document (tables, no images)."""
        return render.markdown(self)

    def to_html(self) -> str:
        """A self-contained HTML page: inline CSS, plots as base64 PNGs.

        Without matplotlib the page has the tables only, and says so.
        """
        try:
            figures = plots.figures(self)
        except ImportError as error:
            figures, missing = {}, str(error)
        else:
            missing = None
        return render.html_page(self, figures, missing)

    def plot(self, directory) -> list:
        """Writes the plots as PNG files in `directory`; returns their paths.

        `reliability.png` (one reliability diagram per model, side by side),
        `per_class.png` (per-class accuracy bars) and, when a history was
        given, `history.png` (loss components over epochs).

        Raises:
            ImportError: if matplotlib is not installed
                (`pip install keras-kd[report]`).
            ValueError: if `directory`'s parent does not exist.
        """
        plots.require_matplotlib()
        directory = _directory(directory)
        paths = []
        for name, content in plots.figures(self).items():
            path = os.path.join(directory, f"{name}.png")
            write_atomically(path, content)
            paths.append(path)
        return paths

    def save(self, directory, formats=FORMATS) -> dict:
        """Writes the report's files in `directory` (created if missing).

        Args:
            directory: where to write; its parent must exist.
            formats: any of "json" (`report.json`), "md" (`report.md`),
                "html" (`report.html`) and "png" (the plots).

        Returns:
            A dict from format to the path written ("png": a list of paths).

        Raises:
            ImportError: for "png" without matplotlib.
            ValueError: for an unknown format or a missing parent directory.
        """
        if isinstance(formats, str):
            formats = (formats,)
        formats = tuple(formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise ValueError(
                f"Argument `formats` must name some of {list(FORMATS)}. "
                f"Received: formats={formats!r}."
            )
        if "png" in formats:
            plots.require_matplotlib()
        directory = _directory(directory)
        written = {}
        contents = {
            "json": lambda: json.dumps(self.to_dict(), indent=2),
            "md": self.to_markdown,
            "html": self.to_html,
        }
        for fmt in formats:
            if fmt == "png":
                written["png"] = self.plot(directory)
                continue
            path = os.path.join(directory, f"report.{fmt}")
            write_atomically(path, contents[fmt]().encode("utf-8"))
            written[fmt] = path
        return written
