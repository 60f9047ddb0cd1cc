"""How `keras_kd.tune` decides that a distilled trial beats the baseline.

A trial replaces the baseline (the student trained on the labels alone)
only if its gain in the monitored score exceeds a **margin**:

* `"paired"`: the margin is the validation noise, from a paired one-sided
  test at 5% on the per-example values of the two students (the baseline's
  and the trial's) on the same validation examples. For an accuracy,
  McNemar's test (normal approximation): with `b` the examples the baseline
  gets right and the trial wrong and `c` the reverse, the trial is better
  iff `c - b > 1.645 * sqrt(b + c)`; in the monitor's units the margin is
  `1.645 * sqrt(b + c) / n`. For `val_hard_loss`, a paired z-test on the
  per-example hard losses: the margin is `1.645 * std(d, ddof=1) / sqrt(n)`
  and the trial is better iff the mean improvement `mean(d)` exceeds it.
* `"fixed"`: a number given in the monitor's units; 0.0 is the strict rule
  (any gain at all).

`check_monitor` checks the value trials are ranked by; `Selection` holds
the rule of one `tune` call; `mcnemar` and `paired_z` are the tests on
per-example values. Users import nothing from here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from keras_kd import _batches
from keras_kd.backend import keras, tf

# The one-sided 5% quantile of the standard normal, as the tests state it.
Z = 1.645

MARGINS = ("auto", "paired")

# Per-example correctness by metric name (strings and Keras's functions).
# "auto": Keras's own choice for "accuracy" from the labels' and outputs'
# shapes (binary, sparse categorical or categorical).
_ACCURACY_NAMES = {
    "accuracy": "auto",
    "acc": "auto",
    "sparse_categorical_accuracy": "sparse",
    "categorical_accuracy": "categorical",
    "binary_accuracy": "binary",
}


class NotPaired(Exception):
    """The paired test cannot work here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A trial against the baseline: the margin its gain had to exceed (in
    the monitor's units) and whether it did."""

    margin: float
    significant: bool


# ---------------------------------------------------------------------------
# The tests on per-example values
# ---------------------------------------------------------------------------


def mcnemar(baseline_correct, trial_correct) -> Comparison:
    """McNemar's test (normal approximation, one-sided at 5%).

    Args:
        baseline_correct: per-example correctness of the baseline (bools).
        trial_correct: the trial's, on the same examples in the same order.

    Returns:
        A `Comparison`: margin `1.645 * sqrt(b + c) / n`, significant iff
        `c - b > 1.645 * sqrt(b + c)` (so `c > b`), with `b` the examples
        only the baseline gets right and `c` those only the trial does.
    """
    base = np.asarray(baseline_correct, bool).reshape(-1)
    trial = np.asarray(trial_correct, bool).reshape(-1)
    n = base.size
    if n == 0:
        return Comparison(math.inf, False)
    b = int(np.sum(base & ~trial))
    c = int(np.sum(~base & trial))
    threshold = Z * math.sqrt(b + c)
    return Comparison(threshold / n, c - b > 0 and c - b > threshold)


def paired_z(baseline_values, trial_values, lower_is_better=True) -> Comparison:
    """A paired one-sided z-test at 5% on per-example values (e.g. losses).

    Args:
        baseline_values: the baseline's per-example values.
        trial_values: the trial's, on the same examples in the same order.
        lower_is_better: True for losses.

    Returns:
        A `Comparison`: with `d` the per-example improvement (baseline minus
        trial for losses), margin `1.645 * std(d, ddof=1) / sqrt(n)` and
        significant iff `mean(d)` exceeds it. Fewer than two examples, or a
        non-finite value, give an infinite (or nan) margin: never
        significant.
    """
    base = np.asarray(baseline_values, np.float64).reshape(-1)
    trial = np.asarray(trial_values, np.float64).reshape(-1)
    d = base - trial if lower_is_better else trial - base
    if d.size < 2:
        return Comparison(math.inf, False)
    margin = float(Z * np.std(d, ddof=1) / math.sqrt(d.size))
    gain = float(np.mean(d))
    return Comparison(margin, bool(gain > 0 and gain > margin))


def fixed(gain: float, margin: float) -> Comparison:
    """The fixed rule: significant iff `gain` (a number) exceeds `margin`."""
    return Comparison(margin, bool(not math.isnan(gain) and gain > margin))


def best_distilled(records, mode: str):
    """The best-scoring distilled trial's record (by score, nan excluded;
    among ties one that cleared its margin, else the first), or None."""
    scored = [r for r in records if not r["is_baseline"] and not math.isnan(r["score"])]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda r: (sign * r["score"], r["significant"]))


