"""Training-step speed: keras-kd's Distiller against keras.distillation.

Both distil the same frozen teacher into the same student (Hinton-sized
MLPs on MNIST-shaped inputs) with the same optimizer, batch size and loss
weighting, under Keras 3. The figure is the median wall time of one epoch
of `fit` (after a warm-up epoch that traces and compiles), measured in
alternating rounds so both see the same machine load; the ratio is the
result to read, not the absolute times. A plain `student.fit` (no teacher)
is the floor.

    python benchmarks/bench_train_step.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import keras_kd as kd
from keras_kd import models
from keras_kd.backend import keras


def mlp(hidden, name):
    """Two hidden ReLU layers of `hidden` units on flat MNIST-sized inputs."""
    return models.mlp((784,), 10, hidden=(hidden, hidden), name=name)


def build(kind, teacher, args):
    student = mlp(args.student_hidden, "student")
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.Adam(1e-3)
    if kind == "plain student.fit":
        student.compile(optimizer=opt, loss=hard, jit_compile=args.jit)
        return student
    if kind == "keras_kd.Distiller":
        model = kd.Distiller(teacher=teacher, student=student)
        model.compile(
            optimizer=opt,
            loss=hard,
            jit_compile=args.jit,
            distillation_loss=kd.losses.KLDivergence(args.temperature),
            alpha=args.alpha,
        )
        return model
    from keras import distillation

    model = distillation.Distiller(
        teacher=teacher,
        student=student,
        # A `keras.losses.KLDivergence` instance: the default "kl_divergence"
        # resolves to the plain function, which LogitsDistillation (Keras
        # 3.15) applies to the scaled logits without a softmax.
        distillation_losses=distillation.LogitsDistillation(
            temperature=args.temperature, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=1.0 - args.alpha,
    )
    model.compile(optimizer=opt, loss=hard, jit_compile=args.jit)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=12800)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--teacher-hidden", type=int, default=1200)
    p.add_argument("--student-hidden", type=int, default=800)
    p.add_argument("--temperature", type=float, default=20.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--jit", default="auto", choices=["auto", "true", "false"])
    args = p.parse_args(argv)
    args.jit = {"auto": "auto", "true": True, "false": False}[args.jit]
    if kd.backend.LEGACY:
        raise SystemExit(
            "keras.distillation is Keras 3 only: unset TF_USE_LEGACY_KERAS."
        )

    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.samples)
    keras.utils.set_random_seed(0)
    teacher = mlp(args.teacher_hidden, "teacher")
    kinds = ["plain student.fit", "keras_kd.Distiller", "keras.distillation.Distiller"]
    models = {k: build(k, teacher, args) for k in kinds}
    for model in models.values():  # warm-up: trace and compile
        model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    times = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            start = time.perf_counter()
            models[k].fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
            times[k].append(time.perf_counter() - start)
    steps = int(np.ceil(args.samples / args.batch_size))
    ref = statistics.median(times["keras.distillation.Distiller"])
    print(
        f"{steps} steps of batch {args.batch_size}, median of {args.rounds} "
        f"epochs, jit_compile={args.jit}"
    )
    print(f"{'trainer':<32}{'s/epoch':>10}{'ms/step':>10}{'vs keras.distillation':>24}")
    results = {}
    for k in kinds:
        med = statistics.median(times[k])
        results[k] = med
        print(f"{k:<32}{med:>10.2f}{1000 * med / steps:>10.1f}{ref / med:>23.2f}x")
    return results


if __name__ == "__main__":
    main()
