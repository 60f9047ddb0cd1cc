"""The default-recipe study: every candidate default on nine tasks.

Run by `python benchmarks/recipes.py --study`. For each task of
`_study_tasks.TASKS` one teacher is trained (seed 0); then for each student
size ("10%", "1%") and seed (0, 1, 2) the same student (the same initial
weights and batch order per seed) is trained from scratch (`alpha=0`) and
with each recipe of `GRID`: KL, DIST and standardized KL at temperature 1, 2
and 4, with alpha 0.5, 0.9 and 1.0, through `kd.Distiller` and the hard
labels. Each run records validation and test accuracy, the run's validation
correctness (for the paired tests of the selection), and for scratch runs
the validation accuracy after the first epoch and after a fifth of the
epochs (the "short run" a rule could probe with). The parameter counts give
the ratio. Results are appended as JSON lines; a rerun skips what is done.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

import keras_kd as kd
from keras_kd.backend import keras

OBJECTIVES = {
    "KL": lambda t: kd.losses.KLDivergence(t),
    "DIST": lambda t: kd.losses.DIST(t),
    "stdKL": lambda t: kd.losses.KLDivergence(t, standardize=True),
}
GRID = {
    f"{objective} T={t:g} a={alpha:g}": (objective, float(t), alpha)
    for objective in OBJECTIVES
    for t in (1, 2, 4)
    for alpha in (0.5, 0.9, 1.0)
}
SIZES = ("10%", "1%")


def _accuracy(model, x, y):
    pred = np.argmax(model.predict(x, verbose=0, batch_size=1024), -1)
    return pred == y


class _Probe(keras.callbacks.Callback):
    """Validation accuracy after chosen epochs (the scratch runs' probe)."""

    def __init__(self, student, val, epochs):
        super().__init__()
        self.student, self.val, self.epochs, self.seen = student, val, epochs, {}

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            self.seen[epoch + 1] = float(np.mean(_accuracy(self.student, *self.val)))


def train_teacher(task, fit, shape, classes):
    keras.utils.set_random_seed(0)
    teacher = task.teacher(shape, classes)
    teacher.compile(
        keras.optimizers.Adam(task.teacher_lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(*fit, epochs=task.teacher_epochs, batch_size=task.batch, verbose=0)
    return teacher


def run(task, size, recipe, seed, teacher, splits, classes, cached):
    """One student: scratch (`recipe="scratch"`) or one recipe of `GRID`.

    `cached` is the training set with the teacher's outputs
    (`kd.data.with_teacher_outputs`): the teacher ran once, not per step."""
    fit, val, test = splits
    keras.utils.set_random_seed(1000 + seed)
    student = task.student(fit[0].shape[1:], classes, size)
    if recipe == "scratch":
        loss, alpha = kd.losses.KLDivergence(1.0), 0.0
    else:
        objective, temperature, alpha = GRID[recipe]
        loss = OBJECTIVES[objective](temperature)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        keras.optimizers.Adam(task.lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss=loss,
        alpha=alpha,
        steps_per_execution=8,
    )
    callbacks = []
    if recipe == "scratch":
        probe = _Probe(student, val, {1, max(1, task.epochs // 5)})
        callbacks.append(probe)
    keras.utils.set_random_seed(2000 + seed)  # same batch order for every recipe
    batches = cached.shuffle(len(fit[1]), seed=2000 + seed).batch(task.batch)
    start = time.perf_counter()
    distiller.fit(
        batches.prefetch(4), epochs=task.epochs, verbose=0, callbacks=callbacks
    )
    seconds = time.perf_counter() - start
    val_correct = _accuracy(student, *val)
    row = {
        "task": task.name,
        "kind": task.kind,
        "student": size,
        "params": int(student.count_params()),
        "teacher_params": int(teacher.count_params()),
        "recipe": recipe,
        "seed": seed,
        "val": float(np.mean(val_correct)),
        "test": float(np.mean(_accuracy(student, *test))),
        "n_val": len(val[1]),
        "n_test": len(test[1]),
        "val_correct": np.packbits(val_correct).tobytes().hex(),
        "seconds": seconds,
    }
    if recipe == "scratch":
        row["probe"] = {str(k): v for k, v in sorted(probe.seen.items())}
    return row


def _claim(out, name) -> bool:
    """Whether this process takes task `name` (several processes may share
    `out`: each task is run by the first to claim it)."""
    try:
        os.close(os.open(os.path.join(out, f"{name}.claim"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def study(tasks, out, data_dir=None, seeds=(0, 1, 2), sizes=SIZES, recipes=None):
    """Runs the study into the directory `out`, one `<task>.jsonl` each.

    Start it in several processes to use several cores: each takes the
    tasks no other has claimed (delete `out/*.claim` to rerun after a
    stop; runs already in a task's file are skipped)."""
    from _study_tasks import TASKS

    recipes = ["scratch", *GRID] if recipes is None else recipes
    os.makedirs(out, exist_ok=True)
    for name in tasks:
        if not _claim(out, name):
            continue
        task, path = TASKS[name], os.path.join(out, f"{name}.jsonl")
        done = set()
        if os.path.exists(path):
            for line in open(path):
                r = json.loads(line)
                if r["recipe"] != "teacher":
                    done.add((r["task"], r["student"], r["recipe"], r["seed"]))
        todo = [
            (size, seed, recipe)
            for size in sizes
            for seed in seeds
            for recipe in recipes
            if (name, size, recipe, seed) not in done
        ]
        if not todo:
            continue
        fit, val, test, classes = task.load(data_dir)
        teacher = train_teacher(task, fit, fit[0].shape[1:], classes)
        cached = kd.data.with_teacher_outputs(teacher, fit)
        teacher_row = {
            "task": name,
            "recipe": "teacher",
            "kind": task.kind,
            "source": task.source,
            "n": [len(fit[1]), len(val[1]), len(test[1])],
            "classes": classes,
            "val": float(np.mean(_accuracy(teacher, *val))),
            "test": float(np.mean(_accuracy(teacher, *test))),
            "params": int(teacher.count_params()),
        }
        with open(path, "a") as f:
            f.write(json.dumps(teacher_row) + "\n")
        for size, seed, recipe in todo:
            row = run(
                task, size, recipe, seed, teacher, (fit, val, test), classes, cached
            )
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{name:13} {size:3} seed {seed} {recipe:16} val {row['val']:.4f} "
                f"test {row['test']:.4f} ({row['seconds']:.1f} s)",
                flush=True,
            )


# ---------------------------------------------------------------------------
# kd.tune(budget=n) itself on a task (the selection above is replayed from
# the study's runs; this runs the search)
# ---------------------------------------------------------------------------


def tune_check(name, size, seeds=(0, 1, 2), budget=12, data_dir=None):
    """Runs `kd.tune(budget=...)` on one task and student size per seed;
    returns one line per seed: the returned recipe, its validation gain over
    tune's own baseline and the margin, and test accuracy of the returned
    student and of tune's baseline (trained again with the same seed)."""
    from _study_tasks import TASKS

    task = TASKS[name]
    fit, val, test, classes = task.load(data_dir)
    teacher = train_teacher(task, fit, fit[0].shape[1:], classes)
    lines = []
    for seed in seeds:

        def student_fn():
            return task.student(fit[0].shape[1:], classes, size)

        common = dict(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            optimizer=lambda: keras.optimizers.Adam(task.lr),
            max_epochs=task.epochs,
            batch_size=task.batch,
            seed=1000 + seed,
        )
        start = time.perf_counter()
        result = kd.tune(teacher, student_fn, fit, val, budget=budget, **common)
        seconds = time.perf_counter() - start
        baseline = kd.tune(
            teacher, student_fn, fit, val, budget=1, margin=1.0, **common
        )
        test_acc = float(np.mean(_accuracy(result.student, *test)))
        base_acc = float(np.mean(_accuracy(baseline.student, *test)))
        c = result.config
        chosen = (
            "labels only"
            if c["is_baseline"]
            else (f"{c['objective']} T={c['temperature']:g} a={c['alpha']:g}")
        )
        lines.append(
            f"{name} {size} seed {seed}: returned {chosen}; validation "
            f"{100 * (result.best_score - result.baseline_score):+.2f} points "
            f"(margin of the best trial {100 * (result.margin or 0):.2f}); test "
            f"{100 * test_acc:.2f}% vs baseline {100 * base_acc:.2f}% "
            f"({100 * (test_acc - base_acc):+.2f}); {seconds:.0f} s"
        )
        print(lines[-1], flush=True)
    return lines
