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

import dataclasses
import os
import tempfile
import time

from keras_kd.cli import _demo_options, _demo_table
from keras_kd.cli._args import UsageError


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


@dataclasses.dataclass
class _Data:
    """The demo's images: labelled, unlabelled (the transfer set), test."""

    x_train: object
    x_lab: object
    y_lab: object
    x_unl: object
    x_test: object
    y_test: object
    n_classes: int
    source: str

    @property
    def shape(self) -> tuple:
        return self.x_train.shape[1:]


def _make_out_dir(args) -> str:
    """The output directory, made before training so that a bad one fails fast."""
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="keras-kd-demo-")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out-dir {out_dir}: cannot be made ({e})") from None
    return out_dir


def demo_data(args) -> _Data:
    """Loads the data and keeps the labels of the first `--labels` images.

    Args:
        args: the parsed command line.

    Returns:
        The images: `x_lab`, `y_lab` (labelled), `x_unl` (the transfer set),
        `x_test`, `y_test`, with `n_classes`, `source` and `shape`.
    """
    x_tr, y_tr, x_te, y_te, n_classes, source = _load(args)
    labels = len(x_tr) if args.labels == "all" else int(args.labels)
    if labels > len(x_tr):
        raise UsageError(
            f"--labels {labels}: more than the {len(x_tr)} training images"
        )
    data = _Data(
        x_tr, x_tr[:labels], y_tr[:labels], x_tr[labels:], x_te, y_te, n_classes,
        source,
    )  # fmt: skip
    print(
        f"Data: {source}: {labels} labelled and {len(data.x_unl)} unlabelled "
        f"training images, {len(x_te)} test images of shape "
        f"{x_tr.shape[1:]}, {n_classes} classes."
    )
    return data


def _hard_loss():
    from keras_kd.backend import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _train_teacher(args, data: _Data):
    """[1/4] A CNN teacher trained on the labelled images, jittered."""
    import keras_kd as kd
    from keras_kd import models
    from keras_kd.backend import keras

    print(
        f"[1/4] Teacher: CNN, {args.teacher_epochs} epochs on the labelled "
        f"images, shifted by up to {args.teacher_jitter} pixel(s)",
        flush=True,
    )
    inputs = keras.Input(data.shape)
    x = inputs
    if args.teacher_jitter:
        x = kd.augment.jitter(args.teacher_jitter, seed=args.seed)(x)
    teacher = keras.Model(
        inputs, models.cnn(data.shape, data.n_classes, name="cnn")(x),
        name="teacher_cnn",
    )  # fmt: skip
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=_hard_loss(), metrics=["accuracy"]
    )
    teacher.fit(
        data.x_lab,
        data.y_lab,
        epochs=args.teacher_epochs,
        batch_size=min(args.batch_size, 32),
        verbose=args.verbose,
    )
    return teacher


def _recipe(args, teacher, shape, n_classes) -> tuple:
    """`(compile arguments, words)` of the distillation recipe: compile's
    default (its rule's choice for this teacher and student) unless
    `--temperature` or `--alpha` is given (KL at that temperature)."""
    import keras_kd as kd
    from keras_kd import models
    from keras_kd.distiller import recipe

    compile_args = {}
    if args.temperature is not None:
        compile_args["distillation_loss"] = kd.losses.KLDivergence(args.temperature)
    if args.alpha is not None:
        compile_args["alpha"] = args.alpha
    if not compile_args:
        student = models.mlp(shape, n_classes, hidden=args.student_hidden)
        chosen = recipe.choose([teacher], student)
        return compile_args, f"compile's default recipe ({chosen.label})"
    if "distillation_loss" not in compile_args:
        compile_args["distillation_loss"] = kd.losses.KLDivergence(1.0)
    return compile_args, f"KL, T={args.temperature or 1.0}, alpha={args.alpha or 0.5}"


