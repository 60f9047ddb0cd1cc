"""`keras-kd distill`, `keras-kd export` and `keras-kd report`.

    keras-kd distill --teacher teacher.keras --student student.keras \\
        --data images/ --objective kl --temperature 4 --alpha 0.9 \\
        --epochs 10 --output distilled.keras --export int8
    keras-kd export distilled.keras distilled.tflite --quantization int8 \\
        --data images/
    keras-kd report --teacher teacher.keras --student distilled.keras \\
        --tflite distilled.tflite --baseline scratch.keras --data images/ \\
        --split test --out report/

Model files are `.keras` files (or `.h5`), loaded with Keras's
`safe_mode=True` unless `--unsafe` is passed. `--data` is a directory of
images, one sub-directory per class (`DIR/<split>/` is used when it exists),
or a tfds image-classification name (see `keras_kd.cli._io`).
"""

from __future__ import annotations

import os

from keras_kd.cli import _io
from keras_kd.cli._args import (
    UsageError,
    add_verbosity,
    fraction,
    positive_float,
    positive_int,
)

OBJECTIVES = ("kl", "standardized_kl", "soft_ce", "dist", "dkd")
# Command-line names of `kd.export.to_tflite`'s `quantization` modes.
EXPORT_MODES = ("float32", "float16", "dynamic", "int8", "int8_io")


def _objective(name: str, temperature):
    from keras_kd import losses

    kwargs = {} if temperature is None else {"temperature": temperature}
    if name == "kl":
        return losses.KLDivergence(**kwargs)
    if name == "standardized_kl":
        return losses.KLDivergence(standardize=True, **kwargs)
    if name == "soft_ce":
        return losses.SoftTargetCrossEntropy(**kwargs)
    if name == "dist":
        return losses.DIST(**kwargs)
    return losses.DecoupledKD(**kwargs)


def _add_data(parser, split: str, what: str, required: bool = True) -> None:
    parser.add_argument(
        "--data",
        required=required,
        metavar="NAME_OR_DIR",
        help=f"{what}: a directory of images, one sub-directory per class "
        "(DIR/<split>/ when it exists), or a tfds image-classification name",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="tfds data dir; with it nothing is downloaded (default: tfds's "
        "own, which downloads a missing set)",
    )
    parser.add_argument(
        "--split", default=split, help=f"the split to use (default {split})"
    )


def _add_unsafe(parser) -> None:
    parser.add_argument(
        "--unsafe",
        action="store_true",
        help="load model files whose loading runs Python code (Lambda layers); "
        "only for files you trust (Keras's safe_mode=False)",
    )


