"""`compare`: teacher vs student (vs a scratch baseline, vs the `.tflite` file).

Every model runs once over the same batches of labelled data; the figures
are computed in numpy from the collected outputs (`metrics.py`), and sizes
and latencies are measured on the side.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from keras_kd._batches import input_specs, iterate_batches
from keras_kd._utils import check_int, check_model
from keras_kd.backend import tf
from keras_kd.report import metrics
from keras_kd.report.history import normalize_history
from keras_kd.report.ood import check_ood_data, ood_probabilities, ood_summary
from keras_kd.report.result import Report

_DATA_EXPECTED = (
    "labelled samples: a tuple (x, y) of numpy arrays or a tf.data.Dataset of "
    "(x, y) batches (e.g. tfds with as_supervised=True)"
)


def _check_data(data):
    if isinstance(data, tuple):
        if len(data) < 2 or data[1] is None:
            raise ValueError(
                f"Argument `data` must hold labels. Received a tuple of "
                f"{len(data)} element(s). Expected {_DATA_EXPECTED}."
            )
        return
    if isinstance(data, tf.data.Dataset):
        return
    raise TypeError(
        f"Argument `data` must be {_DATA_EXPECTED}. Received: data of type "
        f"{type(data).__module__}.{type(data).__name__}."
    )


def _check_tflite(tflite):
    if tflite is None:
        return None
    if not isinstance(tflite, (str, os.PathLike)):
        raise TypeError(
            "Argument `tflite` must be the path (str or os.PathLike) of a "
            f"`.tflite` file, or None. Received: tflite={tflite!r} of type "
            f"{type(tflite).__name__}."
        )
    path = os.fspath(tflite)
    if not os.path.isfile(path):
        raise ValueError(
            f"Argument `tflite` must be an existing `.tflite` file. Received: "
            f"tflite={path!r}, which does not exist."
        )
    return path


def _batches(data, specs, batch_size):
    """Yields `(flat inputs, labels)` of at most `batch_size` samples."""
    for inputs, labels in iterate_batches(data, specs, "data", None, with_labels=True):
        if labels is None:
            raise ValueError(
                "Argument `data` must hold labels. Received batches without "
                f"them. Expected {_DATA_EXPECTED}."
            )
        for start in range(0, len(inputs[0]), batch_size):
            stop = start + batch_size
            yield [a[start:stop] for a in inputs], labels[start:stop]


def _single_output(outputs, name):
    if isinstance(outputs, dict) or isinstance(outputs, (list, tuple)):
        flat = tf.nest.flatten(outputs)
        if len(flat) != 1:
            raise ValueError(
                f"Argument `{name}` must have one output (batch, num_classes). "
                f"Received a model with {len(flat)} outputs."
            )
        outputs = flat[0]
    outputs = np.asarray(outputs)
    if outputs.ndim != 2 or outputs.shape[-1] < 2:
        raise ValueError(
            f"Argument `{name}` must output (batch, num_classes) with "
            f"num_classes >= 2. Received outputs of shape {outputs.shape}."
        )
    return outputs


def _keras_size(model):
    """The size of `model` saved as a `.keras` file, or None and why not.

    A compiled, trained model would also save its optimizer's state (twice
    its weights with Adam); the size is that of the model alone (rebuilt
    from its config with its weights, uncompiled), as it ships. Where that
    fails (some subclassed models) the model is saved as it is and a note
    says so.
    """
    saved, note = model, None
    if _has_optimizer_state(model):
        try:
            # Not `clone_model`: Keras 3 compiles the clone with the same
            # optimizer, whose state would be saved again.
            saved = type(model).from_config(model.get_config())
            saved.set_weights(model.get_weights())
        except Exception:  # any failure: measure the model as it is
            saved = model
            note = (
                f"{model.name}: its .keras size includes the optimizer's state "
                "(the model is compiled and could not be cloned without it)."
            )
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        try:
            saved.save(path)
        except Exception as error:  # any failure: size unknown
            return None, f"{model.name}: not saved as .keras ({error})"
        return os.path.getsize(path), note


def _has_optimizer_state(model) -> bool:
    """Whether `model.save` writes optimizer variables (a compiled, trained model)."""
    optimizer = getattr(model, "optimizer", None)
    variables = getattr(optimizer, "variables", None)
    if callable(variables):  # tf_keras's legacy optimizers
        variables = variables()
    return bool(variables)


def _median_ms(call, runs):
    for _ in range(min(3, runs)):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _check_class_names(class_names, num_classes):
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if isinstance(class_names, (str, bytes)) or not all(
        isinstance(n, str) for n in class_names
    ):
        raise TypeError(
            "Argument `class_names` must be a list of str, one per class, or "
            f"None. Received: class_names={class_names!r}."
        )
    class_names = list(class_names)
    if len(class_names) != num_classes:
        raise ValueError(
            f"Argument `class_names` must name the models' {num_classes} "
            f"classes. Received {len(class_names)} names."
        )
    return class_names


def worst_classes(teacher_acc, student_acc, class_names, worst):
    """The `worst` classes by gap (teacher minus student accuracy), largest first.

    Only classes where the student is behind the teacher (gap > 0) are
    listed; classes without samples are left out; ties keep class order.
    """
    rows = [
        {
            "class": c,
            "name": class_names[c],
            "teacher": t,
            "student": s,
            "gap": t - s,
        }
        for c, (t, s) in enumerate(zip(teacher_acc, student_acc))
        if t is not None and s is not None and t - s > 0
    ]
    rows.sort(key=lambda row: -row["gap"])  # stable: ties keep class order
    return rows[:worst]


def bias_classes(teacher_acc, student_acc, baseline_acc, class_names):
    """Classes where distillation left the student below the scratch baseline.

    A class is listed when `student < baseline` (per-class accuracy). Its
    `kind`:

    - "inherited": the teacher is below the baseline there too, and the
      student is no worse than the teacher (it copied the teacher's weakness);
    - "amplified": the teacher is below the baseline there, and the student
      is worse still;
    - "introduced": the teacher is at or above the baseline there, so the
      loss comes from the distillation itself, not from the teacher.

    Sorted by `drop` (baseline minus student), largest first.
    """
    rows = []
    for c, (t, s, b) in enumerate(zip(teacher_acc, student_acc, baseline_acc)):
        if t is None or s is None or b is None or not s < b:
            continue
        below = t < b
        kind = ("amplified" if s < t else "inherited") if below else "introduced"
        rows.append(
            {
                "class": c,
                "name": class_names[c],
                "teacher": t,
                "student": s,
                "baseline": b,
                "drop": b - s,
                "teacher_below_baseline": below,
                "kind": kind,
            }
        )
    rows.sort(key=lambda row: -row["drop"])
    return rows


def compare(
    teacher,
    student,
    data,
    tflite=None,
    baseline=None,
    history=None,
    *,
    ood_data=None,
    class_names=None,
    batch_size: int = 256,
    num_bins: int = 15,
    latency_runs: int = 20,
    worst: int = 5,
) -> Report:
    """Compares a student with its teacher (and a scratch baseline) on data.

    Runs each model once over `data` and reports, per model: accuracy, top-1
    agreement with the teacher, expected calibration error (`num_bins`
    equal-width bins), negative log-likelihood, per-class accuracy,
    parameter count, file size (the `.keras` file, or the `.tflite` file)
    and latency per sample (median of `latency_runs` batch-1 calls; the
    `.tflite` file runs in the LiteRT interpreter). It lists the classes
    where the student falls furthest behind the teacher and, with a
    `baseline` (the same student architecture trained without a teacher),
    the classes where distillation made the student worse (see
    `bias_classes` for "inherited", "amplified" and "introduced"). With
    `ood_data`, inputs from outside the data's distribution, it reports per
    model the mean predictive entropy on `data` and on `ood_data` and the
    AUROC of the entropy separating them (OOD as the positive class), and
    the bias section says whether the student is more confident than its
    teacher off the data (a lower mean OOD entropy).

    Outputs may be logits or probabilities: rows that are non-negative and
    sum to 1 within 1e-3 are used as they are, others are softmaxed.

    Args:
        teacher: the teacher, a Keras model with one output (batch, classes).
        student: the distilled student, likewise.
        data: labelled samples: `(x, y)` numpy arrays or a `tf.data.Dataset`
            of `(x, y)` batches. Labels are class indices or one-hot rows.
        tflite: optional path of the student's `.tflite` file.
        baseline: optional scratch student (a Keras model).
        history: optional training history: a `History`, a dict of per-epoch
            lists, `SelfDistillation.generation_results`, or a list of these
            (one per generation); its losses are plotted.
        ood_data: optional out-of-distribution inputs, no labels needed: a
            numpy array, a tuple `(x,)` or `(x, y)` (labels ignored) or a
            `tf.data.Dataset`, with samples of the models' input shape
            (e.g. rotated images, noise, another dataset). The teacher,
            student and baseline run on them; the `.tflite` file does not.
        class_names: optional names of the classes (default "0", "1", ...).
        batch_size: samples per model call.
        num_bins: confidence bins of the ECE and the reliability diagrams.
        latency_runs: timed single-sample calls per model (0: no latency).
        worst: how many of the worst classes to list.

    Returns:
        A `kd.report.Report`: print it, `save(directory)` it, or read
        `to_dict()`.

    Raises:
        TypeError / ValueError: for a bad argument, empty or unlabelled data,
            labels outside the classes, models whose class counts differ, or
            `ood_data` whose samples are not of the models' input shape.

    Example:

    ```python
    report = kd.report.compare(teacher, student, (x_test, y_test),
                               tflite="student.tflite", baseline=scratch)
    print(report)
    report.save("report/")  # report.json, .md, .html and the plots
    ood = kd.report.compare(teacher, student, (x_test, y_test),
                            ood_data=np.rot90(x_test, axes=(1, 2))).ood
    ```
    """
    check_model(teacher, "teacher")
    check_model(student, "student")
    check_model(baseline, "baseline", allow_none=True)
    tflite = _check_tflite(tflite)
    _check_data(data)
    check_ood_data(ood_data)
    batch_size = check_int(batch_size, "batch_size", minimum=1, what="samples per call")
    num_bins = check_int(num_bins, "num_bins", minimum=1, what="confidence bins")
    latency_runs = check_int(
        latency_runs, "latency_runs", minimum=0, what="timed calls"
    )
    worst = check_int(worst, "worst", minimum=0, what="classes listed")
    segments = normalize_history(history)

    models = {"teacher": teacher, "student": student}
    if baseline is not None:
        models["baseline"] = baseline
    runner = None
    if tflite is not None:
        from keras_kd.export.runtime import TFLiteRunner

        runner = TFLiteRunner(path=tflite)
    specs, structure = input_specs(teacher, None, [data])
    ood_probs = None
    if ood_data is not None:  # first: a wrong shape is found before the rest
        ood_probs = ood_probabilities(models, ood_data, specs, structure, batch_size)
    outputs, labels, first = _run_models(
        models, runner, data, specs, structure, batch_size
    )
    probs = _probabilities(outputs)
    num_classes = probs["teacher"].shape[1]
    y = metrics.labels_of(labels, len(probs["teacher"]), num_classes, "data")
    class_names = _check_class_names(class_names, num_classes)

    costs, notes, tflite_latency = _costs(
        models, runner, tflite, structure, first, latency_runs
    )
    rows, reliability = {}, {}
    for name, p in probs.items():
        rows[name] = _row(p, probs["teacher"], y, num_bins, *costs[name])
        reliability[name] = metrics.reliability_bins(p, y, num_bins)

    per_class = {name: row["per_class_accuracy"] for name, row in rows.items()}
    bias = None
    if baseline is not None:
        bias = bias_classes(
            per_class["teacher"],
            per_class["student"],
            per_class["baseline"],
            class_names,
        )
    return Report(
        models=rows,
        worst_classes=worst_classes(
            per_class["teacher"], per_class["student"], class_names, worst
        ),
        bias=bias,
        class_names=class_names,
        num_samples=int(len(y)),
        num_bins=num_bins,
        reliability=reliability,
        history=segments,
        tflite_latency=tflite_latency,
        notes=notes,
        ood=None if ood_probs is None else ood_summary(probs, ood_probs),
    )


def _run_models(models, runner, data, specs, structure, batch_size):
    """Runs each model (and the `.tflite` file's `runner`) once over `data`.

    Returns `(outputs, labels, first)`: per name the list of output batches
    (batch, classes), the labels concatenated, and the first sample's flat
    inputs (for the latency).
    """
    outputs = {name: [] for name in list(models) + (["tflite"] if runner else [])}
    labels, first = [], None
    for inputs, y in _batches(data, specs, batch_size):
        packed = tf.nest.pack_sequence_as(structure, inputs)
        if first is None:
            first = [a[:1] for a in inputs]
        for name, model in models.items():
            outputs[name].append(_single_output(model.predict_on_batch(packed), name))
        if runner is not None:
            outputs["tflite"].append(_single_output(runner.run(inputs)[0], "tflite"))
        labels.append(np.asarray(y))
    if first is None:
        raise ValueError(
            f"Argument `data` yielded no samples. Expected {_DATA_EXPECTED}."
        )
    return outputs, np.concatenate(labels), first


def _probabilities(outputs) -> dict:
    """Per name the probabilities of its concatenated outputs; raises unless
    every model predicts the teacher's number of classes."""
    probs = {
        name: metrics.to_probabilities(np.concatenate(parts))
        for name, parts in outputs.items()
    }
    num_classes = probs["teacher"].shape[1]
    for name, p in probs.items():
        if p.shape[1] != num_classes:
            raise ValueError(
                f"Argument `{name}` predicts {p.shape[1]} classes; the teacher "
                f"predicts {num_classes}. Expected the same classes."
            )
    return probs


def _costs(models, runner, tflite, structure, first, latency_runs):
    """Per name `(params, size in bytes or None, latency in ms or None)`,
    the notes on sizes, and the `.tflite` file's latency at 1 and 4 threads
    (or None): the `.keras` file of each model, the `.tflite` file (run by
    `runner`) with the student's parameters; the median of `latency_runs`
    calls on the `first` sample (none with 0), the file's at 1 thread."""
    costs, notes = {}, []
    one = tf.nest.pack_sequence_as(structure, first)
    for name, model in models.items():
        size, note = _keras_size(model)
        notes += [note] if note else []
        latency = None
        if latency_runs:
            latency = _median_ms(lambda m=model: m.predict_on_batch(one), latency_runs)
        costs[name] = (model.count_params(), size, latency)
    tflite_latency = None
    if runner is not None:
        latency = None
        if latency_runs:
            from keras_kd.export.latency import DEFAULT_THREADS, measure_latency

            tflite_latency = measure_latency(
                tflite, first, threads=DEFAULT_THREADS, runs=latency_runs
            )
            latency = tflite_latency[0]["median_ms"]
        params = models["student"].count_params()
        costs["tflite"] = (params, os.path.getsize(tflite), latency)
    return costs, notes, tflite_latency


def _row(p, teacher_probs, y, num_bins, params, size, latency) -> dict:
    """One model's figures: `p` its probabilities, `y` the labels."""
    return {
        "accuracy": metrics.accuracy(p, y),
        "agreement": metrics.agreement(teacher_probs, p),
        "ece": metrics.expected_calibration_error(p, y, num_bins),
        "nll": metrics.negative_log_likelihood(p, y),
        "params": int(params),
        "size_bytes": None if size is None else int(size),
        "latency_ms": latency,
        "per_class_accuracy": metrics.per_class_accuracy(p, y),
    }
