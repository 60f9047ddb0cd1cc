"""End-to-end distillation speed, memory and quality (issue 11).

A CNN teacher (trained once, or loaded with `--teacher`) is distilled into an
MLP student and into a small CNN student on the first `--samples` MNIST
training images, by each trainer in turn, round after round (so that every
trainer sees the same machine load), each run a fresh `--epochs`-epoch `fit`
from the same initial student weights:

- `plain fit`: the student alone on the labels (the floor: no teacher);
- `keras.distillation`: Keras's own `Distiller` with `LogitsDistillation`;
- `keras-kd live`: `kd.Distiller`, the teacher run at every step;
- `keras-kd cached`: `kd.data.with_teacher_outputs` runs the teacher once
  (its time is counted in the end-to-end time), then `kd.Distiller.fit`
  reads the stored outputs and never calls the teacher;
- `keras-kd cached views`: the same with `augmentation=` and `views=K`
  (FKD-style: K augmented views per image stored with the teacher's
  outputs on each), when this keras-kd has it;
- `keras-kd XLA`: the live Distiller compiled with `jit_compile=True`;
- `keras-kd bf16 teacher`: the live Distiller with the teacher run in
  bfloat16, when this keras-kd has it.

For each trainer and student: the median epoch time (epochs 2 to the last:
the first one traces), the end-to-end wall time of the whole distillation
(teacher pass included where there is one), the peak resident memory during
it above what the process held before (sampled every 10 ms from
/proc/self/status), and the student's test accuracy on the 10,000 MNIST test
images, so that speed never hides a loss of quality. Ratios are the result
to read: the machine is shared and absolute times move. Writes a Markdown
table and a JSON file to `--out-dir`.

    python benchmarks/distill_speed.py --data-dir ../shared/datasets/tfds --rounds 3
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import keras_kd as kd
from keras_kd import models
from keras_kd.backend import keras, tf

SHAPE = (28, 28, 1)
PLAIN, KERAS, LIVE = "plain fit", "keras.distillation", "keras-kd live"
CACHED, VIEWS, XLA, LOW = (
    "keras-kd cached",
    "keras-kd cached views",
    "keras-kd XLA",
    "keras-kd bf16 teacher",
)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class PeakMemory:
    """The peak resident memory (MiB) above the starting one, while active."""

    def __enter__(self):
        self.start = _rss_mib()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())
        self.delta = self.peak - self.start


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def student_model(kind: str, name: str):
    if kind == "mlp":
        return models.mlp(SHAPE, 10, hidden=(128,), name=name)
    return models.cnn(SHAPE, 10, filters=8, name=name)


def teacher_model(args, x, y):
    if args.teacher:
        return keras.saving.load_model(args.teacher, compile=False)
    keras.utils.set_random_seed(0)
    teacher = models.cnn(SHAPE, 10, name="teacher")
    teacher.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(x, y, epochs=args.teacher_epochs, batch_size=128, verbose=0)
    teacher.trainable = False
    return teacher


def available(args) -> list:
    """The trainers this keras-kd (and this Keras) can run."""
    kinds = [PLAIN]
    if not kd.backend.LEGACY:
        kinds.append(KERAS)
    kinds.append(LIVE)
    cache = getattr(kd.data, "with_teacher_outputs", None)
    if cache is not None:
        kinds.append(CACHED)
        if "views" in inspect.signature(cache).parameters:
            kinds.append(VIEWS)
    kinds.append(XLA)
    if "teacher_dtype" in inspect.signature(kd.Distiller.__init__).parameters:
        kinds.append(LOW)
    return [k for k in kinds if not args.only or k in args.only]


def run(kind, student_kind, teacher, initial, data, args) -> dict:
    """One fresh `args.epochs`-epoch distillation; its times, memory, accuracy."""
    (x, y), (x_test, y_test) = data
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    student = student_model(student_kind, "student")
    student.set_weights(initial)
    optimizer = keras.optimizers.Adam(1e-3)
    recipe = dict(
        distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
        alpha=args.alpha,
    )
    epochs = EpochTimes()
    fit = dict(epochs=args.epochs, verbose=0, callbacks=[epochs])
    keras.utils.set_random_seed(1)
    with PeakMemory() as memory:
        start = time.perf_counter()
        if kind == PLAIN:
            student.compile(optimizer=optimizer, loss=hard)
            student.fit(x, y, batch_size=args.batch_size, **fit)
        elif kind == KERAS:
            from keras import distillation

            model = distillation.Distiller(
                teacher=teacher,
                student=student,
                distillation_losses=distillation.LogitsDistillation(
                    temperature=args.temperature, loss=keras.losses.KLDivergence()
                ),
                student_loss_weight=1.0 - args.alpha,
            )
            model.compile(optimizer=optimizer, loss=hard)
            model.fit(x, y, batch_size=args.batch_size, **fit)
        elif kind in (CACHED, VIEWS):
            extra = {}
            if kind == VIEWS:
                extra = dict(augmentation=kd.augment.jitter(2), views=args.views)
            cached = kd.data.with_teacher_outputs(
                teacher, (x, y), batch_size=256, **extra
            )
            dataset = (
                cached.shuffle(len(x), seed=0)
                .batch(args.batch_size)
                .prefetch(tf.data.AUTOTUNE)
            )
            model = kd.Distiller(teacher=teacher, student=student)
            model.compile(optimizer=optimizer, loss=hard, **recipe)
            model.fit(dataset, **fit)
        else:
            extra = {"teacher_dtype": "bfloat16"} if kind == LOW else {}
            model = kd.Distiller(teacher=teacher, student=student, **extra)
            model.compile(
                optimizer=optimizer, loss=hard, jit_compile=kind == XLA, **recipe
            )
            model.fit(x, y, batch_size=args.batch_size, **fit)
        total = time.perf_counter() - start
    logits = student.predict(x_test, batch_size=1024, verbose=0)
    return {
        "epoch_s": statistics.median(epochs.times[1:] or epochs.times),
        "end_to_end_s": total,
        "peak_mib": memory.delta,
        "accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
    }


def summarize(results, kinds, student_kinds) -> dict:
    """Medians over rounds, and the ratios the issue asks for."""
    table = {}
    for s in student_kinds:
        for k in kinds:
            runs = results[s][k]
            table[(s, k)] = {
                key: statistics.median(r[key] for r in runs) for key in runs[0]
            }
            accuracies = [r["accuracy"] for r in runs]
            table[(s, k)]["accuracy_mean"] = float(np.mean(accuracies))
    return table


def markdown(table, kinds, student_kinds, args) -> str:
    lines = [
        f"{args.samples:,} MNIST images, batch {args.batch_size}, {args.epochs} "
        f"epochs, KL T={args.temperature:g} alpha={args.alpha:g}; medians over "
        f"{args.rounds} rounds (trainers alternating).",
        "",
        "| student | trainer | epoch (s) | vs plain epoch | end to end (s) | "
        "vs keras.distillation | peak memory (MiB) | test accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in student_kinds:
        plain = table[(s, PLAIN)]
        anchor = table.get((s, KERAS))
        for k in kinds:
            row = table[(s, k)]
            versus = (
                f"{anchor['end_to_end_s'] / row['end_to_end_s']:.2f}x faster"
                if anchor
                else "-"
            )
            lines.append(
                f"| {s} | {k} | {row['epoch_s']:.2f} | "
                f"{row['epoch_s'] / plain['epoch_s']:.2f}x | "
                f"{row['end_to_end_s']:.1f} | {versus} | {row['peak_mib']:.0f} | "
                f"{100 * row['accuracy_mean']:.2f}% |"
            )
    lines += ["", "Ratios (one run, the issue's targets in brackets):", ""]
    for s in student_kinds:
        lines += [f"- {s} student: " + "; ".join(ratios(table, kinds, s))]
    return "\n".join(lines) + "\n"


def ratios(table, kinds, s) -> list:
    """The figures issue 11 asks for, for student `s`, as text."""
    plain, keras_row = table[(s, PLAIN)], table.get((s, KERAS))
    out = []
    if CACHED in kinds:
        cached = table[(s, CACHED)]
        out.append(
            f"cached epoch / plain epoch {cached['epoch_s'] / plain['epoch_s']:.2f} "
            "[<= 1.15]"
        )
        if keras_row:
            gap = 100 * (cached["accuracy_mean"] - keras_row["accuracy_mean"])
            out.append(
                "keras.distillation end to end / cached end to end "
                f"{keras_row['end_to_end_s'] / cached['end_to_end_s']:.2f} [>= 4], "
                f"accuracy cached - keras.distillation {gap:+.2f} points "
                "[within 0.3]"
            )
    if keras_row:
        live = table[(s, LIVE)]
        out.append(
            "live epoch / keras.distillation epoch "
            f"{live['epoch_s'] / keras_row['epoch_s']:.2f} [<= 1.0]"
        )
    for kind in (XLA, LOW):
        if kind in kinds:
            row = table[(s, kind)]
            out.append(
                f"{kind} epoch / live epoch "
                f"{row['epoch_s'] / table[(s, LIVE)]['epoch_s']:.2f}"
            )
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="tfds data dir holding mnist")
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--teacher", default=None, help="a trained teacher .keras file")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--students", nargs="+", default=["mlp", "cnn"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="+", default=None, help="trainers to run")
    p.add_argument("--out-dir", default=os.path.join("runs", "distill_speed"))
    args = p.parse_args(argv)

    (x, y), (x_test, y_test), _ = kd.data.load_tfds_image_classification(
        "mnist", args.data_dir, max_train=args.samples, max_test=args.test_samples
    )
    data = ((x, y), (x_test, y_test))
    teacher = teacher_model(args, x, y)
    kinds = available(args)
    initial = {}
    for s in args.students:
        keras.utils.set_random_seed(2)
        initial[s] = student_model(s, "student").get_weights()
    results = {s: {k: [] for k in kinds} for s in args.students}
    for r in range(args.rounds):
        for s in args.students:
            for k in kinds:
                results[s][k].append(run(k, s, teacher, initial[s], data, args))
                print(f"round {r + 1}, {s}, {k}: {results[s][k][-1]}", flush=True)
    table = summarize(results, kinds, args.students)
    text = markdown(table, kinds, args.students, args)
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "distill_speed.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "distill_speed.json"), "w") as f:
        json.dump(
            {"config": vars(args), "runs": results,
             "medians": {f"{s}/{k}": v for (s, k), v in table.items()}},
            f,
            indent=2,
        )  # fmt: skip
    return {"table": table, "runs": results}


if __name__ == "__main__":
    main()
