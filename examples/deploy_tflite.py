"""Distil a small CNN for a phone and ship it as a verified .tflite file.

The story: you have an accurate but big MNIST classifier (the teacher) and
need a model that fits in an app. This script

1. trains the teacher (an MLP with two hidden layers of 512 ReLUs),
2. distils a small CNN student from it with `keras_kd.Distiller`,
3. exports the student with `keras_kd.export.to_tflite` in every
   quantization mode (float32, float16, dynamic-range int8, full int8 with
   float inputs and outputs, full int8 with int8 inputs and outputs), each
   file verified in the LiteRT interpreter against the Keras student,
4. prints, for each mode: the file size and its ratio to float32, the test
   accuracy of the file and its drop from the Keras student, the top-1
   agreement with the Keras student, the largest output difference and the
   interpreter's median latency for one image.

Usage:

```
python examples/deploy_tflite.py --data-dir ../shared/datasets/tfds   # MNIST
python examples/deploy_tflite.py --dataset digits                     # tiny, offline
```

Data come from `keras_kd.data.load_image_classification`, which defines the
test set: MNIST's from TensorFlow Datasets (`--data-dir` is a TFDS data dir;
without it tfds downloads MNIST), or with `--dataset digits` the held-out
quarter of scikit-learn's bundled 8x8 digits (runs in seconds). The models
are `keras_kd.models.mlp` and `keras_kd.models.strided_cnn`. Runs in both
Keras flavours.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _common, _deploy

import argparse
import time

import _common
import _deploy
from keras_kd import backend, export

MODES = [None, "float16", "dynamic", "int8", "int8_io"]


def export_all(student, train_ds, test, out_dir, args) -> dict:
    """Exports the student in every mode; returns one row of figures each."""
    x_test, y_test = test
    keras_accuracy = _common.accuracy(student, x_test, y_test)
    rows = {}
    for mode in MODES:
        name = mode or "float32"
        path = os.path.join(out_dir, f"student_{name}.tflite")
        report = export.to_tflite(
            student,
            path,
            mode,
            representative_data=train_ds,  # batched (image, label)
            verify_data=(x_test, y_test),
            num_calibration_samples=args.calibration_samples,
            num_verify_samples=len(x_test),
            latency_runs=args.latency_runs,
            num_threads=1,
        )
        file_accuracy = export.evaluate_tflite(path, (x_test, y_test))
        rows[name] = {
            "path": path,
            "size_bytes": report.size_bytes,
            "accuracy": file_accuracy,
            "accuracy_drop_points": 100.0 * (keras_accuracy - file_accuracy),
            "top1_agreement": report.top1_agreement,
            "max_abs_diff": report.max_abs_diff,
            "max_rel_diff": report.max_rel_diff,
            "latency_ms": report.latency_ms,
            "interpreter": report.interpreter,
            "notes": list(report.notes),
        }
    float_size = rows["float32"]["size_bytes"]
    for row in rows.values():
        row["size_ratio"] = row["size_bytes"] / float_size
    return rows


def print_table(results: dict) -> None:
    """Prints the figures of every mode as a table."""
    print()
    print(
        f"{results['dataset']}: teacher {100 * results['teacher_accuracy']:.2f}%, "
        f"Keras student {100 * results['student_accuracy']:.2f}% "
        f"({results['student_params']:,} parameters), "
        f"{results['n_test']:,} test images"
    )
    header = (
        f"{'mode':<9}{'size KB':>9}{'x fp32':>8}{'accuracy':>10}"
        f"{'drop pts':>10}{'agree':>9}{'max|diff|':>11}{'rel':>9}"
        f"{'us/img':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, row in results["modes"].items():
        print(
            f"{name:<9}{row['size_bytes'] / 1024:>9.1f}{row['size_ratio']:>8.2f}"
            f"{100 * row['accuracy']:>9.2f}%{row['accuracy_drop_points']:>10.2f}"
            f"{100 * row['top1_agreement']:>8.2f}%{row['max_abs_diff']:>11.2e}"
            f"{row['max_rel_diff']:>9.1e}{1000 * row['latency_ms']:>8.1f}"
        )
    print(
        f"LiteRT interpreter: {results['interpreter']}, 1 thread; "
        f"wall time {results['wall_time_s']:.0f} s"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = _common.parser(
        "Distil a small CNN from an MLP teacher on MNIST, export "
        "it to .tflite in every quantization mode (float32, float16, dynamic, "
        "int8, int8_io) with keras_kd.export.to_tflite, and print size, "
        "accuracy, agreement and latency per mode. Runs in both Keras "
        "flavours."
    )
    _deploy.add_options(parser, os.path.join("runs", "deploy_tflite"))
    add = parser.add_argument
    add("--teacher-epochs", type=int, default=3)
    add("--student-epochs", type=int, default=3)
    add("--temperature", type=float, default=4.0)
    _common.add_alpha(parser, 0.5)
    _common.add_optimizer(parser, help=None)
    add(
        "--calibration-samples",
        type=int,
        default=500,
        help="training images drawn to calibrate int8",
    )
    add(
        "--latency-runs",
        type=int,
        default=200,
        help="single-image invocations timed per mode",
    )
    add("--seed", type=int, default=0)
    _common.add_verbose(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Runs the example and returns its figures.

    Args:
        argv: command-line arguments (None: `sys.argv[1:]`).

    Returns:
        A dict with `teacher_accuracy`, `student_accuracy`, `student_params`,
        `modes` (per mode: `size_bytes`, `size_ratio`, `accuracy`,
        `accuracy_drop_points`, `top1_agreement`, `max_abs_diff`,
        `latency_ms`, `path`...), `n_test`, `machine`, `wall_time_s` and
        the `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    train_ds, test, num_classes, _ = _deploy.load(args)
    input_shape = test[0].shape[1:]
    teacher, student = _deploy.teacher_and_student(
        train_ds, input_shape, num_classes, args
    )
    modes = export_all(student, train_ds, test, args.out_dir, args)
    results = {
        "dataset": args.dataset,
        "flavour": backend.FLAVOUR,
        "teacher_accuracy": _common.accuracy(teacher, *test),
        "student_accuracy": _common.accuracy(student, *test),
        "student_params": int(student.count_params()),
        "n_test": int(len(test[1])),
        "modes": modes,
        "interpreter": modes["float32"]["interpreter"],
        "machine": _deploy.machine(),
        "wall_time_s": time.perf_counter() - start,
        "config": _common.config(args),
    }
    print_table(results)
    return results


if __name__ == "__main__":
    main()
