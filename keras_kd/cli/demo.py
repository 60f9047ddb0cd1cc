"""`keras-kd demo`: distillation on real data, offline, in a few lines.

    keras-kd demo                       # offline, scikit-learn's digits
    keras-kd demo --dataset mnist --data-dir ../shared/datasets/tfds

`demo` keeps the labels of 300 training images and treats the rest as a
transfer set without labels. It trains a CNN teacher on the labelled images,
then the same small student, from the same initial weights, for several
seeds: from scratch on the labelled images, and distilled from the teacher
on the labelled and unlabelled images with `compile`'s default recipe. It
exports the first distilled student to float32 and int8 `.tflite` files
(verified in the LiteRT interpreter), prints a table of parameters, file
size, test accuracy, agreement with the teacher and latency, then how many
student seeds distillation won and by how much, and writes the report of
`kd.report.compare` (teacher, distilled student, its int8 `.tflite` file,
and the student from scratch as the baseline) beside the `.tflite` files.
`--labels all` trains both students on every label (no transfer set). On a
larger data set, bound the run with `--max-train` (an epoch of distillation
is one pass over the transfer set).

It is quiet by default: one line per stage and per student seed, no Keras
progress bars (`--verbose` shows them), TensorFlow's native log lines kept
out of the terminal.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from keras_kd.cli._args import (
    UsageError,
    add_verbosity,
    fraction,
    positive_float,
    positive_int,
)


def _load(args):
    from keras_kd import data

    (x_tr, y_tr), (x_te, y_te), n_classes, source = data.load_image_classification(
        args.dataset,
        data_dir=args.data_dir,
        max_train=args.max_train,
        max_test=args.max_test,
        seed=args.seed,
    )
    if args.validation:
        # Settings are chosen here: the last 300 training images stand in for
        # the test set, which is not loaded into the comparison at all.
        (x_tr, y_tr), (x_te, y_te) = data.split_validation(x_tr, y_tr, 300)
        source += ", validation split (300 of the training images)"
    return x_tr, y_tr, x_te, y_te, n_classes, source


def run_demo(args) -> dict:
    """Runs the demo described by parsed `args`.

    The scenario is the one where a teacher pays most: few labels, more
    images without labels. The first `args.labels` training images keep
    their labels and the rest are a transfer set without them. A CNN
    teacher learns from the labelled images (with `--teacher-jitter`
    shifts); then, for each of `args.students` student seeds, the same MLP
    from the same initial weights is trained on the labelled images alone
    ("from scratch") and distilled from the teacher on the labelled images
    plus the transfer set (`keras_kd.data.mix`) with `compile`'s default
    recipe, unless `--temperature` / `--alpha` override it.

    Args:
        args: the parsed `keras-kd demo` command line.

    Returns:
        A dict with `rows` (one per model and `.tflite` file of the first
        student seed: `model`, `params`, `accuracy`, `agreement` with the
        teacher, `size_bytes`, `latency_ms`), `seeds` (one dict per student
        seed: `seed`, `scratch` and `distilled` test accuracy), `wins` (seeds
        where distilled beat scratch), `mean_gain` (points), `seconds` of
        training, the `dataset`, `labelled` and `unlabelled` counts, the
        `out_dir` holding the `.tflite` and report files, the trained Keras
        `models` of the first seed (`teacher`, `scratch`, `student`), the
        `report` (a `kd.report.Report`) and the `report_files` it wrote.
    """
    import numpy as np

    import keras_kd as kd
    from keras_kd import models
    from keras_kd.backend import keras
    from keras_kd.cli import commands

    # Made before training, so that a directory that cannot be made fails fast.
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="keras-kd-demo-")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out-dir {out_dir}: cannot be made ({e})") from None
    keras.utils.set_random_seed(args.seed)
    x_tr, y_tr, x_te, y_te, n_classes, source = _load(args)
    labels = len(x_tr) if args.labels == "all" else int(args.labels)
    if labels > len(x_tr):
        raise UsageError(
            f"--labels {labels}: more than the {len(x_tr)} training images"
        )
    x_lab, y_lab, x_unl = x_tr[:labels], y_tr[:labels], x_tr[labels:]
    print(
        f"Data: {source}: {labels} labelled and {len(x_unl)} unlabelled "
        f"training images, {len(x_te)} test images of shape "
        f"{x_tr.shape[1:]}, {n_classes} classes."
    )
    shape = x_tr.shape[1:]
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    verbose = args.verbose
    start = time.perf_counter()

    print(
        f"[1/4] Teacher: CNN, {args.teacher_epochs} epochs on the labelled "
        f"images, shifted by up to {args.teacher_jitter} pixel(s)",
        flush=True,
    )
    inputs = keras.Input(shape)
    x = inputs
    if args.teacher_jitter:
        x = kd.augment.jitter(args.teacher_jitter, seed=args.seed)(x)
    teacher = keras.Model(
        inputs, models.cnn(shape, n_classes, name="cnn")(x), name="teacher_cnn"
    )
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=hard, metrics=["accuracy"]
    )
    teacher.fit(
        x_lab,
        y_lab,
        epochs=args.teacher_epochs,
        batch_size=min(args.batch_size, 32),
        verbose=verbose,
    )

    compile_args = {}
    if args.temperature is not None:
        compile_args["distillation_loss"] = kd.losses.KLDivergence(args.temperature)
    if args.alpha is not None:
        compile_args["alpha"] = args.alpha
    recipe = (
        "compile's default recipe (KL, T=1, alpha=0.5)"
        if not compile_args
        else f"T={args.temperature or 1.0}, alpha={args.alpha or 0.5}"
    )
    train = (
        kd.data.mix(
            (x_lab, y_lab),
            x_unl,
            batch_size=args.batch_size,
            unlabelled_fraction=args.unlabelled_fraction,
            seed=args.seed,
        )
        if len(x_unl)
        else kd.data.to_dataset(
            x_lab, y_lab, args.batch_size, shuffle=True, seed=args.seed
        )
    )
    print(
        f"[2/4] Students: MLP({args.student_hidden}), {args.epochs} epochs, "
        f"{args.students} seed(s): from scratch on the labelled images, and "
        f"distilled on labelled + unlabelled images with {recipe}",
        flush=True,
    )
    seeds, first = [], None
    for k in range(args.students):
        seed = args.seed + 1 + k
        keras.utils.set_random_seed(seed)
        scratch = models.mlp(
            shape, n_classes, hidden=args.student_hidden, name="student_mlp"
        )
        student = models.mlp(
            shape, n_classes, hidden=args.student_hidden, name="student_mlp"
        )
        student.set_weights(scratch.get_weights())
        scratch.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=hard,
            metrics=["accuracy"],
        )
        scratch.fit(
            x_lab,
            y_lab,
            epochs=args.epochs,
            batch_size=args.batch_size,
            verbose=verbose,
        )
        distiller = kd.Distiller(teacher=teacher, student=student)
        distiller.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=hard,
            metrics=["accuracy"],
            **compile_args,
        )
        history = distiller.fit(
            train, epochs=args.epochs, verbose=verbose, shuffle=False
        )
        result = {
            "seed": seed,
            "scratch": _accuracy(scratch, x_te, y_te),
            "distilled": _accuracy(student, x_te, y_te),
        }
        print(
            f"  student seed {seed}: from scratch {result['scratch']:.2%}, "
            f"distilled {result['distilled']:.2%}",
            flush=True,
        )
        seeds.append(result)
        if first is None:
            first = (scratch, student, history)
    seconds = time.perf_counter() - start
    scratch, student, history = first

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

    print(
        f"[3/4] Exporting the distilled student to LiteRT (.tflite) in {out_dir}",
        flush=True,
    )
    files = {}
    for quantization in ("float32", "int8"):
        path = os.path.join(out_dir, f"student_{quantization}.tflite")
        report = kd.export.to_tflite(
            student,
            path,
            quantization=quantization,
            representative_data=x_tr,
            verify_data=x_te,
        )
        print(f"  {report}", flush=True)
        files[quantization] = path
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
    print(
        "[4/4] Report: teacher, distilled student, its int8 .tflite file and "
        "the student from scratch as the baseline",
        flush=True,
    )
    report = kd.report.compare(
        teacher,
        student,
        (x_te, y_te),
        tflite=files["int8"],
        baseline=scratch,
        history=history,
    )
    report_files = commands.save_report(report, out_dir)
    gains = [100 * (r["distilled"] - r["scratch"]) for r in seeds]
    wins = sum(g > 0 for g in gains)
    print(
        f"\n{'Validation' if args.validation else 'Test'} set: {len(x_te)} "
        f"images; trained in {seconds:.0f} s. Student "
        f"rows: seed {seeds[0]['seed']}."
    )
    print(_table(rows))
    print(
        f"Over {len(seeds)} student seed(s), the distilled student beat the "
        f"one trained from scratch in {wins} of {len(seeds)}, by "
        f"{np.mean(gains):+.2f} points of "
        f"{'validation' if args.validation else 'test'} accuracy on average (from "
        f"{min(gains):+.2f} to {max(gains):+.2f})."
    )
    print(commands.files_line(report_files))
    return {
        "rows": rows,
        "seeds": seeds,
        "wins": wins,
        "mean_gain": float(np.mean(gains)),
        "seconds": seconds,
        "dataset": source,
        "labelled": labels,
        "unlabelled": len(x_unl),
        "out_dir": out_dir,
        "models": {"teacher": teacher, "scratch": scratch, "student": student},
        "report": report,
        "report_files": report_files,
    }


def _accuracy(model, x, y) -> float:
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


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


def add_parser(sub) -> None:
    """Adds the `demo` command to the sub-parsers `sub`."""
    demo = sub.add_parser(
        "demo",
        help="distil a CNN into a small MLP on real data (offline by default)",
        description=(
            "Train a CNN teacher, then the same small student from scratch "
            "and distilled, compare them, export the student to .tflite and "
            "write a report. Offline on scikit-learn's handwritten digits by "
            "default; one line per stage unless --verbose."
        ),
    )
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
        help="distillation temperature (default: compile's, 1.0)",
    )
    demo.add_argument(
        "--alpha",
        type=fraction,
        default=None,
        help="weight of the distillation term, in [0, 1] (default: compile's, 0.5)",
    )
    demo.add_argument("--learning-rate", type=positive_float, default=1e-2)
    demo.add_argument("--batch-size", type=positive_int, default=64)
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
    demo.set_defaults(run=run_demo)
