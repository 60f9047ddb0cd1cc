"""A student chosen for a phone's budget: `tune_for_budget`.

A phone developer starts from a budget ("under 64 KiB, under 2 ms a
frame"), not from a width. `tune_for_budget` takes the candidate students
`student_fn(hp)` declares (e.g. a width multiplier and a depth), exports
each, untrained, with the requested quantization and measures its file
size and its median latency (batch 1, the LiteRT interpreter, XNNPACK, a
stated thread count): both are fixed by the architecture, so a candidate
over budget is discarded before it trains. Each candidate within budget is
then trained by `kd.tune(budget=recipes)` (the student on the labels alone,
and distilled with the first recipes of the study's ranking; a distilled
one is kept only if it beats labels alone by more than the validation
noise: the same floor), exported again, measured again, and scored by the
accuracy of its `.tflite` file on the validation data. The result is the
most accurate file within budget, never one over it, with a table and a
plot of accuracy against size and latency, the Pareto fronts marked.

Needs keras-tuner: `pip install keras-kd[tune]`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping

from keras_kd import _utils
from keras_kd._budget_measure import (
    Exporter,
    check_budget,
    check_options,
    nothing_fits,
)
from keras_kd._budget_space import (
    Builder,
    fill_zero_weights,
    mark_fronts,
    plot_png,
    recipe_text,
    redraw_weights,
    values_text,
)
from keras_kd.chain import format_table
from keras_kd.export import evaluate_tflite
from keras_kd.tune import tune

# Draws of an untrained candidate's weights tried before it is called
# unexportable (see `_measure_fresh`).
UNTRAINED_DRAWS = 3


@dataclasses.dataclass
class BudgetResult:
    """What `tune_for_budget` returns.

    Attributes:
        student: the returned student (a trained Keras model): the most
            accurate `.tflite` file within budget.
        candidate: its row of `candidates`.
        candidates: one dict per candidate, in the order searched: `id`
            (`"c00"`, `"c01"`...), `hyperparameters` (the values given to
            `student_fn`), `params`, `size_bytes` and `latency_ms` /
            `latency_p90_ms` (the exported file's, batch 1, at
            `num_threads`; of the trained student's file when it trained),
            `status` (`"trained"`, or why it was left out: `"over
            max_bytes"`, `"over max_latency_ms"`, each measured before
            training, or the same `"... after training"`, or `"not
            exportable after training"`, its reason in `error`), `recipe` (how
            `kd.tune` trained it: `"labels only"` or e.g. `"dist T=4
            alpha=0.5"`; None when not trained), `score` (`monitor` of the
            Keras student), `accuracy` (top-1 of the `.tflite` file on the
            validation data; None when not trained or over budget),
            `pareto_size` / `pareto_latency` (on the front of accuracy
            against size / latency, among the trained within budget) and
            `selected`.
        tflite: the bytes of the returned student's `.tflite` file.
        max_bytes: the size budget, or None.
        max_latency_ms: the latency budget, or None.
        quantization: the quantization of every file.
        num_threads: the interpreter's threads for the latency.
    """

    student: object
    candidate: dict
    candidates: list
    tflite: bytes
    max_bytes: int | None
    max_latency_ms: float | None
    quantization: str
    num_threads: int

    def table(self) -> str:
        """Every candidate as a plain-text table, the returned one marked."""
        rows = [
            ["id", "hyperparameters", "params", "size", "median ms", "p90 ms"]
            + ["status", "recipe", "accuracy", "front", ""]
        ]
        for r in self.candidates:
            front = [
                n
                for n, k in (("size", "pareto_size"), ("latency", "pareto_latency"))
                if r[k]
            ]
            rows.append(
                [
                    r["id"],
                    values_text(r["hyperparameters"]),
                    f"{r['params']:,}",
                    f"{r['size_bytes'] / 1024:.1f} KiB",
                    f"{r['latency_ms']:.3g}",
                    f"{r['latency_p90_ms']:.3g}",
                    r["status"],
                    r["recipe"] or "-",
                    "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%",
                    ", ".join(front) or "-",
                    "<- returned" if r["selected"] else "",
                ]
            )
        return format_table(rows)

    def __str__(self) -> str:
        return self.table()

    def pareto(self, by: str = "size") -> list:
        """The rows on the front of accuracy against `by` (`"size"` or
        `"latency"`), cheapest first."""
        if by not in ("size", "latency"):
            raise ValueError(
                f'Argument `by` must be "size" or "latency". Received: by={by!r}.'
            )
        key = "size_bytes" if by == "size" else "latency_ms"
        rows = [r for r in self.candidates if r[f"pareto_{by}"]]
        return sorted(rows, key=lambda r: r[key])

    def plot(self, path) -> str:
        """Writes a PNG of accuracy against size and against latency (the
        fronts marked, the budget dashed) to `path`, atomically; returns
        the path. Needs matplotlib."""
        budget = []
        if self.max_bytes is not None:
            budget.append(f"max {self.max_bytes:,} bytes")
        if self.max_latency_ms is not None:
            budget.append(f"max {self.max_latency_ms:g} ms")
        title = (
            f"{self.quantization} .tflite candidates, {', '.join(budget)} "
            f"(latency at {self.num_threads} thread"
            f"{'s' if self.num_threads > 1 else ''})"
        )
        content = plot_png(self.candidates, self.max_bytes, self.max_latency_ms, title)
        _utils.write_atomically(os.fspath(path), content)
        return os.fspath(path)

    def save_tflite(self, path) -> str:
        """Writes the returned student's `.tflite` file to `path`,
        atomically; returns the path."""
        _utils.write_atomically(os.fspath(path), self.tflite)
        return os.fspath(path)


def tune_for_budget(
    teacher,
    student_fn,
    train_data,
    validation_data,
    *,
    loss,
    max_bytes: int | None = None,
    max_latency_ms: float | None = None,
    quantization: str | None = "int8",
    num_threads: int = 1,
    candidates=None,
    representative_data=None,
    export_options: Mapping | None = None,
    recipes: int = 1,
    max_epochs: int = 9,
    optimizer="adam",
    metrics=("accuracy",),
    monitor: str = "val_accuracy",
    batch_size: int = 32,
    seed: int | None = None,
    margin: float | str = "auto",
    latency_runs: int = 50,
    directory=None,
    verbose: int = 0,
) -> BudgetResult:
    """The most accurate student whose `.tflite` file fits a phone's budget.

    1. **Candidates**: every combination of the values `student_fn(hp)`
       declares with keras-tuner's `HyperParameters` (`hp.Choice`,
       `hp.Int` / `hp.Float` with a step, `hp.Boolean`), or the value
       dicts in `candidates`.
    2. **Measured before training**: each candidate is built and exported
       with `quantization` (calibrated on `representative_data`, by default
       `train_data`) and any `export_options` (e.g. the `labels` and
       `normalization` of the shipped file, whose metadata counts in its
       size); its file size and its median latency (batch 1, LiteRT with
       XNNPACK, `num_threads` threads, after warm-up) are fixed by the
       architecture. A candidate over budget is discarded: it never trains.
    3. **Trained within budget**: `kd.tune(budget=recipes)` trains the
       candidate on the labels alone and distilled with the first `recipes`
       recipes of the study's ranking, and keeps a distilled one only if it
       beats labels alone by more than its `margin` (the same floor as
       `kd.tune`). The student is exported again and measured again (a
       latency near the budget can land on either side), and scored by the
       top-1 accuracy of its `.tflite` file on `validation_data`.
    4. **The result**: the most accurate file within budget (ties: the
       smaller, then the faster). A student over budget is never returned;
       when no candidate fits, a `ValueError` names the smallest candidate's
       size and the fastest one's latency.

    The latency is this machine's, not a phone's; a budget in ms is only
    meaningful against figures measured on the same kind of processor.

    Args:
        teacher: the trained teacher, a `keras.Model` (frozen).
        student_fn: `student_fn(hp)` returning a new, untrained classifier
            for keras-tuner `HyperParameters` `hp` (or `student_fn()`: one
            candidate).
        train_data: `(x, y)` numpy arrays or a `tf.data.Dataset` of batches.
        validation_data: the same kinds; candidates are scored on it.
        loss: the hard-label loss (as in `keras.Model.compile`).
        max_bytes: the largest `.tflite` file, in bytes (an int > 0), or
            None.
        max_latency_ms: the largest median latency of one sample, in ms (a
            number > 0), or None. At least one budget is required.
        quantization: as in `kd.export.to_tflite`; default `"int8"`.
        num_threads: the interpreter's threads for the latency (>= 1).
        candidates: None (the grid `student_fn` declares), or a list of
            dicts of hyperparameter values, searched in that order.
        representative_data: calibration samples for the full-integer
            modes; None: `train_data`.
        export_options: further `kd.export.to_tflite` keywords for every
            file (e.g. `{"labels": names, "normalization": (0.5, 0.5)}`).
        recipes: distilled trials per candidate (`kd.tune`'s int budget).
        max_epochs: the epochs of each training.
        optimizer, metrics, monitor, batch_size, seed, margin: as in
            `kd.tune`. With a `seed`, each candidate is built from it.
        latency_runs: timed invocations per measurement (>= 1).
        directory: where the candidates' files are written (`c00.tflite`,
            ...); None: a temporary directory, removed at the end.
        verbose: 0 (silent), 1 (a line per candidate) or 2 (also `kd.tune`'s
            lines).

    Returns:
        A `BudgetResult`: `student`, `candidate`, `candidates`, `tflite`
        (the file's bytes), `table()`, `pareto(by)`, `plot(path)`,
        `save_tflite(path)`.

    Raises:
        TypeError, ValueError: for bad arguments (a budget <= 0 among them),
            before anything is exported; ValueError when no candidate fits.

    Example:

    ```python
    def student_fn(hp):
        width = hp.Choice("width", [4, 8, 16])
        depth = hp.Int("depth", 1, 2)
        ...
        return model

    result = kd.tune_for_budget(teacher, student_fn, (x, y), (x_val, y_val),
                                loss=loss, max_bytes=64 * 1024,
                                quantization="int8")
    print(result.table())
    result.plot("pareto.png")
    result.save_tflite("student.tflite")
    ```
    """
    _utils.check_model(teacher, "teacher")
    max_bytes, max_latency_ms = check_budget(max_bytes, max_latency_ms)
    options = check_options(
        quantization, export_options, candidates, recipes, num_threads, validation_data
    )
    _utils.check_int(latency_runs, "latency_runs", 1, "timed invocations")
    verbose = _utils.check_int(verbose, "verbose", 0)
    build = Builder(student_fn, seed)
    grid = [dict(c) for c in candidates] if candidates is not None else build.grid()
    calibration = train_data if representative_data is None else representative_data
    exporter = Exporter(
        quantization=quantization,
        representative_data=calibration,
        validation_data=validation_data,
        num_threads=num_threads,
        latency_runs=latency_runs,
        options=options,
        max_bytes=max_bytes,
        max_latency_ms=max_latency_ms,
    )
    tune_args = dict(
        teacher=teacher,
        train_data=train_data,
        validation_data=validation_data,
        loss=loss,
        optimizer=optimizer,
        metrics=metrics,
        monitor=monitor,
        budget=recipes,
        max_epochs=max_epochs,
        batch_size=batch_size,
        seed=seed,
        margin=margin,
        verbose=max(verbose - 1, 0),
    )
    temporary = directory is None
    directory = _work_directory(directory)
    try:
        rows, best, student, content = _search(
            build, grid, exporter, directory, verbose, tune_args
        )
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return BudgetResult(
        student=student,
        candidate=best,
        candidates=rows,
        tflite=content,
        max_bytes=max_bytes,
        max_latency_ms=max_latency_ms,
        quantization=quantization or "float32",
        num_threads=num_threads,
    )


def _work_directory(directory) -> str:
    """`directory` as a str, or a new temporary one for None."""
    if directory is None:
        return tempfile.mkdtemp(prefix="keras_kd_budget_")
    return os.fspath(directory)


def _search(build, grid, exporter, directory, verbose, tune_args):
    """`(rows, best row, its student, its file's bytes)`: every candidate
    measured untrained, those within budget trained, the best returned."""
    rows = _measure_untrained(build, grid, exporter, directory, verbose)
    fitting = [r for r in rows if r["status"] is None]
    if not fitting:
        raise nothing_fits(rows, exporter)
    students = {
        row["id"]: _train(row, build, exporter, directory, verbose, tune_args)
        for row in fitting
    }
    best = mark_fronts(rows)
    if best is None:
        raise nothing_fits(rows, exporter)
    with open(os.path.join(directory, f"{best['id']}.tflite"), "rb") as f:
        content = f.read()
    return rows, best, students[best["id"]], content


def _measure_untrained(build, grid, exporter, directory, verbose) -> list:
    """One row per candidate: built, exported untrained and measured."""
    rows = []
    for index, values in enumerate(grid):
        model = build(values)
        row = {
            "id": f"c{index:02d}",
            "hyperparameters": dict(values),
            "params": int(model.count_params()),
        }
        path = os.path.join(directory, f"{row['id']}.tflite")
        row.update(_measure_fresh(model, exporter, path, row, index))
        row["untrained_size_bytes"] = row["size_bytes"]
        row.update(
            status=exporter.over(row),
            error=None,
            recipe=None,
            score=None,
            accuracy=None,
            pareto_size=False,
            pareto_latency=False,
            selected=False,
        )
        if verbose:
            print(
                f"{row['id']} {values_text(values)}: {row['params']:,} params, "
                f"{row['size_bytes']:,} bytes, {row['latency_ms']:.3g} ms"
                + (f" -> {row['status']}, not trained" if row["status"] else "")
            )
        rows.append(row)
    return rows


def _measure_fresh(model, exporter, path, row, index) -> dict:
    """The untrained candidate's figures. Its weights are arbitrary, so a draw
    that LiteRT refuses (a layer that never fires, calibrated to one value
    under int8) is drawn again; the figures do not depend on the values."""
    fill_zero_weights(model, index)
    for draw in range(UNTRAINED_DRAWS):
        try:
            return exporter.measure(model, path)
        except RuntimeError as error:
            failure = error
        redraw_weights(model, UNTRAINED_DRAWS * index + draw)
    raise RuntimeError(
        f"Candidate {row['id']} ({values_text(row['hyperparameters'])}) does "
        f"not export as a {exporter.quantization or 'float32'} .tflite file "
        f"with {UNTRAINED_DRAWS} draws of its untrained weights: {failure}"
    ) from failure


def _train(row, build, exporter, directory, verbose, tune_args):
    """Trains a candidate within budget with `kd.tune`, exports and measures
    the trained student, and fills in its row; returns the student."""
    values = row["hyperparameters"]
    result = tune(student_fn=lambda: build(values), **tune_args)
    student = result.student
    row["recipe"] = recipe_text(result.config)
    row["score"] = float(result.best_score)
    path = os.path.join(directory, f"{row['id']}.tflite")
    try:
        row.update(exporter.measure(student, path))
    except RuntimeError as error:
        # E.g. a layer that collapsed in training and calibrates to one value
        # under int8: there is no file to ship, so it cannot be returned.
        row["status"], row["error"] = "not exportable after training", str(error)
    else:
        over = exporter.over(row)
        row["status"] = f"{over} after training" if over else "trained"
        if not over:
            row["accuracy"] = evaluate_tflite(
                path, exporter.validation_data, num_threads=exporter.num_threads
            )
    if verbose:
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
        print(
            f"{row['id']} trained ({row['recipe']}): .tflite accuracy "
            f"{accuracy}, {row['status']}"
        )
    return student


__all__ = ["BudgetResult", "tune_for_budget"]
