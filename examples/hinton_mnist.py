"""Hinton et al. (2015) on MNIST, then the same student taught consistently.

The classic experiment of "Distilling the Knowledge in a Neural Network"
(Hinton, Vinyals and Dean, 2015, section 3), with keras-kd:

1. a large teacher, an MLP with two hidden layers of 1200 ReLUs, regularised
   with dropout (0.3 after each hidden layer) and with inputs jittered by up
   to two pixels;
2. a small student, an MLP with two hidden layers of 800 ReLUs and no
   regularisation, trained from scratch on the hard labels;
3. the same student architecture, from the same initial weights, trained for
   the same number of epochs with the same optimizer, but distilled from the
   teacher at a high temperature (T=20) with `keras_kd.Distiller`.

Then two runs after Beyer et al. (2022), "Knowledge distillation: A good
teacher is patient and consistent", each from the same initial weights
again, for `--consistent-epochs` epochs (patient teaching: longer than the
runs above), with the same batches and the same shifts:

4. "consistent": distilled with the teacher's jitter applied inside the
   train step, `kd.Distiller(..., augmentation=kd.augment.jitter(2))`, so
   the teacher labels exactly the shifted image the student trains on; with
   `--mixup ALPHA` both also see the same mixture of two images
   (`kd.augment.mixup`, function matching);
5. "jittered", the control: the same augmentation, epochs and optimizer,
   trained on the labels alone (`kd.Distiller(teacher=None, ...,
   augmentation=...)`). It shows what the augmentation gives without a
   teacher; with `--alpha 0` the consistent run ends identical to it.

It prints the test errors (out of 10,000) of every model, per seed and
averaged, and the share of the scratch-to-teacher gap that each student
closes, `(scratch - student) / (scratch - teacher)`, always against the
plain scratch student (the paper's baseline). The paper reports 67, 146 and
74 errors: 91% of the gap closed. The defaults of runs 1-3 (teacher 30
epochs, students 15 epochs, Adam with a cosine decay, batch 128) were chosen
on a validation split (`--validation`) to fit three seeds in about 15
minutes on two CPU cores; they are far shorter than the paper's training,
and close less of the gap. Runs 4 and 5 (30 epochs each by default) add
about 4-5 minutes a seed there: 8-10 minutes a seed in all
(`--consistent-epochs 0` skips them). Figures: BENCHMARKS.md, "Hinton et al.
2015 on MNIST".

Usage:

```
python examples/hinton_mnist.py --data-dir ../shared/datasets/tfds   # 3 seeds, test set
python examples/hinton_mnist.py --data-dir ../shared/datasets/tfds \\
    --validation                                      # tune on a held-out 10k
python examples/hinton_mnist.py --data-dir ../shared/datasets/tfds \\
    --mixup 0.2                                       # consistent + mixup
python examples/hinton_mnist.py --data-dir ../shared/datasets/tfds \\
    --consistent-epochs 0                             # runs 1-3 only (2015)
python examples/hinton_mnist.py --dataset digits --teacher-epochs 5 \\
    --student-epochs 5 --consistent-epochs 5          # tiny, offline
```

Data come from `keras_kd.data.load_image_classification`, which defines the
test set: MNIST's from TensorFlow Datasets (`--data-dir` points at a TFDS data
dir; without it tfds downloads MNIST), or with `--dataset digits` the held-out
quarter of scikit-learn's bundled 8x8 handwritten digits (450 images, no
download). All models are `keras_kd.models.mlp`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common

import argparse
import time

import numpy as np

import _common
import keras_kd as kd
from keras_kd import models
from keras_kd.backend import keras

# Hinton et al. 2015, section 3: test errors out of 10,000.
PAPER_ERRORS = {"teacher": 67, "scratch": 146, "distilled": 74}

# Images held out of the training set by `--validation`, per dataset.
_VALIDATION_SIZE = {"mnist": 10_000, "digits": 300}

# The students compared with the scratch student, in the table's order.
_STUDENTS = ("distilled", "jittered", "consistent")


def evaluation_data(
    dataset: str = "mnist", data_dir: str | None = None, validation: bool = False
):
    """The training set and the set whose errors are counted, from `kd.data`.

    Args:
        dataset: `"mnist"` (TensorFlow Datasets, 28x28) or `"digits"`
            (scikit-learn's bundled 8x8 digits, offline).
        data_dir: the TFDS data dir for MNIST; None lets tfds download it.
        validation: if True, the last images of the training set are held
            out (`kd.data.split_validation`) and returned as the evaluation
            set, and the test set is not touched (for tuning
            hyperparameters).

    Returns:
        `(x_train, y_train), (x_eval, y_eval)`: images of shape
        `(n, height, width, 1)` in [0, 1] and int64 labels; without
        `validation`, the evaluation set is the test set that
        `kd.data.load_image_classification` defines.
    """
    size = _VALIDATION_SIZE[dataset]
    return _common.image_splits(dataset, data_dir, size, validation)


def count_errors(model, x, y) -> int:
    """Number of examples whose arg-max prediction is not the label."""
    return int(np.sum(_common.predicted(model, x) != y))


def gap_closed(teacher: float, scratch: float, distilled: float):
    """Share of the scratch-to-teacher gap closed by distillation.

    `(scratch - distilled) / (scratch - teacher)`: 1 when the distilled
    student is as good as the teacher, 0 when it is no better than the
    student trained from scratch. None when the teacher is no better than
    the scratch student (there is no gap to close).
    """
    if scratch - teacher <= 0:
        return None
    return (scratch - distilled) / (scratch - teacher)


def student_gaps(errors: dict) -> dict:
    """`gap_closed` of each student in `errors` (per seed or mean)."""
    return {
        name: gap_closed(errors["teacher"], errors["scratch"], errors[name])
        for name in _STUDENTS
        if name in errors
    }


def consistent_views(args, seed: int):
    """The augmentation and mixup of runs 4 and 5: the teacher's jitter.

    Both runs get objects with the same seeds, so they draw the same shifts
    (and mixtures) at the same step.

    Returns:
        `(augmentation, mixup)`: a `kd.augment.Jitter` layer (None when
        `--jitter 0`) and a `kd.augment.MixUp` (None without `--mixup`).
    """
    augmentation = kd.augment.jitter(args.jitter, seed=seed) if args.jitter else None
    mixup = kd.augment.mixup(args.mixup, seed=seed) if args.mixup else None
    return augmentation, mixup


def run_seed(seed, data, args) -> dict:
    """Trains the teacher and every student for one seed."""
    (x_train, y_train), (x_eval, y_eval) = data
    input_shape = x_train.shape[1:]
    num_classes = int(max(y_train.max(), y_eval.max())) + 1
    run = _common.SeedRun(seed, args, x_train, y_train)

    def train(name, trainer, epochs, **distillation):
        run.compile(trainer, epochs, metrics=["accuracy"], **distillation)
        run.fit(name, trainer, epochs)

    teacher = run.teacher(
        lambda: models.mlp(
            input_shape,
            num_classes,
            hidden=(args.teacher_hidden,) * 2,
            dropout=args.dropout,
            input_dropout=args.input_dropout,
            jitter=args.jitter,
            name="teacher",
        ),
        args.teacher_epochs,
        metrics=["accuracy"],
    )

    # Every student starts from the same weights and sees the same batches.
    keras.utils.set_random_seed(seed + 1000)
    hidden = (args.student_hidden,) * 2
    scratch = models.mlp(input_shape, num_classes, hidden, name="scratch_student")
    initial_weights = scratch.get_weights()

    def student(name):
        model = models.mlp(input_shape, num_classes, hidden, name=name)
        model.set_weights(initial_weights)
        return model

    distillation = dict(
        distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
        alpha=args.alpha,
    )
    distilled = student("distilled_student")
    keras.utils.set_random_seed(seed + 2000)
    train("scratch", scratch, args.student_epochs)
    keras.utils.set_random_seed(seed + 2000)
    distiller = kd.Distiller(teacher=teacher, student=distilled)
    train("distilled", distiller, args.student_epochs, **distillation)
    trained = {"teacher": teacher, "scratch": scratch, "distilled": distilled}

    if args.consistent_epochs:
        # Run 5 (the control) then run 4: same views, with and without the
        # teacher.
        for name, run_teacher in (("jittered", None), ("consistent", teacher)):
            model = student(f"{name}_student")
            keras.utils.set_random_seed(seed + 2000)
            augmentation, mixup = consistent_views(args, seed)
            distiller = kd.Distiller(
                teacher=run_teacher,
                student=model,
                augmentation=augmentation,
                mixup=mixup,
            )
            terms = distillation if run_teacher is not None else {}
            train(name, distiller, args.consistent_epochs, **terms)
            trained[name] = model

    errors = {
        name: count_errors(model, x_eval, y_eval) for name, model in trained.items()
    }
    gaps = student_gaps(errors)
    return run.result(
        errors=errors,
        gap_closed=gaps["distilled"],
        gaps=gaps,
        initial_weights=initial_weights,
        models=trained,
    )


def _percent(share) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


# (key in `errors`, header, width); the gap of a student follows it.
_COLUMNS = (
    ("teacher", "teacher", 9),
    ("scratch", "scratch", 9),
    ("distilled", "distilled", 11),
    ("jittered", "jittered", 10),
    ("consistent", "consistent", 12),
)
# (header, width) of the gap column after a student's errors.
_GAPS = {
    "distilled": ("gap closed", 12),
    "jittered": ("gap", 7),
    "consistent": ("gap", 7),
}


def print_results(results: dict) -> None:
    """Prints the errors as a table, the way Hinton et al. report them."""
    split, n = results["split"], results["n_eval"]
    names = [c for c in _COLUMNS if c[0] in results["mean_errors"]]
    print()
    print(
        f"{results['dataset']} {split} errors out of {n:,} "
        f"(seeds {_common.seeds_text(results['seeds'])})"
    )

    def row(label, errors, gaps, number):
        cells = [f"{label:<8}"]
        for name, _, width in names:
            cells.append(f"{number(errors[name]):>{width}}")
            if name in _GAPS:
                cells.append(f"{_percent(gaps[name]):>{_GAPS[name][1]}}")
        return "".join(cells)

    header = [f"{'':<8}"]
    for name, title, width in names:
        header.append(f"{title:>{width}}")
        if name in _GAPS:
            header.append(f"{_GAPS[name][0]:>{_GAPS[name][1]}}")
    print("".join(header))
    for run in results["per_seed"]:
        print(row(f"seed {run['seed']}", run["errors"], run["gaps"], str))
    print(row("mean", results["mean_errors"], results["gaps"], "{:.1f}".format))
    p = results["paper_errors"]
    paper_gap = gap_closed(p["teacher"], p["scratch"], p["distilled"])
    print(
        f"{'paper':<8}{p['teacher']:>9}{p['scratch']:>9}{p['distilled']:>11}"
        f"{_percent(paper_gap):>12}"
    )
    if "consistent" in results["mean_errors"]:
        config = results["config"]
        views = f"{config['jitter']}-pixel jitter" if config["jitter"] else "no jitter"
        if config["mixup"]:
            views += f", mixup alpha={config['mixup']:g}"
        print(
            f"jittered: scratch with the teacher's {views}; consistent: "
            f"distilled with it; {config['consistent_epochs']} epochs each. "
            "Gaps: (scratch - student) / (scratch - teacher)."
        )
    _common.print_wall_time(results)


def _build_parser() -> argparse.ArgumentParser:
    parser = _common.parser(
        "Hinton et al. 2015 on MNIST: a 2x1200 teacher with "
        "dropout and jitter, a 2x800 student from scratch, the same "
        "student distilled at a high temperature with keras_kd, and "
        "consistent teaching (the jitter applied to teacher and student)."
    )
    _common.add_dataset(parser, digits="offline, for quick checks")
    _common.add_seeds(parser)
    _common.add_validation(
        parser,
        "hold out the end of the training set (10,000 "
        "MNIST images) and report errors on it instead of the "
        "test set; use this to tune hyperparameters",
    )
    add = parser.add_argument
    add("--teacher-epochs", type=int, default=30)
    add(
        "--student-epochs",
        type=int,
        default=15,
        help="epochs of both the scratch and the distilled student",
    )
    add(
        "--consistent-epochs",
        type=int,
        default=30,
        help="epochs of the consistent-teaching student and of its "
        "jittered control (0: skip both)",
    )
    for side, units in (("teacher", 1200), ("student", 800)):
        add(
            f"--{side}-hidden",
            type=int,
            default=units,
            help=f"units in each of the {side}'s two hidden layers",
        )
    add(
        "--dropout",
        type=float,
        default=0.3,
        help="teacher's dropout rate after each hidden layer",
    )
    add(
        "--input-dropout",
        type=float,
        default=0.0,
        help="teacher's dropout rate on the input pixels",
    )
    add(
        "--jitter",
        type=int,
        default=2,
        help="teacher's random input translation, in pixels; the consistent "
        "and jittered students get the same",
    )
    add(
        "--mixup",
        type=float,
        default=None,
        metavar="ALPHA",
        help="also mix the inputs of the consistent and jittered students "
        "(Beta(ALPHA, ALPHA) mixup; the teacher labels the mixture)",
    )
    add("--temperature", type=float, default=20.0, help="distillation temperature T")
    _common.add_alpha(parser, 0.9)
    _common.add_optimizer(parser)
    _common.add_verbose(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.consistent_epochs < 0:
        parser.error(
            f"argument --consistent-epochs: must be >= 0, got {args.consistent_epochs}"
        )
    if args.mixup is not None and args.mixup <= 0:
        parser.error(f"argument --mixup: must be > 0, got {args.mixup:g}")
    return args


def main(argv=None) -> dict:
    """Runs the experiment and returns its results.

    Args:
        argv: command-line arguments (None: `sys.argv[1:]`).

    Returns:
        A dict with `per_seed` (one entry per seed: `errors` of `teacher`,
        `scratch`, `distilled` and, unless `--consistent-epochs 0`,
        `jittered` and `consistent`; `gap_closed` (the distilled student's)
        and `gaps` (each student's); timings; the students'
        `initial_weights` and the trained `models`), `mean_errors`,
        `gap_closed` and `gaps` (computed from the mean errors), `n_eval`,
        `split`, `wall_time_s` and the `config` that produced them.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    data = evaluation_data(args.dataset, args.data_dir, args.validation)
    per_seed = _common.run_seeds(args, lambda s: run_seed(s, data, args), "errors")
    mean_errors = _common.mean_over_seeds(per_seed, "errors")
    gaps = student_gaps(mean_errors)
    results = {
        "dataset": args.dataset,
        "split": "validation" if args.validation else "test",
        "n_eval": int(len(data[1][1])),
        "seeds": list(args.seeds),
        "per_seed": per_seed,
        "mean_errors": mean_errors,
        "gap_closed": gaps["distilled"],
        "gaps": gaps,
        "paper_errors": dict(PAPER_ERRORS),
        "wall_time_s": time.perf_counter() - start,
        "config": _common.config(args),
    }
    print_results(results)
    return results


if __name__ == "__main__":
    main()
