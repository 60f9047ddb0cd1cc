"""Quantization- and pruning-aware distillation on MNIST (tf_keras flavour).

Must be run with TF_USE_LEGACY_KERAS=1 (tensorflow-model-optimization needs
tf_keras) and the `optimize` extra: `pip install keras-kd[optimize]`.

The story: the distilled student of `deploy_tflite.py` has to get smaller
still without losing accuracy. This script

1. trains an MLP teacher and distils a small CNN student from it (float),
2. **int8**: compares post-training quantization (PTQ) of that student with
   quantization-aware distillation (QAT): a fake-quantized copy of the
   student (`keras_kd.optimize.quantization_aware`) fine-tuned for a few
   more epochs with the teacher still guiding it, then exported to int8.
   For a fair comparison the float student is also fine-tuned for the same
   epochs with the teacher and then quantized after training (PTQ, same
   epochs);
3. **pruning**: prunes the student to 50% and 80% sparsity
   (`keras_kd.optimize.prune`) while distilling, strips the wrappers and
   exports float32 and int8 files, reporting sparsity, accuracy and the
   gzipped size that an app download would see.

Usage:

```
TF_USE_LEGACY_KERAS=1 python examples/qat_distillation.py \\
    --data-dir ../shared/datasets/tfds                      # MNIST
TF_USE_LEGACY_KERAS=1 python examples/qat_distillation.py --dataset digits
```

Data, and so the test set, come from `keras_kd.data.load_image_classification`
(MNIST's test split, or the held-out quarter of scikit-learn's digits); the
models are `keras_kd.models.mlp` and `keras_kd.models.strided_cnn`, built in
tf_keras by this flavour.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import platform
import time

import numpy as np

from keras_kd import backend, data, export, models, optimize
from keras_kd.backend import keras
from keras_kd.distiller import Distiller
from keras_kd.losses import KLDivergence

NEEDS_LEGACY = (
    "This example needs tf_keras: run it with TF_USE_LEGACY_KERAS=1 set "
    "before Python starts (TF_USE_LEGACY_KERAS=1 python "
    "examples/qat_distillation.py ...) and the optimize extra installed "
    "(pip install keras-kd[optimize])."
)


def copy_model(model):
    """A copy of a Functional model with the same weights."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a Keras model."""
    return float(np.mean(model.predict(x, batch_size=1000, verbose=0).argmax(-1) == y))


def distill(teacher, student, train_ds, epochs, learning_rate, args):
    """Distils `student` from `teacher` for `epochs` epochs."""
    distiller = Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        distillation_loss=KLDivergence(temperature=args.temperature),
        alpha=args.alpha,
    )
    distiller.fit(train_ds, epochs=epochs, verbose=2 if args.verbose else 0)
    return student


def export_row(model, path, quantization, train_ds, test, args, calibrate=True) -> dict:
    """Exports `model`, verifies it and measures the file."""
    report = export.to_tflite(
        model,
        path,
        quantization,
        representative_data=train_ds if quantization and calibrate else None,
        verify_data=test,
        num_calibration_samples=args.calibration_samples,
        num_verify_samples=len(test[1]),
        latency_runs=0,
    )
    return {
        "path": path,
        "quantization": report.quantization,
        "size_bytes": report.size_bytes,
        "gzipped_bytes": optimize.gzipped_size(path),
        "accuracy": export.evaluate_tflite(path, test),
        "keras_accuracy": accuracy(model, *test),
        "top1_agreement": report.top1_agreement,
        "max_abs_diff": report.max_abs_diff,
    }


def run_int8(teacher, student, train_ds, test, out_dir, args) -> dict:
    """PTQ against quantization-aware distillation, at int8."""
    rows = {}
    rows["float32"] = export_row(
        student, os.path.join(out_dir, "float32.tflite"), None, train_ds, test, args
    )
    rows["ptq"] = export_row(
        student, os.path.join(out_dir, "ptq_int8.tflite"), "int8", train_ds, test, args
    )
    keras.utils.set_random_seed(args.seed + 2)
    longer = distill(
        teacher,
        copy_model(student),
        train_ds,
        args.finetune_epochs,
        args.finetune_learning_rate,
        args,
    )
    rows["ptq_same_epochs"] = export_row(
        longer,
        os.path.join(out_dir, "ptq_same_epochs_int8.tflite"),
        "int8",
        train_ds,
        test,
        args,
    )
    keras.utils.set_random_seed(args.seed + 2)
    student_q = optimize.quantization_aware(student)
    distill(
        teacher,
        student_q,
        train_ds,
        args.finetune_epochs,
        args.finetune_learning_rate,
        args,
    )
    rows["qat"] = export_row(  # no calibration: the ranges were learned
        student_q,
        os.path.join(out_dir, "qat_int8.tflite"),
        "int8",
        train_ds,
        test,
        args,
        calibrate=False,
    )
    return rows


