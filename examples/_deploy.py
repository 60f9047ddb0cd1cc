"""What the two deployment examples share: data, models, options.

`deploy_tflite.py` distils a small CNN from an MLP teacher and exports it in
every quantization mode; `qat_distillation.py` takes the same teacher and
student further (quantization- and pruning-aware distillation). Both load
their data, train those two models and take these options the same way.
"""

from __future__ import annotations

import argparse
import os
import platform

import _common
from keras_kd import data, models
from keras_kd.backend import keras
from keras_kd.distiller import Distiller
from keras_kd.losses import KLDivergence


def add_options(parser: argparse.ArgumentParser, out_dir: str) -> None:
    """`--dataset`, `--data-dir`, `--out-dir` (default `out_dir`) and
    `--max-train`."""
    _common.add_dataset(parser, digits="offline, seconds")
    parser.add_argument(
        "--out-dir", default=out_dir, help="where the .tflite files are written"
    )
    parser.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="train on at most this many images (None: all)",
    )


def load(args):
    """The training pipeline and the test set, from `kd.data`.

    Returns:
        `(train_ds, test, num_classes, steps_per_epoch)`: batches of
        `args.batch_size` shuffled training images and their labels,
        `(x_test, y_test)`, the number of classes and the batches an epoch.
    """
    (x_train, y_train), test, num_classes, _ = data.load_image_classification(
        args.dataset, data_dir=args.data_dir, max_train=args.max_train
    )
    train_ds = data.to_dataset(
        x_train, y_train, args.batch_size, shuffle=True, shuffle_buffer=10_000
    )
    steps = _common.steps_per_epoch(len(x_train), args.batch_size)
    return train_ds, test, num_classes, steps


def distill(teacher, student, train_ds, epochs: int, learning_rate: float, args):
    """Distils `student` from `teacher` for `epochs` epochs (Adam,
    `KLDivergence(args.temperature)`, `args.alpha`); returns `student`.
    (`shuffle=False`: the pipeline shuffles.)"""
    distiller = Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=_common.hard_loss(),
        metrics=["accuracy"],
        distillation_loss=KLDivergence(temperature=args.temperature),
        alpha=args.alpha,
    )
    verbose = _common.fit_verbosity(args)
    distiller.fit(train_ds, epochs=epochs, verbose=verbose, shuffle=False)
    return student


def teacher_and_student(train_ds, input_shape, num_classes: int, args):
    """Trains the teacher (an MLP with two hidden layers of 512 ReLUs) on
    the labels, then distils the student (a small strided CNN) from it.

    Returns:
        `(teacher, student)`.
    """
    keras.utils.set_random_seed(args.seed)
    teacher = models.mlp(
        input_shape, num_classes, hidden=(512, 512), dropout=0.3, name="teacher"
    )
    teacher.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=_common.hard_loss(),
        metrics=["accuracy"],
    )
    verbose = _common.fit_verbosity(args)
    teacher.fit(train_ds, epochs=args.teacher_epochs, verbose=verbose, shuffle=False)
    keras.utils.set_random_seed(args.seed + 1)
    student = models.strided_cnn(
        input_shape, num_classes, filters=16, hidden=64, name="student"
    )
    distill(teacher, student, train_ds, args.student_epochs, args.learning_rate, args)
    return teacher, student


def machine() -> str:
    """`"x86_64, 2 CPU cores"`: where the figures were measured."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores"
