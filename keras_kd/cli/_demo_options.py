"""The options of `keras-kd demo` and their argparse types."""

from __future__ import annotations

import argparse

from keras_kd.cli._args import (
    add_verbosity,
    fraction,
    positive_float,
    positive_int,
)


def _labels(text):
    if text == "all":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'all', got {text}"
        ) from None


def _open_fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a number strictly between 0 and 1, got {text}"
        )
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def add_data_options(demo) -> None:
    """The data: `--dataset`, `--data-dir`, `--labels`, `--unlabelled-fraction`."""
    demo.add_argument(
        "--dataset",
        default="digits",
        help="'digits' (bundled with scikit-learn) or a tfds image "
        "classification name such as 'mnist' (default: digits)",
    )
    demo.add_argument("--data-dir", default=None, help="tfds data dir (for --dataset)")
    demo.add_argument(
        "--labels",
        type=_labels,
        default=300,
        help="training images that keep their labels; the rest are a transfer "
        "set without labels ('all': no transfer set) (default 300)",
    )
    demo.add_argument(
        "--unlabelled-fraction",
        type=_open_fraction,
        default=0.75,
        help="share of unlabelled images in each distillation batch (default 0.75)",
    )


def add_training_options(demo) -> None:
    """The models' training: epochs, seeds, the recipe, the optimizer."""
    demo.add_argument("--teacher-epochs", type=positive_int, default=150)
    demo.add_argument(
        "--teacher-jitter",
        type=_non_negative_int,
        default=1,
        help="largest shift of the teacher's training images, in pixels (default 1)",
    )
    demo.add_argument("--epochs", type=positive_int, default=60, help="student epochs")
    demo.add_argument(
        "--students",
        type=positive_int,
        default=3,
        help="student seeds, each trained from scratch and distilled (default 3)",
    )
    demo.add_argument("--student-hidden", type=positive_int, default=32)
    demo.add_argument(
        "--temperature",
        type=positive_float,
        default=None,
        help="KL's temperature (default: compile's default recipe; with "
        "--alpha alone, 1.0)",
    )
    demo.add_argument(
        "--alpha",
        type=fraction,
        default=None,
        help="weight of the distillation term, in [0, 1] (default: compile's "
        "default recipe; with --temperature alone, 0.5)",
    )
    demo.add_argument("--learning-rate", type=positive_float, default=1e-2)
    demo.add_argument("--batch-size", type=positive_int, default=64)


def add_size_and_output_options(demo) -> None:
    """Caps on the data, where the files go, the seed, `--validation`, verbosity."""
    demo.add_argument(
        "--max-train",
        type=positive_int,
        default=None,
        help="use at most this many training images",
    )
    demo.add_argument(
        "--max-test",
        type=positive_int,
        default=None,
        help="use at most this many test images",
    )
    demo.add_argument(
        "--out-dir",
        default=None,
        help="where to write the .tflite and report files (default: a new "
        "temporary directory, printed)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--validation",
        action="store_true",
        help="report on 300 images held out of the training set instead of the "
        "test set (for choosing settings)",
    )
    add_verbosity(demo, 0, "Keras progress output")