def run_pruning(
    teacher, student, train_ds, steps_per_epoch, test, out_dir, args
) -> dict:
    """Pruning-aware distillation to each target sparsity."""
    rows = {}
    total = args.prune_epochs * steps_per_epoch
    end_step = max(1, int(round(args.prune_end_fraction * total)))
    for target in args.sparsities:
        keras.utils.set_random_seed(args.seed + 3)
        student_p = optimize.prune(student, target, end_step=end_step)
        distill(
            teacher,
            student_p,
            train_ds,
            args.prune_epochs,
            args.finetune_learning_rate,
            args,
        )
        pruned = optimize.strip(student_p)
        name = f"{int(round(100 * target))}%"
        row = {"target_sparsity": target, "sparsity": optimize.sparsity(pruned)}
        for quantization in (None, "int8"):
            label = quantization or "float32"
            row[label] = export_row(
                pruned,
                os.path.join(out_dir, f"pruned_{name}_{label}.tflite"),
                quantization,
                train_ds,
                test,
                args,
            )
        rows[name] = row
    return rows


def _kb(n) -> str:
    return f"{n / 1024:.1f}"


def print_tables(results: dict) -> None:
    int8 = results["int8"]
    print()
    print(
        f"{results['dataset']}: teacher {100 * results['teacher_accuracy']:.2f}%, "
        f"float student {100 * results['student_accuracy']:.2f}% "
        f"({results['student_params']:,} parameters), {results['n_test']:,} "
        "test images"
    )
    print(
        "int8: post-training quantization (PTQ) vs quantization-aware "
        "distillation (QAT)"
    )
    header = (
        f"{'model':<22}{'file':>9}{'size KB':>9}{'Keras acc':>11}"
        f"{'file acc':>10}{'agree':>9}"
    )
    print(header)
    print("-" * len(header))
    labels = {
        "float32": "float student",
        "ptq": "PTQ",
        "ptq_same_epochs": f"PTQ, +{results['config']['finetune_epochs']} epochs",
        "qat": f"QAT, +{results['config']['finetune_epochs']} epochs",
    }
    for key, label in labels.items():
        row = int8[key]
        print(
            f"{label:<22}{row['quantization']:>9}{_kb(row['size_bytes']):>9}"
            f"{100 * row['keras_accuracy']:>10.2f}%{100 * row['accuracy']:>9.2f}%"
            f"{100 * row['top1_agreement']:>8.2f}%"
        )
    print()
    print("pruning-aware distillation (sizes in KB; gz: gzipped)")
    header = (
        f"{'sparsity':<10}{'measured':>9}{'fp32 acc':>10}{'fp32':>8}"
        f"{'fp32 gz':>9}{'int8 acc':>10}{'int8':>8}{'int8 gz':>9}"
    )
    print(header)
    print("-" * len(header))
    dense_f, dense_q = int8["float32"], int8["ptq"]
    print(
        f"{'dense':<10}{0.0:>8.1f}%{100 * dense_f['accuracy']:>9.2f}%"
        f"{_kb(dense_f['size_bytes']):>8}{_kb(dense_f['gzipped_bytes']):>9}"
        f"{100 * dense_q['accuracy']:>9.2f}%{_kb(dense_q['size_bytes']):>8}"
        f"{_kb(dense_q['gzipped_bytes']):>9}"
    )
    for name, row in results["pruning"].items():
        f, q = row["float32"], row["int8"]
        print(
            f"{name:<10}{100 * row['sparsity']:>8.1f}%{100 * f['accuracy']:>9.2f}%"
            f"{_kb(f['size_bytes']):>8}{_kb(f['gzipped_bytes']):>9}"
            f"{100 * q['accuracy']:>9.2f}%{_kb(q['size_bytes']):>8}"
            f"{_kb(q['gzipped_bytes']):>9}"
        )
    print(f"wall time {results['wall_time_s']:.0f} s")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Post-training int8 quantization against quantization-"
        "aware distillation, and pruning-aware distillation to 50%% / 80%% "
        "sparsity, on MNIST. " + NEEDS_LEGACY.replace("%", "%%"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dataset",
        choices=["mnist", "digits"],
        default="mnist",
        help="MNIST from tfds, or scikit-learn's 8x8 digits (offline, seconds)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data dir holding MNIST (None: download)"
    )
    parser.add_argument(
        "--out-dir",
        default=os.path.join("runs", "qat_distillation"),
        help="where the .tflite files are written",
    )
    parser.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="train on at most this many images (None: all)",
    )
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument(
        "--student-epochs",
        type=int,
        default=3,
        help="epochs of float distillation before PTQ / QAT",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=1,
        help="epochs of quantization-aware distillation (and "
        "of the PTQ, same-epochs baseline)",
    )
    parser.add_argument(
        "--prune-epochs",
        type=int,
        default=2,
        help="epochs of pruning-aware distillation",
    )
    parser.add_argument(
        "--prune-end-fraction",
        type=float,
        default=0.7,
        help="share of the pruning epochs after which the target sparsity is reached",
    )
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the distillation term (1 - alpha weights the hard labels)",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--finetune-learning-rate",
        type=float,
        default=2e-4,
        help="learning rate of the QAT and pruning phases",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--calibration-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--verbose", action="store_true", help="show Keras's per-epoch logs"
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not backend.LEGACY:
        parser.error(NEEDS_LEGACY + " This process uses Keras 3.")
    if not 0.0 < args.prune_end_fraction <= 1.0:
        parser.error("--prune-end-fraction must be in (0, 1]")
    return args


