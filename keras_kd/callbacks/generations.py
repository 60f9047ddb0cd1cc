"""The generation plan of self-distillation, in plain Python.

Which epoch belongs to which generation, each generation's alpha and
temperature, which earlier generations teach a generation, how a generation
that stops early moves the later ones forward, and which generation was the
best by a monitored metric. Nothing here touches TensorFlow or Keras: the
Keras hooks of `keras_kd.callbacks.SelfDistillation` ask the plan and act on
its answers, and the plan is tested on its own (`tests/test_generations.py`).

This module imports only the standard library; callers validate the
arguments their users give (the plan receives checked values).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

MODES = ("auto", "min", "max")

# The metrics whose direction `mode="auto"` knows: the default names of
# Keras's built-in metrics, whose direction Keras's own callbacks infer
# (`keras/src/callbacks/monitor_callback.py`), with or without "val_".
# Any other name is ambiguous and needs `mode="min"` or `mode="max"`.
_HIGHER_IS_BETTER = frozenset(
    {
        "accuracy",
        "acc",
        "binary_accuracy",
        "categorical_accuracy",
        "sparse_categorical_accuracy",
        "top_k_categorical_accuracy",
        "sparse_top_k_categorical_accuracy",
        "auc",
        "precision",
        "recall",
        "f1_score",
        "fbeta_score",
        "r2_score",
        "pearson_correlation",
        "concordance_correlation",
        "cosine_similarity",
    }
)
_LOWER_IS_BETTER = frozenset(
    {
        "loss",
        "binary_crossentropy",
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "kl_divergence",
        "poisson",
        "hinge",
        "squared_hinge",
        "categorical_hinge",
        "mean_squared_error",
        "mean_absolute_error",
        "mean_absolute_percentage_error",
        "mean_squared_logarithmic_error",
        "root_mean_squared_error",
        "logcosh",
        "log_cosh",
    }
)


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """The direction in which `monitor` improves: "min" or "max".

    As Keras's callbacks do, `mode="auto"` infers the direction only where it
    is known: losses ("loss", "val_loss", any name ending in "_loss", such as
    the Distiller's "distillation_loss") improve downwards, and Keras's
    built-in metrics by their default names ("accuracy", "auc",
    "mean_squared_error"...) in their own direction. Any other name is an
    error that asks for `mode`, never a guess.

    Args:
        monitor: the name of a logged metric, e.g. "val_accuracy".
        mode: "auto", "min" or "max".

    Returns:
        "min" or "max".

    Raises:
        TypeError: `monitor` is not a string.
        ValueError: `mode` is not one of "auto", "min", "max", or it is
            "auto" and the direction of `monitor` is not known.

    Example:

    >>> monitor_mode("val_accuracy")
    'max'
    >>> monitor_mode("val_f1", mode="max")
    'max'
    """
    if not isinstance(monitor, str):
        raise TypeError(
            "Argument `monitor` must be the name of a logged metric, e.g. "
            f"'val_loss'. Received: monitor={monitor!r} of type "
            f"{type(monitor).__name__}."
        )
    if mode not in MODES:
        raise ValueError(
            f"Argument `mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}."
        )
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name in _LOWER_IS_BETTER or name.endswith("_loss"):
        return "min"
    if name in _HIGHER_IS_BETTER:
        return "max"
    raise ValueError(
        f"Cannot tell whether `monitor={monitor!r}` should be maximized or "
        "minimized: mode='auto' knows the direction of losses (e.g. "
        "'val_loss') and of Keras's built-in metrics (e.g. 'val_accuracy') "
        "only. Pass `mode='max'` if higher values are better, or "
        "`mode='min'` if lower values are. Received: mode='auto'."
    )


def per_generation(value, generations: int, argument: str, check: Callable) -> list:
    """One value per generation, from one value, a list of them, or None.

    Args:
        value: None (keep the compiled setting in every generation), a single
            value for every generation, or a list / tuple with one entry (a
            value or None) per generation.
        generations: the number of generations.
        argument: the argument's name, for messages.
        check: `check(value, argument)` validates one value and returns it.

    Returns:
        A list of `generations` values (None where the setting is kept).

    Example:

    >>> per_generation([None, 0.5], 2, "alpha", lambda v, a: float(v))
    [None, 0.5]
    """
    if value is None:
        return [None] * generations
    if isinstance(value, (list, tuple)):
        if len(value) != generations:
            raise ValueError(
                f"Argument `{argument}` must have one value per generation "
                f"({generations}). Received {len(value)} values: "
                f"{argument}={list(value)}."
            )
        return [
            None if v is None else check(v, f"{argument}[{i}]")
            for i, v in enumerate(value)
        ]
    return [check(value, argument)] * generations


class GenerationPlan:
    """Which generation trains when, with what, and which one was best.

    Generation `g` (1-based) trains from epoch `first_epoch(g)` to
    `last_epoch(g)` (0-based, inclusive); a generation that ends early moves
    the later ones forward (`end_early`). Each finished generation's final
    metrics are `record`ed; `best_generation` picks among them by `monitor`.
    `state` / `restore` carry the plan across an interrupted run.

    Args:
        generations: the number of generations (a checked int >= 1).
        epochs_per_generation: epochs in each generation (a checked int >= 1).
        alphas: None, or one distillation weight (or None: keep the
            compiled one) per generation.
        temperatures: None, or one temperature (or None) per generation.
        ensemble: generation `g` is taught by all of generations 1 to g - 1
            (BANE) instead of generation g - 1 alone.
        monitor: the metric that decides the best generation, or None when no
            best generation is wanted. When given, every recorded generation
            must have logged it.
        mode: "auto", "min" or "max": the direction of `monitor` (see
            `monitor_mode`).

    Example:

    >>> plan = GenerationPlan(3, 2)
    >>> [plan.generation_of_epoch(e) for e in range(6)]
    [1, 1, 2, 2, 3, 3]
    """

    def __init__(
        self,
        generations: int,
        epochs_per_generation: int,
        alphas=None,
        temperatures=None,
        ensemble: bool = False,
        monitor: str | None = None,
        mode: str = "auto",
    ):
        self.generations = generations
        self.epochs_per_generation = epochs_per_generation
        self.alphas = self._one_per_generation(alphas, "alphas")
        self.temperatures = self._one_per_generation(temperatures, "temperatures")
        self.ensemble = bool(ensemble)
        self.monitor = monitor
        self.mode = None if monitor is None else monitor_mode(monitor, mode)
        self.starts = [g * epochs_per_generation for g in range(generations)]
        self.results = []

    def _one_per_generation(self, values, argument):
        if values is None:
            return [None] * self.generations
        values = list(values)
        if len(values) != self.generations:
            raise ValueError(
                f"Argument `{argument}` must have one entry per generation "
                f"({self.generations}). Received: {argument}={values}."
            )
        return values

    # -- epochs ----------------------------------------------------------

    def generation_of_epoch(self, epoch: int) -> int:
        """The (1-based) generation that trains in `epoch` (0-based)."""
        generation = 1
        for g, start in enumerate(self.starts, start=1):
            if epoch >= start:
                generation = g
        return generation

    def first_epoch(self, generation: int) -> int:
        """The epoch in which `generation` starts."""
        return self.starts[generation - 1]

    def last_epoch(self, generation: int) -> int:
        """The last epoch `generation` trains in, unless it ends early."""
        return self.starts[generation - 1] + self.epochs_per_generation - 1

    def is_last(self, generation: int) -> bool:
        """Whether the run ends with `generation`."""
        return generation >= self.generations

    def end_early(self, generation: int, epoch: int) -> int:
        """`generation` ends after `epoch`: the later generations move forward.

        Returns:
            The number of epochs the later generations start earlier.
        """
        shift = max(self.last_epoch(generation) - epoch, 0)
        for index in range(generation, self.generations):
            self.starts[index] -= shift
        return shift

    # -- what each generation trains with ----------------------------------

    def alpha(self, generation: int):
        """The distillation weight of `generation`, or None: keep the current."""
        return self.alphas[generation - 1]

    def temperature(self, generation: int):
        """The temperature of `generation`, or None: keep the current."""
        return self.temperatures[generation - 1]

    def teachers(self, generation: int) -> list:
        """The earlier generations whose students teach `generation`."""
        if generation <= 1:
            return []
        if self.ensemble:
            return list(range(1, generation))
        return [generation - 1]

    # -- results -----------------------------------------------------------

    def is_finished(self, generation: int) -> bool:
        """Whether `generation`'s result has been recorded."""
        return any(r["generation"] == generation for r in self.results)

    @property
    def finished(self) -> list:
        """The recorded generations, in order."""
        return sorted(r["generation"] for r in self.results)

    def record(self, generation: int, last_epoch, metrics: Mapping) -> dict:
        """Records the final metrics of `generation`.

        Args:
            generation: the generation that finished.
            last_epoch: the last epoch it trained in, or None if unknown.
            metrics: its last epoch's logs (numbers).

        Returns:
            The result: a dict with "generation", "first_epoch",
            "last_epoch" and "metrics" (floats).

        Raises:
            ValueError: a `monitor` was given and `metrics` lacks it.
        """
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.monitor is not None and self.monitor not in metrics:
            hint = (
                " Metrics named 'val_...' need `validation_data` in `fit`."
                if self.monitor.startswith("val_")
                else ""
            )
            raise ValueError(
                f"The best generation is chosen by `monitor={self.monitor!r}`, "
                f"but generation {generation} logged no such metric. "
                f"Available: {sorted(metrics)}.{hint} Pass `monitor=` one of "
                "the available names."
            )
        result = {
            "generation": generation,
            "first_epoch": self.first_epoch(generation),
            "last_epoch": last_epoch,
            "metrics": metrics,
        }
        self.results = [r for r in self.results if r["generation"] != generation]
        self.results.append(result)
        self.results.sort(key=lambda r: r["generation"])
        return result

    def best_generation(self) -> int:
        """The recorded generation with the best `monitor` value.

        The lowest value for mode "min", the highest for "max"; the earliest
        generation on a tie, and a NaN is never better than a number.

        Raises:
            ValueError: there is no `monitor`, or no recorded generation
                logged it.
        """
        if self.monitor is None:
            raise ValueError(
                "The plan has no `monitor`: it cannot choose a best generation."
            )
        scored = [
            (r["metrics"][self.monitor], r["generation"])
            for r in self.results
            if self.monitor in r["metrics"]
        ]
        if not scored:
            available = sorted(self.results[-1]["metrics"]) if self.results else []
            raise ValueError(
                f"No generation logged `monitor={self.monitor!r}`. "
                f"Available: {available}."
            )
        best_value, best = scored[0]
        for value, generation in scored[1:]:
            if math.isnan(value):
                continue
            better = value > best_value if self.mode == "max" else value < best_value
            if better or math.isnan(best_value):
                best_value, best = value, generation
        return best

    # -- resuming ------------------------------------------------------------

    def state(self) -> dict:
        """What a resumed run needs, as JSON-serialisable values."""
        return {
            "starts": list(self.starts),
            "finished": self.finished,
            "results": copy.deepcopy(self.results),
        }

    def restore(self, state: Mapping) -> None:
        """Takes back the `state()` of an interrupted run's plan."""
        starts = list(state["starts"])
        if len(starts) != self.generations:
            raise ValueError(
                f"The saved self-distillation state has {len(starts)} "
                f"generations; this run has {self.generations}. Resume with "
                "the same `generations` as the interrupted run."
            )
        self.starts = starts
        self.results = copy.deepcopy(list(state["results"]))
