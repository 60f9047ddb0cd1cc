"""The `keras-kd` command line.

    keras-kd demo                       # offline, scikit-learn's digits
    keras-kd demo --dataset mnist --data-dir ../shared/datasets/tfds

`demo` trains a CNN teacher, then the same small student twice (from
scratch, and distilled from the teacher) with the same budget, exports the
distilled student to float32 and int8 `.tflite` files (verified in the
LiteRT interpreter), and prints a table of parameters, file size, test
accuracy, agreement with the teacher and latency.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load(args):
    from keras_kd import data

    (x_tr, y_tr), (x_te, y_te), n_classes, source = data.load_image_classification(
        args.dataset,
        data_dir=args.data_dir,
        max_train=args.max_train,
        max_test=args.max_test,
        seed=args.seed,
    )
    return x_tr, y_tr, x_te, y_te, n_classes, source


def run_demo(args) -> dict:
    """Runs the demo described by parsed `args`.

    Args:
        args: the parsed `keras-kd demo` command line.

    Returns:
        A dict with `rows` (one per model and `.tflite` file: `model`,
        `params`, `accuracy`, `agreement` with the teacher, `size_bytes`,
        `latency_ms`), `seconds` of training, the `dataset`, the `out_dir`
        holding the `.tflite` files and the trained Keras `models`
        (`teacher`, `scratch`, `student`).
    """
    import numpy as np

    import keras_kd as kd
    from keras_kd import models
    from keras_kd.backend import keras

    # Made before training, so that a directory that cannot be made fails fast.
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="keras-kd-demo-")
    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    x_tr, y_tr, x_te, y_te, n_classes, source = _load(args)
    print(
        f"Data: {source}: {len(x_tr)} training and {len(x_te)} test images of "
        f"shape {x_tr.shape[1:]}, {n_classes} classes."
    )
    shape = x_tr.shape[1:]
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    verbose = args.verbose
    start = time.perf_counter()

    print(f"\n[1/3] Teacher: CNN, {args.teacher_epochs} epochs")
    teacher = models.cnn(shape, n_classes, name="teacher_cnn")
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=hard, metrics=["accuracy"]
    )
    teacher.fit(
        x_tr,
        y_tr,
        epochs=args.teacher_epochs,
        batch_size=args.batch_size,
        verbose=verbose,
    )

    print(
        f"\n[2/3] Student from scratch: MLP({args.student_hidden}), "
        f"{args.epochs} epochs"
    )
    keras.utils.set_random_seed(args.seed + 1)
    scratch = models.mlp(
        shape, n_classes, hidden=args.student_hidden, name="student_mlp"
    )
    initial = scratch.get_weights()
    scratch.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=hard,
        metrics=["accuracy"],
    )
    scratch.fit(
        x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size, verbose=verbose
    )

    print(
        f"\n[3/3] Student distilled: same MLP and initial weights, {args.epochs} "
        f"epochs, T={args.temperature}, alpha={args.alpha}"
    )
    keras.utils.set_random_seed(args.seed + 1)
    student = models.mlp(
        shape, n_classes, hidden=args.student_hidden, name="student_mlp"
    )
    student.set_weights(initial)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=hard,
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
        alpha=args.alpha,
    )
    distiller.fit(
        x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size, verbose=verbose
    )
    seconds = time.perf_counter() - start

    teacher_pred = np.argmax(teacher.predict(x_te, verbose=0), -1)
    rows = []
    for label, model in (
        ("teacher (CNN)", teacher),
        ("student, from scratch", scratch),
        ("student, distilled", student),
    ):
        rows.append(
            _row(
                label,
                model.count_params(),
                model.predict(x_te, verbose=0),
                y_te,
                teacher_pred,
            )
        )

    print(f"\nExporting the distilled student to LiteRT (.tflite) in {out_dir}")
    for quantization in ("float32", "int8"):
        path = os.path.join(out_dir, f"student_{quantization}.tflite")
        report = kd.export.to_tflite(
            student,
            path,
            quantization=quantization,
            representative_data=x_tr,
            verify_data=x_te,
        )
        print(f"  {report}")
        rows.append(
            _row(
                f"distilled, .tflite {quantization}",
                report.num_params,
                kd.export.predict_tflite(path, x_te),
                y_te,
                teacher_pred,
                size=report.size_bytes,
                latency_ms=report.latency_ms,
            )
        )
    print(f"\nTest set: {len(x_te)} images; trained in {seconds:.0f} s.\n")
    print(_table(rows))
    return {
        "rows": rows,
        "seconds": seconds,
        "dataset": source,
        "out_dir": out_dir,
        "models": {"teacher": teacher, "scratch": scratch, "student": student},
    }


def _row(label, params, outputs, y, teacher_pred, size=None, latency_ms=None):
    import numpy as np

    pred = np.argmax(outputs, -1)
    return {
        "model": label,
        "params": int(params),
        "accuracy": float(np.mean(pred == y)),
        "agreement": float(np.mean(pred == teacher_pred)),
        "size_bytes": size,
        "latency_ms": latency_ms,
    }


def _table(rows) -> str:
    header = (
        f"{'model':<28}{'params':>9}{'file size':>11}{'test accuracy':>15}"
        f"{'agreement w/ teacher':>22}{'latency/image':>15}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        size = f"{r['size_bytes'] / 1024:.1f} KiB" if r["size_bytes"] else "-"
        latency = f"{r['latency_ms'] * 1000:.1f} us" if r["latency_ms"] else "-"
        lines.append(
            f"{r['model']:<28}{r['params']:>9,}{size:>11}{r['accuracy']:>15.2%}"
            f"{r['agreement']:>22.2%}{latency:>15}"
        )
    return "\n".join(lines)


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        description="Knowledge distillation for Keras on TensorFlow.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="distil a CNN into a small MLP on real data (offline by default)",
        description=(
            "Train a CNN teacher, then the same small student from scratch "
            "and distilled, and compare them. Offline on scikit-learn's "
            "handwritten digits by default."
        ),
    )
    demo.add_argument(
        "--dataset",
        default="digits",
        help="'digits' (bundled with scikit-learn) or a tfds image "
        "classification name such as 'mnist' (default: digits)",
    )
    demo.add_argument("--data-dir", default=None, help="tfds data dir (for --dataset)")
    demo.add_argument("--teacher-epochs", type=_positive_int, default=30)
    demo.add_argument("--epochs", type=_positive_int, default=60, help="student epochs")
    demo.add_argument("--student-hidden", type=_positive_int, default=32)
    demo.add_argument("--temperature", type=float, default=8.0)
    demo.add_argument(
        "--alpha",
        type=float,
        default=0.9,
        help="weight of the distillation term (default 0.9)",
    )
    demo.add_argument("--learning-rate", type=float, default=1e-2)
    demo.add_argument("--batch-size", type=_positive_int, default=64)
    demo.add_argument(
        "--max-train",
        type=_positive_int,
        default=None,
        help="use at most this many training images",
    )
    demo.add_argument(
        "--max-test",
        type=_positive_int,
        default=None,
        help="use at most this many test images",
    )
    demo.add_argument(
        "--out-dir",
        default=None,
        help="where to write the .tflite files (default: a new "
        "temporary directory, printed)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=[0, 1, 2],
        help="Keras progress output (default 1: progress bars)",
    )
    return parser


def main(argv=None) -> int:
    """Entry point of the `keras-kd` command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not 0.0 <= args.alpha <= 1.0:
            parser.error(f"--alpha must be between 0 and 1, got {args.alpha}")
        if args.temperature <= 0:
            parser.error(
                f"--temperature must be greater than 0, got {args.temperature}"
            )
        run_demo(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