def main(argv=None) -> dict:
    """Runs the example and returns its figures.

    Args:
        argv: command-line arguments (None: `sys.argv[1:]`).

    Returns:
        A dict with `teacher_accuracy`, `student_accuracy`, `int8` (rows
        `float32`, `ptq`, `ptq_same_epochs`, `qat`, each with `size_bytes`,
        `gzipped_bytes`, `accuracy` of the file, `keras_accuracy`,
        `top1_agreement`...), `pruning` (per target sparsity: the measured
        `sparsity` and `float32` / `int8` rows), `machine`, `wall_time_s` and
        the `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    (x_train, y_train), test, num_classes, _ = data.load_image_classification(
        args.dataset, data_dir=args.data_dir, max_train=args.max_train
    )
    train_ds = data.to_dataset(
        x_train, y_train, args.batch_size, shuffle=True, shuffle_buffer=10_000
    )
    steps_per_epoch = int(np.ceil(len(x_train) / args.batch_size))
    input_shape = test[0].shape[1:]
    verbose = 2 if args.verbose else 0

    # The teacher and the student of examples/deploy_tflite.py.
    keras.utils.set_random_seed(args.seed)
    teacher = models.mlp(
        input_shape, num_classes, hidden=(512, 512), dropout=0.3, name="teacher"
    )
    teacher.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(train_ds, epochs=args.teacher_epochs, verbose=verbose)
    keras.utils.set_random_seed(args.seed + 1)
    student = models.strided_cnn(
        input_shape, num_classes, filters=16, hidden=64, name="student"
    )
    student = distill(
        teacher, student, train_ds, args.student_epochs, args.learning_rate, args
    )

    results = {
        "dataset": args.dataset,
        "teacher_accuracy": accuracy(teacher, *test),
        "student_accuracy": accuracy(student, *test),
        "student_params": int(student.count_params()),
        "n_test": int(len(test[1])),
        "int8": run_int8(teacher, student, train_ds, test, args.out_dir, args),
        "pruning": run_pruning(
            teacher, student, train_ds, steps_per_epoch, test, args.out_dir, args
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    }
    results["wall_time_s"] = time.perf_counter() - start
    results["config"] = {k: v for k, v in vars(args).items() if k != "verbose"}
    print_tables(results)
    return results


if __name__ == "__main__":
    main()