def add_parsers(sub) -> None:
    """Adds the `distill`, `export` and `report` commands to `sub`."""
    distill = sub.add_parser(
        "distill",
        help="distil a teacher .keras file into a student .keras file",
        description="Train the student with the teacher's soft targets and the "
        "labels (loss = alpha * distillation + (1 - alpha) * cross-entropy), "
        "save it, and optionally export it to .tflite.",
    )
    distill.add_argument("--teacher", required=True, help="the teacher .keras file")
    distill.add_argument(
        "--student", required=True, help="the student .keras file (its start)"
    )
    _add_data(distill, "train", "the training data")
    distill.add_argument(
        "--validation-split",
        default=None,
        help="a split to validate on after each epoch (e.g. test); default none",
    )
    distill.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="kl",
        help="distillation loss: kl (Hinton), standardized_kl (logits z-scored), "
        "soft_ce, dist (DIST), dkd (decoupled KD) (default kl)",
    )
    distill.add_argument(
        "--temperature",
        type=positive_float,
        default=None,
        help="softmax temperature (default: the objective's: 1, dkd 4)",
    )
    distill.add_argument(
        "--alpha",
        type=fraction,
        default=0.5,
        help="weight of the distillation term, in [0, 1] (default 0.5)",
    )
    distill.add_argument("--epochs", type=positive_int, default=10)
    distill.add_argument("--batch-size", type=positive_int, default=64)
    distill.add_argument("--learning-rate", type=positive_float, default=1e-3)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument(
        "--output", required=True, help="where to save the student (.keras)"
    )
    distill.add_argument(
        "--export",
        choices=EXPORT_MODES,
        default=None,
        help="also export the student to OUTPUT_<mode>.tflite, next to it",
    )
    _add_unsafe(distill)
    add_verbosity(distill, 1, "training progress")
    distill.set_defaults(run=run_distill)

    export = sub.add_parser(
        "export",
        help="convert a .keras model to a verified .tflite file",
        description="Convert a .keras model to .tflite (LiteRT), run the file "
        "in the interpreter against the model, and print the export report.",
    )
    export.add_argument("model", help="the .keras model file")
    export.add_argument("output", help="the .tflite file to write")
    export.add_argument(
        "--quantization",
        choices=EXPORT_MODES,
        default="float32",
        help="float32 (default), float16, dynamic (int8 weights), int8 (full "
        "integer, calibrated on --data) or int8_io (int8 inputs and outputs)",
    )
    _add_data(export, "train", "calibration and verification images", required=False)
    _add_unsafe(export)
    export.set_defaults(run=run_export)

    report = sub.add_parser(
        "report",
        help="compare a teacher and its student (and .tflite, baseline)",
        description="Accuracy, agreement with the teacher, calibration (ECE, "
        "NLL), per-class gaps, sizes and latency; written as report.json, "
        "report.md, report.html and PNG plots.",
    )
    report.add_argument("--teacher", required=True, help="the teacher .keras file")
    report.add_argument("--student", required=True, help="the student .keras file")
    report.add_argument("--tflite", default=None, help="the student's .tflite file")
    report.add_argument(
        "--baseline",
        default=None,
        help="a student trained without the teacher (.keras), to see where "
        "distillation made a class worse",
    )
    _add_data(report, "test", "labelled evaluation data")
    report.add_argument("--batch-size", type=positive_int, default=256)
    report.add_argument(
        "--out", required=True, help="directory for the report files (created)"
    )
    _add_unsafe(report)
    report.set_defaults(run=run_report)


def _tflite_path(output: str, mode: str) -> str:
    return f"{os.path.splitext(output)[0]}_{mode}.tflite"


def _export(model, path, mode, data, *, label="the export"):
    import keras_kd as kd

    quantization = None if mode == "float32" else mode
    if mode in ("int8", "int8_io") and data is None:
        raise UsageError(f"--quantization {mode}: needs --data to calibrate on")
    try:
        return kd.export.to_tflite(
            model,
            path,
            quantization=quantization,
            representative_data=data,
            verify_data=data,
        )
    except (ValueError, TypeError) as e:
        raise UsageError(f"{label} failed: {' '.join(str(e).split())}") from None


def run_distill(args) -> int:
    """Runs `keras-kd distill` (see the module docstring)."""
    import keras_kd as kd
    from keras_kd._utils import output_is_probabilities, write_atomically
    from keras_kd.backend import keras

    output = _io.check_output_path(args.output, "--output", (".keras", ".h5"))
    tflite = _tflite_path(output, args.export) if args.export else None
    teacher = _io.load_model(args.teacher, "--teacher", args.unsafe)
    student = _io.load_model(args.student, "--student", args.unsafe)
    t_units, s_units = teacher.outputs[0].shape[-1], student.outputs[0].shape[-1]
    if t_units != s_units:
        raise UsageError(
            f"--teacher outputs {t_units} classes and --student {s_units}; "
            f"they must be the same"
        )
    keras.utils.set_random_seed(args.seed)
    train, names = _io.load_data(
        args.data, args.data_dir, args.split, student, args.batch_size, True, args.seed
    )
    _io.check_classes(student, names, "--student", args.data)
    validation = None
    if args.validation_split:
        if os.path.isdir(args.data) and not os.path.isdir(
            os.path.join(args.data, args.validation_split)
        ):
            raise UsageError(
                f"--validation-split {args.validation_split}: no directory "
                f"{os.path.join(args.data, args.validation_split)}"
            )
        validation, _ = _io.load_data(
            args.data, args.data_dir, args.validation_split, student, args.batch_size
        )
    from_logits = not any(output_is_probabilities(student))
    distiller = kd.Distiller(teacher=teacher, student=student)
    try:
        distiller.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
            metrics=["accuracy"],
            distillation_loss=_objective(args.objective, args.temperature),
            alpha=args.alpha,
        )
    except (ValueError, TypeError) as e:
        raise UsageError(f"--objective {args.objective}: {e}") from None
    print(
        f"Distilling {args.teacher} ({teacher.count_params():,} params) into "
        f"{args.student} ({student.count_params():,} params) on {args.data} "
        f"[{args.split}], {args.objective}, alpha={args.alpha}, "
        f"{args.epochs} epoch(s)",
        flush=True,
    )
    try:
        distiller.fit(
            train,
            validation_data=validation,
            epochs=args.epochs,
            verbose=args.verbose,
            shuffle=False,  # the dataset is shuffled when loaded
        )
    except (ValueError, TypeError) as e:  # kd's checks on the first batch
        raise UsageError(f"--data {args.data}: {' '.join(str(e).split())}") from None
    write_atomically(output, student.save)
    print(f"Saved the student to {output}")
    if tflite:
        report = _export(student, tflite, args.export, train, label="--export")
        print(report)
    return 0