# ---------------------------------------------------------------------------
# Per-example values
# ---------------------------------------------------------------------------


def accuracy_kind(y_shape, y_pred_shape) -> str:
    """Keras's choice for the metric "accuracy" (both flavours' rule)."""
    if y_pred_shape[-1] == 1:
        return "binary"
    if len(y_shape) < len(y_pred_shape) or (y_shape[-1] == 1 and y_pred_shape[-1] > 1):
        return "sparse"
    return "categorical"


def correct(kind: str, y, y_pred, threshold: float = 0.5) -> np.ndarray:
    """Per-example correctness, as Keras's accuracy metric of `kind` decides.

    `"sparse"`: `argmax(y_pred) == y`; `"categorical"`: `argmax(y_pred) ==
    argmax(y)`; `"binary"`: `(y_pred > threshold) == y` on the outputs as
    they are (probabilities; outputs that are logits are thresholded at
    `threshold` too, as `keras.metrics.BinaryAccuracy` does); `"auto"`:
    Keras's choice for "accuracy". Raises `NotPaired` unless each example
    has one verdict.
    """
    y, p = np.asarray(y), np.asarray(y_pred)
    if kind == "auto":
        kind = accuracy_kind(y.shape, p.shape)
    n = p.shape[0] if p.ndim else 0
    if kind == "binary":
        y, p = y.reshape(len(y), -1), p.reshape(n, -1)
        if y.shape != (n, 1) or p.shape != (n, 1):
            raise NotPaired(
                "binary accuracy over several labels per example (shapes "
                f"{y.shape} and {p.shape}) gives no single verdict per example"
            )
        return y[:, 0] == (p[:, 0] > threshold)
    if kind == "sparse" and y.ndim == p.ndim:
        y = y[..., 0]
    labels = y if kind == "sparse" else np.argmax(y, axis=-1)
    if labels.shape != (n,) or p.ndim != 2:
        raise NotPaired(
            f"{kind} accuracy of labels shaped {y.shape} and outputs shaped "
            f"{p.shape} gives no single verdict per example"
        )
    return np.argmax(p, axis=-1) == labels


def per_example_loss_fn(loss):
    """A function `(y, y_pred) -> losses` without reduction, from the
    `loss` given to `tune`; raises `NotPaired` where none can be made."""
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except (ValueError, TypeError) as e:
            raise NotPaired(f"the loss {loss!r} has no per-example form") from e
    if isinstance(loss, keras.losses.Loss):
        config = dict(loss.get_config(), reduction="none")
        try:
            return type(loss).from_config(config)
        except (TypeError, ValueError) as e:
            raise NotPaired(
                f"the loss {loss!r} cannot be rebuilt with reduction='none'"
            ) from e
    if callable(loss):  # a Keras loss function: one value per example
        return loss
    raise NotPaired(f"the loss {loss!r} is not one loss (several outputs?)")


def per_example_losses(loss_fn, y, y_pred) -> np.ndarray:
    """One hard loss per example: `loss_fn`'s values, averaged over any axes
    after the batch's (which is how a summed-over-batch-size mean reads
    them)."""
    n = int(np.shape(y_pred)[0])
    values = _batches.to_numpy(
        loss_fn(tf.convert_to_tensor(y), tf.cast(y_pred, tf.float32))
    )
    values = np.asarray(values, np.float64)
    if values.ndim == 0 or values.shape[0] != n:
        raise NotPaired(
            "the loss returns one value per batch, not one per example "
            f"(shape {values.shape} for a batch of {n})"
        )
    return values.reshape(n, -1).mean(axis=1)


# ---------------------------------------------------------------------------
# The rule of one `tune` call
# ---------------------------------------------------------------------------


