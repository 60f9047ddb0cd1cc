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
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _common, _deploy

import argparse
import time

import _common
import _deploy
from _deploy import distill
from keras_kd import backend, export, optimize
from keras_kd.backend import keras

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
        "keras_accuracy": _common.accuracy(model, *test),
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
    parser = _common.parser(
        "Post-training int8 quantization against quantization-"
        "aware distillation, and pruning-aware distillation to 50%% / 80%% "
        "sparsity, on MNIST. " + NEEDS_LEGACY.replace("%", "%%")
    )
    _deploy.add_options(parser, os.path.join("runs", "qat_distillation"))
    add = parser.add_argument
    add("--teacher-epochs", type=int, default=3)
    add(
        "--student-epochs",
        type=int,
        default=3,
        help="epochs of float distillation before PTQ / QAT",
    )
    add(
        "--finetune-epochs",
        type=int,
        default=1,
        help="epochs of quantization-aware distillation (and "
        "of the PTQ, same-epochs baseline)",
    )
    add(
        "--prune-epochs",
        type=int,
        default=2,
        help="epochs of pruning-aware distillation",
    )
    add(
        "--prune-end-fraction",
        type=float,
        default=0.7,
        help="share of the pruning epochs after which the target sparsity is reached",
    )
    add("--sparsities", type=float, nargs="+", default=[0.5, 0.8])
    add("--temperature", type=float, default=4.0)
    _common.add_alpha(parser, 0.5)
    add("--learning-rate", type=float, default=1e-3)
    add(
        "--finetune-learning-rate",
        type=float,
        default=2e-4,
        help="learning rate of the QAT and pruning phases",
    )
    add("--batch-size", type=int, default=128)
    add("--calibration-samples", type=int, default=500)
    add("--seed", type=int, default=0)
    _common.add_verbose(parser)
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
    train_ds, test, num_classes, steps_per_epoch = _deploy.load(args)
    # The teacher and the student of examples/deploy_tflite.py.
    teacher, student = _deploy.teacher_and_student(
        train_ds, test[0].shape[1:], num_classes, args
    )
    results = {
        "dataset": args.dataset,
        "teacher_accuracy": _common.accuracy(teacher, *test),
        "student_accuracy": _common.accuracy(student, *test),
        "student_params": int(student.count_params()),
        "n_test": int(len(test[1])),
        "int8": run_int8(teacher, student, train_ds, test, args.out_dir, args),
        "pruning": run_pruning(
            teacher, student, train_ds, steps_per_epoch, test, args.out_dir, args
        ),
        "machine": _deploy.machine(),
    }
    results["wall_time_s"] = time.perf_counter() - start
    results["config"] = _common.config(args)
    print_tables(results)
    return results


if __name__ == "__main__":
    main()