def _distillation_data(args, data: _Data):
    """Labelled and unlabelled images mixed in each batch (labelled alone with
    `--labels all`)."""
    import keras_kd as kd

    if len(data.x_unl):
        return kd.data.mix(
            (data.x_lab, data.y_lab),
            data.x_unl,
            batch_size=args.batch_size,
            unlabelled_fraction=args.unlabelled_fraction,
            seed=args.seed,
        )
    return kd.data.to_dataset(
        data.x_lab, data.y_lab, args.batch_size, shuffle=True, seed=args.seed
    )


def student_pair(args, seed: int, shape, n_classes: int) -> tuple:
    """The two students of one seed: the same MLP, the same initial weights.

    Seeds Keras (`keras.utils.set_random_seed(seed)`) and builds the student
    trained from scratch and its copy to distil, so that the seed alone sets
    their initial weights (and, through the same seed, their training's
    shuffling).

    Args:
        args: the parsed command line (`--student-hidden`).
        seed: the student seed.
        shape: one image's shape.
        n_classes: the classes.

    Returns:
        `(scratch, student)`, two uncompiled models with equal weights.
    """
    from keras_kd import models
    from keras_kd.backend import keras

    keras.utils.set_random_seed(seed)
    scratch = models.mlp(
        shape, n_classes, hidden=args.student_hidden, name="student_mlp"
    )
    student = models.mlp(
        shape, n_classes, hidden=args.student_hidden, name="student_mlp"
    )
    student.set_weights(scratch.get_weights())
    return scratch, student


def fit_scratch(args, scratch, data: _Data) -> None:
    """Trains the student from scratch: the labelled images alone.

    Args:
        args: the parsed command line (`--epochs`, `--batch-size`,
            `--learning-rate`, `--verbose`).
        scratch: the student from `student_pair`.
        data: the demo's data.
    """
    from keras_kd.backend import keras

    scratch.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=_hard_loss(),
        metrics=["accuracy"],
    )
    scratch.fit(
        data.x_lab,
        data.y_lab,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )


def _train_seed(args, seed, data: _Data, teacher, train, compile_args) -> tuple:
    """One student seed: `(scratch, student, history)`, both trained."""
    import keras_kd as kd
    from keras_kd.backend import keras

    scratch, student = student_pair(args, seed, data.shape, data.n_classes)
    fit_scratch(args, scratch, data)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=_hard_loss(),
        metrics=["accuracy"],
        **compile_args,
    )
    history = distiller.fit(
        train, epochs=args.epochs, verbose=args.verbose, shuffle=False
    )
    return scratch, student, history


def _train_students(args, data: _Data, teacher) -> tuple:
    """[2/4] `(seeds, first)`: each seed's test accuracies, the first's models."""
    compile_args, recipe = _recipe(args, teacher, data.shape, data.n_classes)
    train = _distillation_data(args, data)
    print(
        f"[2/4] Students: MLP({args.student_hidden}), {args.epochs} epochs, "
        f"{args.students} seed(s): from scratch on the labelled images, and "
        f"distilled on labelled + unlabelled images with {recipe}",
        flush=True,
    )
    seeds, first = [], None
    for k in range(args.students):
        seed = args.seed + 1 + k
        scratch, student, history = _train_seed(
            args, seed, data, teacher, train, compile_args
        )
        result = {
            "seed": seed,
            "scratch": _demo_table.accuracy(scratch, data.x_test, data.y_test),
            "distilled": _demo_table.accuracy(student, data.x_test, data.y_test),
        }
        print(
            f"  student seed {seed}: from scratch {result['scratch']:.2%}, "
            f"distilled {result['distilled']:.2%}",
            flush=True,
        )
        seeds.append(result)
        if first is None:
            first = (scratch, student, history)
    return seeds, first


def _keras_rows(models: dict, data: _Data, teacher_pred) -> list:
    """The table's rows of the teacher and the first seed's two students."""
    return [
        _demo_table.row(
            label,
            models[key].count_params(),
            models[key].predict(data.x_test, verbose=0),
            data.y_test,
            teacher_pred,
        )
        for label, key in (
            ("teacher (CNN)", "teacher"),
            ("student, from scratch", "scratch"),
            ("student, distilled", "student"),
        )
    ]


