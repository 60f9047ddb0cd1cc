"""Distillation without a pre-trained teacher, on MNIST.

Two recipes, each against the same models trained independently from the
same initial weights with the same budget:

1. Deep Mutual Learning (Zhang et al. 2018): `keras_kd.MutualLearning`
   trains a cohort of peers that learn from the labels and from each other.
2. Online teacher-student: `keras_kd.OnlineDistiller(teacher, student)`
   trains a large teacher and a small student at once.

    python examples/online_distillation.py --data-dir ../shared/datasets/tfds
    python examples/online_distillation.py --dataset digits      # offline, tiny

It prints per-peer test accuracy per seed and averaged, on the test set of
`keras_kd.data.load_image_classification`; every model is a one-hidden-layer
`keras_kd.models.mlp`.
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


def accuracy(model, x, y):
    """Top-1 accuracy of a Keras model."""
    return _common.accuracy(model, x, y, batch_size=1024)


def hard():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def independent(group, x, y, args):
    """Trains each model of `group` alone on the labels."""
    for model in group:
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=hard())
        model.fit(
            x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose
        )


def run_seed(seed, data, num_classes, args):
    """Trains both recipes and their independent baselines for one seed.

    Returns:
        Test accuracies (`mutual` and `independent` per peer,
        `online_teacher`, `online_student`, `student_alone`) and the trained
        `models` under the same keys.
    """
    (x_tr, y_tr), (x_te, y_te) = data
    shape = x_tr.shape[1:]

    def mlp(hidden, name):
        return models.mlp(shape, num_classes, hidden=hidden, name=name)

    keras.utils.set_random_seed(seed)
    peers = [mlp(args.peer_hidden, f"peer{i}") for i in range(args.peers)]
    alone = [keras.models.clone_model(p) for p in peers]
    for a, p in zip(alone, peers):
        a.set_weights(p.get_weights())
    cohort = kd.MutualLearning(peers)
    cohort.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=hard(),
        metrics=["accuracy"],
        temperature=args.temperature,
        alpha=args.alpha,
    )
    cohort.fit(
        x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose
    )
    independent(alone, x_tr, y_tr, args)

    teacher = mlp(args.teacher_hidden, "teacher")
    student = mlp(args.student_hidden, "student")
    student_alone = keras.models.clone_model(student)
    student_alone.set_weights(student.get_weights())
    online = kd.OnlineDistiller(teacher=teacher, student=student)
    online.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=hard(),
        distillation_loss=kd.losses.KLDivergence(args.temperature),
        alpha=args.alpha,
    )
    online.fit(
        x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose
    )
    independent([student_alone], x_tr, y_tr, args)
    return {
        "mutual": [accuracy(p, x_te, y_te) for p in peers],
        "independent": [accuracy(a, x_te, y_te) for a in alone],
        "online_teacher": accuracy(teacher, x_te, y_te),
        "online_student": accuracy(student, x_te, y_te),
        "student_alone": accuracy(student_alone, x_te, y_te),
        "models": {
            "mutual": peers,
            "independent": alone,
            "online_teacher": teacher,
            "online_student": student,
            "student_alone": student_alone,
        },
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = _common.parser(__doc__.split("\n\n")[0])
    _common.add_dataset(p)
    p.add_argument("--max-train", type=int, default=None, help="cap on training images")
    _common.add_seeds(p, help=None)
    p.add_argument("--peers", type=int, default=2)
    p.add_argument("--peer-hidden", type=int, default=128)
    p.add_argument("--teacher-hidden", type=int, default=512)
    p.add_argument("--student-hidden", type=int, default=32)
    p.add_argument("--epochs", type=int, default=6)
    _common.add_without_teacher(p, temperature=1.0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    train, test, num_classes = _common.load_images(args)
    data = (train, test)
    start = time.perf_counter()
    results = {seed: run_seed(seed, data, num_classes, args) for seed in args.seeds}
    seconds = time.perf_counter() - start
    print(
        f"\n{_common.sizes_text(args.dataset, train, test)}; {args.epochs} epochs, "
        f"T={args.temperature}, alpha={args.alpha}; {seconds:.0f} s"
    )
    print(
        f"\nDeep Mutual Learning, {args.peers} x MLP({args.peer_hidden}): test accuracy"
    )
    print(f"{'seed':<6}{'mutual (per peer)':>28}{'independent (per peer)':>30}")
    for seed, r in results.items():
        print(
            f"{seed:<6}{' '.join(f'{a:.2%}' for a in r['mutual']):>28}"
            f"{' '.join(f'{a:.2%}' for a in r['independent']):>30}"
        )
    mutual = np.array([r["mutual"] for r in results.values()])
    alone = np.array([r["independent"] for r in results.values()])
    print(
        f"{'mean':<6}{mutual.mean():>28.2%}{alone.mean():>30.2%}  "
        f"({(mutual.mean() - alone.mean()) * 100:+.2f} points; peers better in "
        f"{int(np.sum(mutual > alone))} of {mutual.size})"
    )
    print(
        f"\nOnline teacher MLP({args.teacher_hidden}) -> "
        f"student MLP({args.student_hidden})"
    )
    print(f"{'seed':<6}{'teacher':>10}{'student online':>16}{'student alone':>16}")
    for seed, r in results.items():
        print(
            f"{seed:<6}{r['online_teacher']:>10.2%}{r['online_student']:>16.2%}"
            f"{r['student_alone']:>16.2%}"
        )
    on = np.array([r["online_student"] for r in results.values()])
    off = np.array([r["student_alone"] for r in results.values()])
    teachers = np.array([r["online_teacher"] for r in results.values()])
    print(
        f"{'mean':<6}{teachers.mean():>10.2%}{on.mean():>16.2%}{off.mean():>16.2%}"
        f"  ({(on.mean() - off.mean()) * 100:+.2f} points)"
    )
    return {"results": results, "seconds": seconds}


if __name__ == "__main__":
    main()
