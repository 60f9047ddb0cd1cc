"""Is the teacher better than chance on the data it is given?

A teacher fed the wrong pixel range, or data whose labels come in another
order than the one it was trained on, scores what guessing scores, and a
student distilled from it learns nothing. `distill` scores the teacher on
the first labelled batches before training and stops (`UsageError`: exit
code 2, one line) when it is at chance; `report` adds a note.

The rule: with `n` images of `k` classes and `c` of them right, the teacher
is at chance unless guessing (each answer right with probability `1/k`)
would score `c` or more less than once in a thousand tries, i.e. unless the
binomial tail `P(X >= c)`, `X ~ Binomial(n, 1/k)`, is below 0.001. On 512
images that asks for 14.5% with 10 classes and 57% with 2; on fewer
images it asks for more, so that a handful of lucky guesses never passes.
"""

from __future__ import annotations

import math

from keras_kd.cli._args import UsageError

# A teacher is "better than chance" when guessing would reach its score less
# often than this.
LEVEL = 1e-3
# `distill` scores the teacher on the first batches holding this many images.
SCORED_IMAGES = 512


def binomial_tail(correct: int, n: int, p: float) -> float:
    """`P(X >= correct)` for `X ~ Binomial(n, p)`, summed in log space."""
    if correct <= 0:
        return 1.0
    if correct > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(correct, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def at_chance(correct: int, n: int, num_classes: int) -> bool:
    """Whether `correct` right answers of `n` are no better than guessing.

    Args:
        correct: the teacher's right answers.
        n: the images scored.
        num_classes: the classes of the data (chance is `1 / num_classes`).

    Returns:
        True when guessing would score `correct` or more at least once in a
        thousand tries (`binomial_tail(correct, n, 1 / num_classes) >=
        LEVEL`); False with fewer than two classes or no images.
    """
    if num_classes < 2 or n <= 0:
        return False
    return binomial_tail(correct, n, 1.0 / num_classes) >= LEVEL


def score(model, dataset, key=None, limit: int = SCORED_IMAGES) -> tuple:
    """`(correct, n)`: `model`'s top-1 right answers on the first batches.

    Args:
        model: a Keras classifier (one output, classes last).
        dataset: batches of `(x, integer labels)`.
        key: with dict inputs, the entry `model` reads.
        limit: stop after this many images.

    Returns:
        `(correct, n)`, `n <= limit`.
    """
    import numpy as np

    correct = n = 0
    for x, y in dataset:
        if key is not None:
            x = x[key]
        take = min(limit - n, int(y.shape[0]))
        outputs = np.asarray(model(x[:take], training=False))
        correct += int(np.sum(np.argmax(outputs, -1) == np.asarray(y[:take])))
        n += take
        if n >= limit:
            break
    return correct, n


def chance_line(accuracy, n, class_names, fed, why, where) -> str:
    """The one line that says the teacher is at chance, and the likely causes.

    Args:
        accuracy: the teacher's accuracy.
        n: the images it was scored on.
        class_names: the data's classes, in label order.
        fed: the pixel range the teacher was fed (`"0-255"` / `"0-1"`).
        why: how that range was chosen (`keras_kd.cli._pixels.resolve`).
        where: which images, e.g. `"the first 512 images of --data DIR
            [train]"`.
    """
    from keras_kd.cli._pixels import other

    k = len(class_names)
    shown = ", ".join(map(str, class_names[:5])) + (", ..." if k > 5 else "")
    return (
        f"the teacher scores {accuracy:.1%} on {where}: no better than chance "
        f"with {k} classes ({1 / k:.1%}). Likely causes: the pixel range (it "
        f"was fed {fed} pixels, {why}; try --pixel-range teacher={other(fed)}), "
        f"or labels in another order than the teacher's (the data's classes in "
        f"label order: {shown})"
    )


def check_teacher(args, teacher, student, ranges, names) -> None:
    """Stops `distill` (`UsageError`) when the teacher is no better than chance.

    It is scored on the first training batches (at most `SCORED_IMAGES`
    images), shuffled as training shuffles them (a dataset of its own, so
    that training's shuffling is not moved on), in its own pixel range.

    Args:
        args: the parsed `distill` command line.
        teacher: the teacher model.
        student: the student model (the images are resized to its input).
        ranges: `{"teacher": (range, why), ...}` (`_pixels.resolve`).
        names: the data's classes, in label order.
    """
    from keras_kd.backend import tf
    from keras_kd.cli import _data

    fed, why = ranges["teacher"]
    batches, _ = _data.load_data(
        args.data, args.data_dir, args.split, student, args.batch_size, True,
        args.seed, pixel_range=fed,
    )  # fmt: skip
    try:
        correct, n = score(teacher, batches)
    except (ValueError, TypeError, tf.errors.OpError) as e:
        detail = " ".join(str(e).split())[:300]
        raise UsageError(
            f"--teacher {args.teacher}: could not be run on the images of "
            f"--data {args.data} ({type(e).__name__}: {detail})"
        ) from None
    if n == 0:
        return
    where = f"the first {n} images of --data {args.data} [{args.split}]"
    if at_chance(correct, n, len(names)):
        raise UsageError(chance_line(correct / n, n, names, fed, why, where))
    print(
        f"The teacher scores {correct / n:.1%} on {where} (chance: "
        f"{1 / max(len(names), 1):.1%}).",
        flush=True,
    )


def flag_in_report(report, names, ranges, args) -> None:
    """Adds a note to `report` (and warns) when its teacher is at chance.

    Args:
        report: the `kd.report.Report` of `keras-kd report`.
        names: the data's classes, in label order.
        ranges: `{"teacher": (range, why), ...}` (`_pixels.resolve`).
        args: the parsed `report` command line.
    """
    import sys

    teacher = report.models["teacher"]
    n = report.num_samples
    correct = round(teacher["accuracy"] * n)
    if not at_chance(correct, n, len(names)):
        return
    fed, why = ranges["teacher"]
    where = f"the {n} images of --data {args.data} [{args.split}]"
    line = chance_line(teacher["accuracy"], n, names, fed, why, where)
    report.notes.append(line)
    print(f"keras-kd report: warning: {line}", file=sys.stderr, flush=True)