def check_margin(margin):
    """`tune`'s `margin`: `"auto"`, `"paired"` or a number >= 0 (a float)."""
    if isinstance(margin, str):
        if margin not in MARGINS:
            raise ValueError(
                "Argument `margin` must be 'auto', 'paired' or a number >= 0 "
                f"in the monitor's units. Received: margin={margin!r}."
            )
        return margin
    if isinstance(margin, (bool, np.bool_)) or not isinstance(margin, numbers.Real):
        raise TypeError(
            "Argument `margin` must be 'auto', 'paired' or a number >= 0 in "
            f"the monitor's units. Received: margin={margin!r} of type "
            f"{type(margin).__name__}."
        )
    if math.isnan(margin) or margin < 0:
        raise ValueError(
            "Argument `margin` must be a number >= 0 (the gain over the "
            "baseline a trial must exceed, in the monitor's units), 'auto' or "
            f"'paired'. Received: margin={margin}."
        )
    return float(margin)


def check_monitor(monitor, mode):
    """`(monitor, mode)` of `tune`, checked: a comparable validation value."""
    if not isinstance(monitor, str) or not monitor.startswith("val_"):
        raise (ValueError if isinstance(monitor, str) else TypeError)(
            "Argument `monitor` must name a validation value, a string such "
            "as 'val_accuracy': trials are ranked on `validation_data`. "
            f"Received: monitor={monitor!r}."
        )
    if monitor in ("val_loss", "val_distillation_loss"):
        raise ValueError(
            f"Argument `monitor` cannot be {monitor!r}: a Distiller's `loss` "
            "and `distillation_loss` depend on the trial's objective and "
            "alpha, so they do not compare trials. Use 'val_hard_loss' (the "
            "hard-label loss, mode='min') or a metric such as 'val_accuracy'."
        )
    if mode not in ("max", "min"):
        raise ValueError(
            "Argument `mode` must be 'max' (higher `monitor` is better) or "
            f"'min' (lower is better). Received: mode={mode!r}."
        )
    return monitor, mode


def _statistic(monitor: str, metrics, loss):
    """`(kind, threshold)` of the per-example values behind `monitor`:
    kind `"hard_loss"` or an accuracy kind; raises `NotPaired`."""
    name = monitor[len("val_") :]
    if name == "hard_loss":
        return "hard_loss", None
    if isinstance(metrics, (str, keras.metrics.Metric)) or callable(metrics):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        raise NotPaired("the metrics are per output (a dict)")
    for metric in metrics:
        if isinstance(metric, str) and metric == name:
            if metric in _ACCURACY_NAMES:
                return _ACCURACY_NAMES[metric], 0.5
        elif isinstance(metric, keras.metrics.Metric) and metric.name == name:
            for cls, kind in (
                (keras.metrics.SparseCategoricalAccuracy, "sparse"),
                (keras.metrics.CategoricalAccuracy, "categorical"),
                (keras.metrics.BinaryAccuracy, "binary"),
            ):
                if isinstance(metric, cls):
                    return kind, float(metric.get_config().get("threshold", 0.5))
        elif callable(metric) and getattr(metric, "__name__", None) == name:
            if name in _ACCURACY_NAMES:
                return _ACCURACY_NAMES[name], 0.5
    raise NotPaired(
        f"{monitor!r} is neither 'val_hard_loss' nor a sparse categorical, "
        "categorical or binary accuracy among `metrics`"
    )


def _check_labels(validation: dict) -> None:
    """Raises `NotPaired` unless the validation data are `(x, y)` with one
    array of labels and no sample weights."""
    if "y" in validation:
        if "sample_weight" in validation:
            raise NotPaired("`validation_data` has sample weights")
        if isinstance(validation["y"], (dict, list, tuple)):
            raise NotPaired("`validation_data` has labels for several outputs")
        return
    spec = validation["x"].element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise NotPaired(
            "`validation_data` yields batches that are not `(x, y)` pairs "
            "(sample weights, or no labels)"
        )
    if not isinstance(spec[1], tf.TensorSpec):
        raise NotPaired("`validation_data` has labels for several outputs")


