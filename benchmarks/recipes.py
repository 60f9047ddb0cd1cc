"""Which distillation recipe makes small students better: the default's evidence.

For each data set and student size, one teacher is trained, then the same
student (same initial weights per seed) is trained once per recipe with the
same optimizer, batches and epochs: from scratch (`alpha=0`), and distilled
with each candidate objective and weight. Recipes are compared on a
validation split held out of the training set; test accuracy is recorded
beside it but was not used to choose anything.

    python benchmarks/recipes.py --data-dir ../shared/datasets/tfds \\
        --out runs/recipes.jsonl            # every set, student, recipe, seed
    python benchmarks/recipes.py --summary runs/recipes.jsonl   # the tables

Data sets:

* `digits`: scikit-learn's 8x8 digits (1,047 to train, 300 to validate).
  Teacher `models.cnn` (151k parameters), 30 epochs. Students `mlp(16)`
  (1,210 parameters, 0.8% of the teacher) and `mlp(128)` (9,610).
  60 epochs, Adam 1e-2, batch 64 (the demo's settings).
* `mnist`: the first 25,000 MNIST training images, the last 5,000 of them
  held out to validate. Teacher `mlp((512, 512))` with dropout 0.3 and
  2-pixel jitter (670k parameters), 12 epochs. Students `mlp(8)` (6,370
  parameters, 1%) and `mlp(64)` (50,890). 15 epochs, Adam 1e-3, batch 128.
* `mnist-few`: the same teacher and validation images, but the students see
  only the first 1,000 labelled training images. 100 epochs, Adam 1e-3,
  batch 64.

Results are appended to `--out` as JSON lines as they come; a rerun skips
the runs already there.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import statistics
import time

import numpy as np

import keras_kd as kd
from keras_kd import data, models
from keras_kd.backend import keras

# name -> (loss factory or None for scratch, alpha[, Distiller keyword arguments
# as a function of the data set's name: consistent teaching])
RECIPES = {
    "scratch": (None, 0.0),
    "KL T=2 a=0.5 (old default)": (lambda: kd.losses.KLDivergence(2.0), 0.5),
    "KL T=4 a=0.9 (old quickstart)": (lambda: kd.losses.KLDivergence(4.0), 0.9),
    "KL T=1 a=0.5": (lambda: kd.losses.KLDivergence(1.0), 0.5),
    "std-KL T=2 a=0.5": (
        lambda: kd.losses.KLDivergence(2.0, standardize=True),
        0.5,
    ),
    "std-KL T=2 a=0.9": (
        lambda: kd.losses.KLDivergence(2.0, standardize=True),
        0.9,
    ),
    "DIST T=1 a=0.5": (lambda: kd.losses.DIST(1.0), 0.5),
    "DIST T=1 a=0.8": (lambda: kd.losses.DIST(1.0), 0.8),
    "DKD T=4 a=0.5": (lambda: kd.losses.DecoupledKD(4.0), 0.5),
    # Second round, after the first showed tiny students hurt by soft targets.
    "KL T=1 a=0.7": (lambda: kd.losses.KLDivergence(1.0), 0.7),
    "std-KL T=1 a=0.5": (
        lambda: kd.losses.KLDivergence(1.0, standardize=True),
        0.5,
    ),
    "std-KL T=1 a=0.9": (
        lambda: kd.losses.KLDivergence(1.0, standardize=True),
        0.9,
    ),
    "DIST T=1 a=0.5 beta=gamma=2": (
        lambda: kd.losses.DIST(1.0, beta=2.0, gamma=2.0),
        0.5,
    ),
    # Third round: consistent teaching (Beyer et al. 2022): teacher and student
    # see the same jittered (and mixed) batch. The control is the same jitter
    # with alpha=0 (augmentation alone).
    "scratch + jitter": (None, 0.0, lambda name: {"augmentation": _jitter(name)}),
    "KL T=1 a=0.5 + jitter": (
        lambda: kd.losses.KLDivergence(1.0),
        0.5,
        lambda name: {"augmentation": _jitter(name)},
    ),
    "KL T=1 a=0.9 + jitter": (
        lambda: kd.losses.KLDivergence(1.0),
        0.9,
        lambda name: {"augmentation": _jitter(name)},
    ),
    "KL T=1 a=0.5 + mixup": (
        lambda: kd.losses.KLDivergence(1.0),
        0.5,
        lambda name: {"mixup": 0.2},
    ),
    "KL T=1 a=0.9 + mixup": (
        lambda: kd.losses.KLDivergence(1.0),
        0.9,
        lambda name: {"mixup": 0.2},
    ),
    "KL T=1 a=1 + mixup (function matching)": (
        lambda: kd.losses.KLDivergence(1.0),
        1.0,
        lambda name: {"mixup": 0.2},
    ),
    "KL T=1 a=0.5 + jitter + mixup": (
        lambda: kd.losses.KLDivergence(1.0),
        0.5,
        lambda name: {"augmentation": _jitter(name), "mixup": 0.2},
    ),
}


def _jitter(name):
    """1 pixel on 8x8 digits, 2 on 28x28 MNIST (the teacher's)."""
    return kd.augment.jitter(1 if name.startswith("digits") else 2)


SETTINGS = {
    "digits": {
        "students": {"tiny": 16, "medium": 128},
        "epochs": 60,
        "lr": 1e-2,
        "batch": 64,
    },
    # The demo's student and settings (`keras-kd demo`), with a cosine decay of
    # the learning rate or without it.
    "digits-demo": {
        "students": {"demo": 32},
        "epochs": 60,
        "lr": 1e-2,
        "batch": 64,
    },
    "digits-demo-cosine": {
        "students": {"demo": 32},
        "epochs": 60,
        "lr": 1e-2,
        "batch": 64,
        "cosine": True,
    },
    # Patient teaching (Beyer et al. 2022): the demo's student, trained longer.
    "digits-demo-long": {
        "students": {"demo": 32},
        "epochs": 200,
        "lr": 1e-2,
        "batch": 64,
        "cosine": True,
    },
    "mnist": {
        "students": {"tiny": 8, "medium": 64},
        "epochs": 15,
        "lr": 1e-3,
        "batch": 128,
    },
    "mnist-few": {
        "students": {"tiny": 8, "medium": 64},
        "epochs": 100,
        "lr": 1e-3,
        "batch": 64,
    },
}


def load(name, data_dir):
    """`((x_fit, y_fit), (x_val, y_val), (x_test, y_test))` for a data set."""
    if name.startswith("digits"):
        (x, y), test, _, _ = data.load_image_classification("digits")
        fit, val = data.split_validation(x, y, 300)
        return fit, val, test
    (x, y), test, _, _ = data.load_image_classification(
        "mnist", data_dir=data_dir, max_train=25_000
    )
    fit, val = data.split_validation(x, y, 5_000)
    if name == "mnist-few":
        fit = (fit[0][:1000], fit[1][:1000])
    return fit, val, test


_TEACHERS = {}


def teacher_for(name, data_dir, fit):
    """The data set's teacher (MNIST's is shared by mnist and mnist-few)."""
    key = "digits" if name.startswith("digits") else "mnist"
    if key in _TEACHERS:
        return _TEACHERS[key]
    keras.utils.set_random_seed(0)
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if key == "digits":
        teacher = models.cnn((8, 8, 1), 10, name="teacher")
        x, y = fit
        epochs, batch = 30, 64
    else:
        teacher = models.mlp(
            (28, 28, 1), 10, hidden=(512, 512), dropout=0.3, jitter=2, name="teacher"
        )
        (x, y), _, _ = load("mnist", data_dir)
        epochs, batch = 12, 128
    teacher.compile(keras.optimizers.Adam(1e-3), hard, metrics=["accuracy"])
    teacher.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
    _TEACHERS[key] = teacher
    return teacher


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def run(name, size, recipe, seed, teacher, splits):
    settings = SETTINGS[name]
    (x, y), (x_val, y_val), (x_test, y_test) = splits
    keras.utils.set_random_seed(1000 + seed)
    student = models.mlp(
        x.shape[1:], 10, hidden=settings["students"][size], name="student"
    )
    loss_fn, alpha, *extra = RECIPES[recipe]
    options = extra[0](name) if extra else {}
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    distiller = kd.Distiller(teacher=teacher, student=student, **options)
    lr = settings["lr"]
    if settings.get("cosine"):
        steps = -(-len(x) // settings["batch"]) * settings["epochs"]
        lr = keras.optimizers.schedules.CosineDecay(lr, steps)
    distiller.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=hard,
        distillation_loss=None if loss_fn is None else loss_fn(),
        alpha=alpha,
    )
    keras.utils.set_random_seed(2000 + seed)  # same batch order for every recipe
    start = time.perf_counter()
    distiller.fit(
        x, y, epochs=settings["epochs"], batch_size=settings["batch"], verbose=0
    )
    return {
        "dataset": name,
        "student": size,
        "params": int(student.count_params()),
        "teacher_params": int(teacher.count_params()),
        "recipe": recipe,
        "seed": seed,
        "val": accuracy(student, x_val, y_val),
        "test": accuracy(student, x_test, y_test),
        "teacher_val": accuracy(teacher, x_val, y_val),
        "teacher_test": accuracy(teacher, x_test, y_test),
        "seconds": time.perf_counter() - start,
    }


def summarize(path, split="val"):
    rows = [json.loads(line) for line in open(path)]
    out = []
    groups = sorted({(r["dataset"], r["student"]) for r in rows})
    for dataset, size in groups:
        mine = [r for r in rows if (r["dataset"], r["student"]) == (dataset, size)]
        scratch = {r["seed"]: r[split] for r in mine if r["recipe"] == "scratch"}
        t = mine[0]
        out.append(
            f"\n{dataset}, {size} student ({t['params']:,} parameters; teacher "
            f"{t['teacher_params']:,}, {split} {t['teacher_' + split]:.2%})\n"
        )
        out.append(f"| recipe | {split} accuracy | vs scratch | wins |")
        out.append("| --- | ---: | ---: | ---: |")
        for recipe in RECIPES:
            values = {r["seed"]: r[split] for r in mine if r["recipe"] == recipe}
            if not values:
                continue
            seeds = sorted(values)
            mean = statistics.mean(values.values())
            std = statistics.pstdev(values.values())
            deltas = [values[s] - scratch[s] for s in seeds if s in scratch]
            wins = sum(d > 0 for d in deltas)
            delta = statistics.mean(deltas) if deltas else float("nan")
            out.append(
                f"| {recipe} | {mean:.2%} ± {std:.2%} | {delta * 100:+.2f} | "
                f"{wins}/{len(deltas)} |"
            )
    return "\n".join(out)


def compare(path, recipes):
    """One row per data set and student: scratch, then each recipe's gain.

    Cells read `validation gain / test gain (validation wins)`, in points,
    averaged over seeds; scratch's cell holds its accuracies.
    """
    rows = [json.loads(line) for line in open(path)]
    groups = sorted({(r["dataset"], r["student"]) for r in rows})
    lines = [
        "| data set | student (parameters, % of teacher) | seeds | scratch "
        "val / test | " + " | ".join(recipes) + " |",
        "| --- | --- | ---: | ---: |" + " ---: |" * len(recipes),
    ]
    for group in groups:
        mine = [r for r in rows if (r["dataset"], r["student"]) == group]
        scratch = {r["seed"]: r for r in mine if r["recipe"] == "scratch"}
        if not scratch:
            continue
        first = mine[0]
        cells = [
            f"{100 * statistics.mean(r['val'] for r in scratch.values()):.2f} / "
            f"{100 * statistics.mean(r['test'] for r in scratch.values()):.2f}"
        ]
        for recipe in recipes:
            runs = [r for r in mine if r["recipe"] == recipe and r["seed"] in scratch]
            if not runs:
                cells.append("-")
                continue
            gain = {
                split: 100
                * statistics.mean(r[split] - scratch[r["seed"]][split] for r in runs)
                for split in ("val", "test")
            }
            wins = sum(r["val"] > scratch[r["seed"]]["val"] for r in runs)
            cells.append(
                f"{gain['val']:+.2f} / {gain['test']:+.2f} ({wins}/{len(runs)})"
            )
        share = 100 * first["params"] / first["teacher_params"]
        lines.append(
            f"| {group[0]} | {group[1]} ({first['params']:,}, {share:.1f}%) | "
            f"{len(scratch)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


SELECTION_SETS = ["digits", "mnist", "mnist-few"]


def selection(path, split="val"):
    """Each recipe's mean gain over scratch (points) per data set and student.

    The default is the recipe with the largest mean gain whose gain is not
    negative in any column, on the validation split.
    """
    rows = [json.loads(line) for line in open(path)]
    rows = [r for r in rows if r["dataset"] in SELECTION_SETS]
    groups = sorted({(r["dataset"], r["student"]) for r in rows})
    names = [f"{d} {s}" for d, s in groups]
    lines = [
        "| recipe | " + " | ".join(names) + " | mean | worst |",
        "| --- |" + " ---: |" * (len(names) + 2),
    ]
    for recipe in RECIPES:
        gains = []
        for group in groups:
            mine = [r for r in rows if (r["dataset"], r["student"]) == group]
            scratch = {r["seed"]: r[split] for r in mine if r["recipe"] == "scratch"}
            deltas = [
                r[split] - scratch[r["seed"]]
                for r in mine
                if r["recipe"] == recipe and r["seed"] in scratch
            ]
            gains.append(100 * statistics.mean(deltas) if deltas else None)
        if recipe == "scratch" or None in gains:
            continue
        lines.append(
            f"| {recipe} | "
            + " | ".join(f"{g:+.2f}" for g in gains)
            + f" | {statistics.mean(gains):+.2f} | {min(gains):+.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits,mnist,mnist-few")
    parser.add_argument("--students", default="tiny,medium")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/recipes.jsonl")
    parser.add_argument("--summary", default=None, help="print the tables of a file")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument(
        "--compare",
        default=None,
        help="with --summary: recipes (comma-separated) to tabulate against scratch",
    )
    parser.add_argument(
        "--selection",
        action="store_true",
        help="with --summary: every recipe's gain per data set and student",
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="the default-recipe study: nine tasks, two student sizes, the "
        "27-recipe grid, 3 seeds (benchmarks/_study.py)",
    )
    parser.add_argument("--tasks", default=None, help="with --study: task names")
    parser.add_argument(
        "--tune-check",
        default=None,
        help="with --study: TASK:SIZE, run kd.tune(budget=12) on it per seed",
    )
    args = parser.parse_args(argv)
    if args.study:
        import _study
        import _study_report
        import _study_tasks

        tasks = args.tasks.split(",") if args.tasks else list(_study_tasks.TASKS)
        if args.summary:
            print(_study_report.report(args.summary))
            return
        if args.tune_check:
            task, size = args.tune_check.split(":")
            _study.tune_check(task, size, args.seeds, data_dir=args.data_dir)
            return
        _study.study(tasks, args.out, args.data_dir, seeds=args.seeds)
        print(_study_report.report(args.out))
        return
    if args.summary and args.selection:
        print(selection(args.summary, args.split))
        return
    if args.summary and args.compare:
        print(compare(args.summary, args.compare.split(",")))
        return
    if args.summary:
        print(summarize(args.summary, args.split))
        return
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    done = set()
    if os.path.exists(args.out):
        for line in open(args.out):
            r = json.loads(line)
            done.add((r["dataset"], r["student"], r["recipe"], r["seed"]))
    for name in args.datasets.split(","):
        splits = load(name, args.data_dir)
        teacher = None
        for size in args.students.split(","):
            for seed in args.seeds:
                for recipe in args.recipes.split(","):
                    if (name, size, recipe, seed) in done:
                        continue
                    if teacher is None:
                        teacher = teacher_for(name, args.data_dir, splits[0])
                    row = run(name, size, recipe, seed, teacher, splits)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(
                        f"{name:9} {size:6} seed {seed} {recipe:32} "
                        f"val {row['val']:.4f} test {row['test']:.4f} "
                        f"({row['seconds']:.0f} s)",
                        flush=True,
                    )
    print(summarize(args.out, "val"))


if __name__ == "__main__":
    main()
