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
or a tfds image-classification name; `--split` takes tfds's slicing syntax
(`train[:10%]`, `train+test`) for both (see `keras_kd.cli._data`). Each
model is fed the pixel range it expects (`--pixel-range`, see
`keras_kd.cli._pixels`), and `distill` stops before training when the
teacher scores no better than chance on the first training images
(`keras_kd.cli._checks`); `report` flags it.
"""

from __future__ import annotations

import os

from keras_kd.cli import _checks, _data, _io, _phone, _pixels
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


# The temperature each objective gets without --temperature: compile's default
# recipe (KL at T=1) for the KL family; DecoupledKD's own 4.
DEFAULT_TEMPERATURES = {
    "kl": 1.0,
    "standardized_kl": 1.0,
    "soft_ce": 1.0,
    "dist": 1.0,
    "dkd": 4.0,
}


def _objective(name: str, temperature):
    from keras_kd import losses

    if temperature is None:
        temperature = DEFAULT_TEMPERATURES[name]
    if name == "kl":
        return losses.KLDivergence(temperature)
    if name == "standardized_kl":
        return losses.KLDivergence(temperature, standardize=True)
    if name == "soft_ce":
        return losses.SoftTargetCrossEntropy(temperature)
    if name == "dist":
        return losses.DIST(temperature)
    return losses.DecoupledKD(temperature)


SPLIT_SYNTAX = (
    "a name, a slice or a union in tfds's syntax (train, train[:80%%], "
    "test[10%%:], train[:1000], train+test); in an image directory a name is "
    "the sub-directory DIR/<name>/ and a slice takes its images in a fixed "
    "shuffled order"
)


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
        "--split",
        default=split,
        help=f"the split to use: {SPLIT_SYNTAX} (default {split})",
    )


def _add_unsafe(parser) -> None:
    parser.add_argument(
        "--unsafe",
        action="store_true",
        help="load model files whose loading runs Python code (Lambda layers); "
        "only for files you trust (Keras's safe_mode=False)",
    )


def _add_distill_objective(distill) -> None:
    distill.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=None,
        help="distillation loss: kl (Hinton), standardized_kl (logits z-scored), "
        "soft_ce, dist (DIST), dkd (decoupled KD) (default: compile's default "
        "recipe; kl with --temperature alone)",
    )
    distill.add_argument(
        "--temperature",
        type=positive_float,
        default=None,
        help="softmax temperature (default: compile's default recipe; 1 with "
        "--objective, dkd 4)",
    )
    distill.add_argument(
        "--alpha",
        type=fraction,
        default=None,
        help="weight of the distillation term, in [0, 1] (default: compile's "
        "default recipe; 0.5 with --objective or --temperature)",
    )


def _add_distill_parser(sub) -> None:
    distill = sub.add_parser(
        "distill",
        help="distil a teacher .keras file into a student .keras file",
        description="Train the student with the teacher's soft targets and the "
        "labels (loss = alpha * distillation + (1 - alpha) * cross-entropy), "
        "save it, and optionally export it to .tflite. Before training, the "
        "teacher is scored on the first training images (at most "
        f"{_checks.SCORED_IMAGES}); a teacher no better than chance stops the "
        "command (exit code 2), naming the likely cause.",
    )
    distill.add_argument("--teacher", required=True, help="the teacher .keras file")
    distill.add_argument(
        "--student", required=True, help="the student .keras file (its start)"
    )
    _add_data(distill, "train", "the training data")
    distill.add_argument(
        "--validation-split",
        default=None,
        help="a split to validate on after each epoch (e.g. test, or "
        "train[90%%:] beside --split train[:90%%]); default none",
    )
    _pixels.add_option(distill, ("teacher", "student"))
    _add_distill_objective(distill)
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
    _phone.add_options(distill, "--export")
    _add_unsafe(distill)
    add_verbosity(distill, 1, "training progress")
    distill.set_defaults(run=run_distill)


def _add_export_parser(sub) -> None:
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
    _pixels.add_option(export, ())
    _phone.add_options(export, "the export")
    _add_unsafe(export)
    export.set_defaults(run=run_export)


def _add_report_parser(sub) -> None:
    report = sub.add_parser(
        "report",
        help="compare a teacher and its student (and .tflite, baseline)",
        description="Accuracy, agreement with the teacher, calibration (ECE, "
        "NLL), per-class gaps, sizes and latency; written as report.json, "
        "report.md, report.html and PNG plots. A teacher no better than chance "
        "on the data is flagged (a note in the report and a warning line).",
    )
    report.add_argument("--teacher", required=True, help="the teacher .keras file")
    report.add_argument("--student", required=True, help="the student .keras file")
    report.add_argument(
        "--tflite",
        default=None,
        help="the student's .tflite file (fed the student's pixel range)",
    )
    report.add_argument(
        "--baseline",
        default=None,
        help="a student trained without the teacher (.keras), to see where "
        "distillation made a class worse",
    )
    _add_data(report, "test", "labelled evaluation data")
    _pixels.add_option(report, ("teacher", "student", "baseline"))
    report.add_argument("--batch-size", type=positive_int, default=256)
    report.add_argument(
        "--out", required=True, help="directory for the report files (created)"
    )
    _add_unsafe(report)
    report.set_defaults(run=run_report)


def add_parsers(sub) -> None:
    """Adds the `distill`, `export` and `report` commands to `sub`."""
    _add_distill_parser(sub)
    _add_export_parser(sub)
    _add_report_parser(sub)


def _tflite_path(output: str, mode: str) -> str:
    return f"{os.path.splitext(output)[0]}_{mode}.tflite"


def _export(model, path, mode, data, *, label="the export", phone=None):
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
            **(phone or {}),
        )
    except (ValueError, TypeError) as e:
        raise UsageError(f"{label} failed: {' '.join(str(e).split())}") from None


def _load_pair(args):
    """The teacher and student files of `distill`, loaded and matched."""
    teacher = _io.load_model(args.teacher, "--teacher", args.unsafe)
    student = _io.load_model(args.student, "--student", args.unsafe)
    t_units, s_units = teacher.outputs[0].shape[-1], student.outputs[0].shape[-1]
    if t_units != s_units:
        raise UsageError(
            f"--teacher outputs {t_units} classes and --student {s_units}; "
            f"they must be the same"
        )
    return teacher, student


def _training_data(args, student, ranges):
    """`(train, validation, names)` of `distill`, in the student's range.

    Shuffled training batches and, with `--validation-split`, validation
    batches whose labels follow the training classes.
    """
    pixel_range = ranges["student"][0]
    train, names = _data.load_data(
        args.data, args.data_dir, args.split, student, args.batch_size, True,
        args.seed, pixel_range=pixel_range,
    )  # fmt: skip
    _data.check_classes(student, names, "--student", args.data)
    validation = None
    if args.validation_split:
        validation, _ = _data.load_data(
            args.data, args.data_dir, args.validation_split, student,
            args.batch_size, pixel_range=pixel_range,
            split_argument="--validation-split",
            fallback=set(_data.split_names(args.split)), class_names=names,
        )  # fmt: skip
    return train, validation, names


def _compiled_distiller(args, teacher, student, routed: bool):
    import keras_kd as kd
    from keras_kd._utils import output_is_probabilities
    from keras_kd.backend import keras

    from_logits = not any(output_is_probabilities(student))
    routing = {}
    if routed:  # each model reads its own copy of the images
        routing = {"teacher_inputs": "teacher", "student_inputs": "student"}
    distiller = kd.Distiller(teacher=teacher, student=student, **routing)
    objective = None  # compile's default recipe, unless told
    if args.objective is not None or args.temperature is not None:
        objective = _objective(args.objective or "kl", args.temperature)
    try:
        distiller.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
            metrics=["accuracy"],
            distillation_loss=objective,
            alpha=args.alpha,
        )
    except (ValueError, TypeError) as e:
        raise UsageError(f"--objective {args.objective}: {e}") from None
    if not args.verbose:  # a verbose `fit` says it itself
        print(f"Recipe: {distiller.recipe}", flush=True)
    return distiller


def run_distill(args) -> int:
    """Runs `keras-kd distill` (see the module docstring)."""
    from keras_kd._utils import write_atomically
    from keras_kd.backend import keras

    output = _io.check_output_path(args.output, "--output", (".keras", ".h5"))
    tflite = _tflite_path(output, args.export) if args.export else None
    if not tflite and (args.labels or args.normalization):
        raise UsageError("--labels and --normalization: need --export")
    _phone.check_args(args)
    teacher, student = _load_pair(args)
    ranges = {
        "teacher": _pixels.resolve(args.pixel_range, "teacher", teacher),
        "student": _pixels.resolve(args.pixel_range, "student", student),
    }
    keras.utils.set_random_seed(args.seed)
    train, validation, names = _training_data(args, student, ranges)
    print(
        f"Distilling {args.teacher} ({teacher.count_params():,} params) into "
        f"{args.student} ({student.count_params():,} params) on {args.data} "
        f"[{args.split}], {args.epochs} epoch(s)",
        flush=True,
    )
    print(_pixels.describe(ranges), flush=True)
    _checks.check_teacher(args, teacher, student, ranges, names)
    routed = ranges["teacher"][0] != ranges["student"][0]
    fed = train
    if routed:
        fed = _pixels.routed(train, ranges["teacher"][0], ranges["student"][0])
        if validation is not None:
            validation = _pixels.routed(
                validation, ranges["teacher"][0], ranges["student"][0]
            )
    distiller = _compiled_distiller(args, teacher, student, routed)
    try:
        distiller.fit(
            fed,
            validation_data=validation,
            epochs=args.epochs,
            verbose=args.verbose,
            shuffle=False,  # the dataset is shuffled when loaded
        )
    except (ValueError, TypeError) as e:  # kd's checks on the first batch
        raise UsageError(f"--data {args.data}: {' '.join(str(e).split())}") from None
    write_atomically(output, student.save)
    print(f"Saved the student to {output}")
    if tflite:  # calibrated on the student's own range
        phone = _phone.metadata(args, ranges["student"][0])
        print(
            _export(student, tflite, args.export, train, label="--export", phone=phone)
        )
    return 0


def run_export(args) -> int:
    """Runs `keras-kd export` (see the module docstring)."""
    output = _io.check_output_path(args.output, "OUTPUT", (".tflite",))
    _phone.check_args(args)
    model = _io.load_model(args.model, "MODEL", args.unsafe)
    data = None
    pixel_range = _pixels.resolve(args.pixel_range, "model", model)
    if args.data is not None:
        data, _ = _data.load_data(
            args.data, args.data_dir, args.split, model, 32, model_argument="MODEL",
            pixel_range=pixel_range[0],
        )  # fmt: skip
    phone = _phone.metadata(args, pixel_range[0])
    print(_export(model, output, args.quantization, data, phone=phone))
    if data is not None:
        print(_pixels.describe({"calibration images": pixel_range}))
    return 0


def _check_report_paths(args) -> str:
    """The `--out` directory (absolute), after checking it and `--tflite`."""
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
    return out


def run_report(args) -> int:
    """Runs `keras-kd report` (see the module docstring)."""
    import importlib.util

    import keras_kd as kd

    out = _check_report_paths(args)
    models = {
        "teacher": _io.load_model(args.teacher, "--teacher", args.unsafe),
        "student": _io.load_model(args.student, "--student", args.unsafe),
    }
    if args.baseline is not None:
        models["baseline"] = _io.load_model(args.baseline, "--baseline", args.unsafe)
    ranges = {
        name: _pixels.resolve(args.pixel_range, name, model)
        for name, model in models.items()
    }
    fed = ranges["student"][0]  # one batch for every model: the student's range
    data, names = _data.load_data(
        args.data, args.data_dir, args.split, models["student"], args.batch_size,
        pixel_range=fed,
    )  # fmt: skip
    _data.check_classes(models["student"], names, "--student", args.data)
    called = {
        name: _pixels.fed_through(model, fed, ranges[name][0])
        for name, model in models.items()
    }
    tflite = " The .tflite file is fed the student's." if args.tflite else ""
    print(_pixels.describe(ranges) + tflite, flush=True)
    try:
        report = kd.report.compare(
            called["teacher"],
            called["student"],
            data,
            tflite=args.tflite,
            baseline=called.get("baseline"),
            class_names=names,
            batch_size=args.batch_size,
        )
    except (ValueError, TypeError) as e:
        raise UsageError(f"the report failed: {' '.join(str(e).split())}") from None
    first = next(iter(data))[0][:1]
    for name, model in models.items():
        if called[name] is not model:  # measured through a wrapper
            own = _pixels.to_range(first, fed, ranges[name][0])
            _pixels.own_figures(report, name, model, own)
    _checks.flag_in_report(report, names, ranges, args)
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