def run_export(args) -> int:
    """Runs `keras-kd export` (see the module docstring)."""
    output = _io.check_output_path(args.output, "OUTPUT", (".tflite",))
    model = _io.load_model(args.model, "MODEL", args.unsafe)
    data = None
    if args.data is not None:
        data, _ = _io.load_data(
            args.data, args.data_dir, args.split, model, 32, model_argument="MODEL"
        )
    print(_export(model, output, args.quantization, data))
    return 0


def run_report(args) -> int:
    """Runs `keras-kd report` (see the module docstring)."""
    import importlib.util

    import keras_kd as kd

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {args.out}: is a file; expected a directory")
    if not os.path.isdir(os.path.dirname(out)):
        raise UsageError(
            f"--out {args.out}: its parent directory {os.path.dirname(out)} "
            f"does not exist"
        )
    if args.tflite is not None:
        if not os.path.isfile(args.tflite):
            raise UsageError(f"--tflite {args.tflite}: no such file")
        if not args.tflite.lower().endswith(".tflite"):
            raise UsageError(f"--tflite {args.tflite}: expected a .tflite file")
    teacher = _io.load_model(args.teacher, "--teacher", args.unsafe)
    student = _io.load_model(args.student, "--student", args.unsafe)
    baseline = None
    if args.baseline is not None:
        baseline = _io.load_model(args.baseline, "--baseline", args.unsafe)
    data, names = _io.load_data(
        args.data, args.data_dir, args.split, student, args.batch_size
    )
    _io.check_classes(student, names, "--student", args.data)
    try:
        report = kd.report.compare(
            teacher,
            student,
            data,
            tflite=args.tflite,
            baseline=baseline,
            class_names=names,
            batch_size=args.batch_size,
        )
    except (ValueError, TypeError) as e:
        raise UsageError(f"the report failed: {' '.join(str(e).split())}") from None
    files = save_report(report, out)
    print(report)
    print(files_line(files))
    if importlib.util.find_spec("matplotlib") is None:
        print("No plots: matplotlib is missing (pip install keras-kd[report]).")
    return 0


def save_report(report, directory) -> dict:
    """Saves every format `report` can write (PNGs only with matplotlib)."""
    import importlib.util

    formats = ["json", "md", "html"]
    if importlib.util.find_spec("matplotlib") is not None:
        formats.append("png")
    return report.save(directory, formats=tuple(formats))


def files_line(files: dict) -> str:
    """One line naming the files `Report.save` wrote."""
    paths = []
    for value in files.values():
        paths.extend([value] if isinstance(value, (str, os.PathLike)) else value)
    paths = [os.fspath(p) for p in paths]
    directory = os.path.dirname(paths[0]) if paths else ""
    names = ", ".join(os.path.basename(p) for p in paths)
    return f"Report files in {directory}: {names}"
