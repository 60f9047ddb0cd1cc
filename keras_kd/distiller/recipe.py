"""`compile`'s default recipe, and what ran: `Recipe`.

When `Distiller.compile` is given no `distillation_loss`, it uses KL at T=1
(with alpha 0.5 unless `alpha` is given). The study of
`benchmarks/recipes.py --study` (BENCHMARKS.md, "The default recipe
study": nine tasks, two student sizes, 27 recipes, 3 seeds) looked for a
rule that takes the gains of DIST where the student is far smaller than its
teacher, from what compile can see (the parameter ratio, the number of
classes) or from a short probe run, and found none that does it without
losing 2 to 6 points on some task where no such signal warned of it: so the
default stays, and `kd.tune(budget=12)` is how to take the gain (never
below training alone on average in the study, +2.8 points on average).

What ran is a `Recipe`, kept as `Distiller.recipe` and printed once by the
first `fit` with `verbose` on; for a student of at most `SMALL_STUDENT` of
its teacher's parameters it says that `kd.tune` is worth its cost.
"""

from __future__ import annotations

import dataclasses

from keras_kd import _utils
from keras_kd.losses import KLDivergence

# compile's default: KL, T=1, alpha 0.5 (keras-kd 0.1 and 0.2, kept by the study).
DEFAULT = ("kl", 1.0, 0.5)
# The parameter share under which the printed recipe suggests `kd.tune`: the
# study's "10%" and "1%" students are at or under it.
SMALL_STUDENT = 0.12

_NAMES = {"kl": "KL", "KLDivergence": "KL", "DIST": "DIST"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A distillation recipe: objective, temperature and alpha, and why.

    Attributes:
        objective: `"kl"` for compile's default; for a loss given to
            `compile`, its class name (several, joined by `" / "`).
        temperature: the objective's temperature (None if it has none).
        alpha: the weight of the distillation term.
        reason: why this recipe ran, in words.
    """

    objective: str
    temperature: float | None
    alpha: float
    reason: str = ""

    def loss(self):
        """A new loss object of compile's default objective."""
        return KLDivergence(temperature=self.temperature)

    @property
    def label(self) -> str:
        """Short form, as the study names recipes: `"KL T=1 a=0.5"`."""
        name = _NAMES.get(self.objective, self.objective)
        t = "" if self.temperature is None else f" T={self.temperature:g}"
        return f"{name}{t} a={self.alpha:g}"

    def __str__(self) -> str:
        name = _NAMES.get(self.objective, self.objective)
        t = "" if self.temperature is None else f" T={self.temperature:g}"
        why = f": {self.reason}" if self.reason else ""
        return f"{name}{t}, alpha={self.alpha:g}{why}"


def choose(teachers, student) -> Recipe:
    """compile's default recipe for these models, with its reason: for a
    student of at most `SMALL_STUDENT` of the largest teacher's parameters,
    the advice to try `kd.tune(budget=12)`."""
    ratio = _ratio(teachers, student)
    reason = "compile's default"
    if ratio is not None and ratio <= SMALL_STUDENT:
        reason += (
            f"; the student has {100 * ratio:.1f}% of the teacher's parameters: "
            "kd.tune(..., budget=12) is worth trying (BENCHMARKS.md, "
            "'The default recipe study')"
        )
    return Recipe(*DEFAULT, reason)


def from_compile(distillation_loss, alpha, teachers, student) -> tuple:
    """`(distillation_loss, alpha, recipe, by_default)` from compile's
    arguments: those given, or compile's default (`choose`); `by_default`
    says whether the default was used (printed once by a verbose `fit`)."""
    if alpha is not None:
        alpha = _utils.check_alpha(alpha)
    if distillation_loss is not None:
        alpha = DEFAULT[2] if alpha is None else alpha
        return distillation_loss, alpha, given(distillation_loss, alpha), False
    if not teachers:
        chosen = Recipe(*DEFAULT, "no teacher: the student learns from the labels")
    else:
        chosen = choose(teachers, student)
    if alpha is not None:
        chosen = with_alpha(chosen, alpha)
    return chosen.loss(), chosen.alpha, chosen, bool(teachers)


def with_alpha(chosen: Recipe, alpha: float) -> Recipe:
    """The default's objective with the alpha given to compile."""
    return dataclasses.replace(
        chosen, alpha=alpha, reason=f"{chosen.reason}; alpha given to compile"
    )


def given(distillation_loss, alpha: float) -> Recipe:
    """The `Recipe` of a loss and alpha given to compile."""
    losses = distillation_loss
    if isinstance(losses, dict):
        losses = list(losses.values())
    if isinstance(losses, (list, tuple)):
        named = [type(x).__name__ for x in losses if x is not None]
        return Recipe(" / ".join(named), None, alpha, "given to compile")
    temperature = getattr(distillation_loss, "temperature", None)
    return Recipe(
        type(distillation_loss).__name__,
        None if temperature is None else float(temperature),
        alpha,
        "given to compile",
    )


def _count(model) -> int | None:
    try:
        return int(model.count_params())
    except (ValueError, AttributeError):  # not built yet
        return None


def _ratio(teachers, student) -> float | None:
    """The student's parameters over the largest teacher's (None: unknown)."""
    counts = [_count(t) for t in teachers]
    mine = _count(student)
    if not counts or None in counts or mine is None or max(counts) == 0:
        return None
    return mine / max(counts)


def study_choice(task, size, features) -> str:
    """compile's default as the study names recipes (for
    `benchmarks/recipes.py --study`)."""
    return Recipe(*DEFAULT).label