def _export_student(student, out_dir, data: _Data, teacher_pred) -> tuple:
    """[3/4] `(files, rows)`: the float32 and int8 `.tflite` files, verified."""
    import keras_kd as kd

    print(
        f"[3/4] Exporting the distilled student to LiteRT (.tflite) in {out_dir}",
        flush=True,
    )
    files, rows = {}, []
    for quantization in ("float32", "int8"):
        path = os.path.join(out_dir, f"student_{quantization}.tflite")
        report = kd.export.to_tflite(
            student,
            path,
            quantization=quantization,
            representative_data=data.x_train,
            verify_data=data.x_test,
        )
        print(f"  {report}", flush=True)
        files[quantization] = path
        rows.append(
            _demo_table.row(
                f"distilled, .tflite {quantization}",
                report.num_params,
                kd.export.predict_tflite(path, data.x_test),
                data.y_test,
                teacher_pred,
                size=report.size_bytes,
                latency_ms=report.latency_ms,
            )
        )
    return files, rows


def _write_report(models: dict, data: _Data, tflite, history, out_dir) -> tuple:
    """[4/4] `(report, files)`: `kd.report.compare`, saved in `out_dir`."""
    import keras_kd as kd
    from keras_kd.cli import commands

    print(
        "[4/4] Report: teacher, distilled student, its int8 .tflite file and "
        "the student from scratch as the baseline",
        flush=True,
    )
    report = kd.report.compare(
        models["teacher"],
        models["student"],
        (data.x_test, data.y_test),
        tflite=tflite,
        baseline=models["scratch"],
        history=history,
    )
    return report, commands.save_report(report, out_dir)


def _print_summary(args, data: _Data, seeds, rows, seconds, report_files) -> list:
    """The table and the seeds' wins; returns the gains in points."""
    import numpy as np

    from keras_kd.cli import commands

    gains = [100 * (r["distilled"] - r["scratch"]) for r in seeds]
    wins = sum(g > 0 for g in gains)
    print(
        f"\n{'Validation' if args.validation else 'Test'} set: {len(data.x_test)} "
        f"images; trained in {seconds:.0f} s. Student "
        f"rows: seed {seeds[0]['seed']}."
    )
    print(_demo_table.table(rows))
    print(
        f"Over {len(seeds)} student seed(s), the distilled student beat the "
        f"one trained from scratch in {wins} of {len(seeds)}, by "
        f"{np.mean(gains):+.2f} points of "
        f"{'validation' if args.validation else 'test'} accuracy on average (from "
        f"{min(gains):+.2f} to {max(gains):+.2f})."
    )
    print(commands.files_line(report_files))
    return gains


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

    from keras_kd.backend import keras

    out_dir = _make_out_dir(args)
    keras.utils.set_random_seed(args.seed)
    data = demo_data(args)
    start = time.perf_counter()
    teacher = _train_teacher(args, data)
    seeds, (scratch, student, history) = _train_students(args, data, teacher)
    seconds = time.perf_counter() - start
    models = {"teacher": teacher, "scratch": scratch, "student": student}
    teacher_pred = np.argmax(teacher.predict(data.x_test, verbose=0), -1)
    rows = _keras_rows(models, data, teacher_pred)
    files, tflite_rows = _export_student(student, out_dir, data, teacher_pred)
    rows += tflite_rows
    report, report_files = _write_report(models, data, files["int8"], history, out_dir)
    gains = _print_summary(args, data, seeds, rows, seconds, report_files)
    return {
        "rows": rows,
        "seeds": seeds,
        "wins": sum(g > 0 for g in gains),
        "mean_gain": float(np.mean(gains)),
        "seconds": seconds,
        "dataset": data.source,
        "labelled": len(data.x_lab),
        "unlabelled": len(data.x_unl),
        "out_dir": out_dir,
        "models": models,
        "report": report,
        "report_files": report_files,
    }


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
    _demo_options.add_data_options(demo)
    _demo_options.add_training_options(demo)
    _demo_options.add_size_and_output_options(demo)
    demo.set_defaults(run=run_demo)