def validation_batches(validation: dict):
    """`(x, y)` batches of `validation` (what `fit_arguments` made): numpy
    slices of `batch_size`, or the dataset's batches."""
    if "y" in validation:
        x, y, size = (
            validation["x"],
            np.asarray(validation["y"]),
            validation["batch_size"],
        )
        for start in range(0, len(y), size):
            part = slice(start, start + size)
            yield tf.nest.map_structure(lambda a, part=part: a[part], x), y[part]
    else:
        for element in validation["x"]:
            yield element[0], _batches.to_numpy(element[1])


class Selection:
    """The rule of one `tune` call, and its comparisons with the baseline.

    Made by `Selection.create` from `tune`'s arguments (checked: `monitor`,
    `mode`, `validation` as `fit_arguments` made it). `probe` tries the
    paired rule on the first validation batch with the untrained baseline
    student, before any training; `compare` judges one trial.

    With `margin="auto"`, a rule that cannot be paired falls back to the
    fixed margin 0.0 (the strict rule); with `margin="paired"` it is a
    `ValueError` naming `margin` and the reason.
    """

    def __init__(self, requested, *, monitor, mode, validation):
        self.requested = requested  # "auto", "paired" or a float
        self.monitor, self.mode, self.validation = monitor, mode, validation
        self.margin = None if isinstance(requested, str) else requested
        self.statistic = None  # (kind, threshold) while paired
        self.loss_fn = None  # the per-example hard loss, for val_hard_loss

    @classmethod
    def create(cls, margin, *, monitor, mode, metrics, loss, validation):
        """The rule of `tune`'s `margin`, checked; raises `ValueError` /
        `TypeError` naming `margin`."""
        selection = cls(
            check_margin(margin), monitor=monitor, mode=mode, validation=validation
        )
        if selection.margin is not None:
            return selection
        try:
            statistic = _statistic(monitor, metrics, loss)
            _check_labels(validation)
            if statistic[0] == "hard_loss":
                selection.loss_fn = per_example_loss_fn(loss)
            selection.statistic = statistic
        except NotPaired as reason:
            selection._not_paired(reason)
        return selection

    @property
    def name(self) -> str:
        """`"paired"` or `"fixed"`."""
        return "fixed" if self.statistic is None else "paired"

    def _not_paired(self, reason):
        if self.requested == "paired":
            raise ValueError(
                "Argument `margin` is 'paired', which compares the per-example "
                "validation values of the baseline and each trial, but "
                f"{reason}. It works for monitor='val_hard_loss' and for "
                "sparse categorical, categorical or binary accuracies, with "
                "one array of labels and no sample weights. Received: "
                f"margin='paired', monitor={self.monitor!r}. Use margin='auto' "
                "(the paired test where it works, else 0.0) or a number."
            ) from reason
        self.statistic, self.margin = None, 0.0

    def probe(self, student) -> None:
        """Checks the paired rule on one validation batch (before training)."""
        if self.statistic is None:
            return
        try:
            for x, y in validation_batches(self.validation):
                values = self._values(student, x, y)
                if len(values) != len(y):
                    raise NotPaired(
                        f"a batch of {len(y)} examples gave {len(values)} values"
                    )
                return
            raise NotPaired("`validation_data` is empty")
        except NotPaired as reason:
            self._not_paired(reason)

    def _values(self, model, x, y) -> np.ndarray:
        y_pred = _batches.to_numpy(model(x, training=False))
        kind, threshold = self.statistic
        if kind == "hard_loss":
            return per_example_losses(self.loss_fn, y, y_pred)
        return correct(kind, y, y_pred, threshold)

    def compare(self, baseline, student, gain: float) -> Comparison:
        """Judges a trial's `student` against the `baseline` student.

        Args:
            baseline: the baseline's student.
            student: the trial's.
            gain: the trial's score minus the baseline's, signed so that
                positive is better (nan for a nan score: never significant).
        """
        if math.isnan(gain):
            return Comparison(math.nan, False)
        if self.statistic is None:
            return fixed(gain, self.margin)
        base, trial = [], []  # only these two vectors are kept
        for x, y in validation_batches(self.validation):
            base.append(self._values(baseline, x, y))
            trial.append(self._values(student, x, y))
        base, trial = np.concatenate(base), np.concatenate(trial)
        if self.statistic[0] == "hard_loss":
            return paired_z(base, trial, lower_is_better=self.mode == "min")
        if self.mode == "min":
            return mcnemar(trial, base)
        return mcnemar(base, trial)
