"""What `Distiller.fit` checks once, before the first training step.

Keras finds many mistakes in the data only inside the traced train step (a
label out of range is an `InvalidArgumentError` from a kernel, a wrong input
shape an error three frames deep) or not at all (an empty array trains on
nothing, a teacher that outputs NaN poisons every step). The checks here run
once per `fit`, on the arrays given or on the first batch of a dataset, and
answer with an error that names the argument, the value received and what is
expected. They cost nothing per training step.

What is read:

* numpy arrays (and tensors, lists / dicts of them): every row for the
  cheap vectorised checks (lengths, finiteness, label range, pixel range);
  the first batch for the teacher's forward pass;
* a `tf.data.Dataset`: its first element only (`take(1)`, the dataset is
  iterated afresh, as `fit` does for each epoch);
* a `keras.utils.PyDataset`: its batch 0, read by index;
* a generator or any other one-shot iterator: nothing. Reading it would use
  up a batch that `fit` then never sees, so those checks are skipped.

**Pixel range.** A `UserWarning` (not an error: a model may be trained on
raw pixels) is given when the inputs look like 8-bit images and neither model
rescales them: inputs of rank >= 3 (a batch of `(height, width)` or
`(height, width, channels)` samples), every value a whole number in
[0, 255] with a maximum above 1.5 (an integer dtype, or floats such as
`uint8` images cast without dividing), and no `Rescaling` or
`Normalization` layer in the teacher or the student. Float images with
fractional values (after resizing) are not flagged.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from keras_kd import _batches, _utils
from keras_kd.backend import tf
from keras_kd.cache import TOP_K_GAP
from keras_kd.data import MixedBatch
from keras_kd.distiller import batches, teacher_side

# Rows of numpy data the teacher is run on when `batch_size` is not given.
_DEFAULT_BATCH = 32


@dataclasses.dataclass(frozen=True)
class FitSubject:
    """What the checks read of the `Distiller` about to train.

    The Distiller builds one for each `fit` (its small internal interface to
    this module): the checks read these fields and nothing else of it.

    Attributes:
        owner: the class name, for messages.
        student: the student model.
        teachers: the teacher models (empty without a teacher).
        teacher_inputs: the keys the teachers read of dict inputs, or None.
        hard_loss: `compile`'s `loss`.
        augmentation: the train step's augmentation, or None.
        mixup: the train step's `MixUp`, or None.
        features: the feature taps (`taps.Features`), or None.
        trains_teacher: whether the teacher learns too (online).
    """

    owner: str
    student: object
    teachers: tuple
    teacher_inputs: object = None
    hard_loss: object = None
    augmentation: object = None
    mixup: object = None
    features: object = None
    trains_teacher: bool = False


def check_fit(subject: FitSubject, arguments: dict) -> None:
    """Validates the arguments of `Distiller.fit`, before training starts.

    Args:
        subject: what the checks read of the Distiller about to train.
        arguments: `fit`'s arguments by name (as bound to its signature).

    Raises:
        TypeError, ValueError: a bad argument or bad data, with its name.
    """
    batch_size = arguments.get("batch_size")
    if batch_size is not None:
        _utils.check_int(batch_size, "batch_size", 1, "samples per batch")
    _utils.check_int(arguments.get("epochs", 1), "epochs", 0, "the last epoch")
    _utils.check_int(arguments.get("initial_epoch", 0), "initial_epoch", 0, "epochs")
    for name in ("steps_per_epoch", "validation_steps"):
        if arguments.get(name) is not None:
            _utils.check_int(arguments[name], name, 1, "batches")
    split = arguments.get("validation_split", 0.0) or 0.0
    _utils.check_number(
        split, "validation_split", 0.0, 1.0, high_open=True, what="a fraction"
    )
    x, y, weights = (
        arguments.get("x"),
        arguments.get("y"),
        arguments.get("sample_weight"),
    )
    _check_samples(subject, x, y, weights, ("x", "y", "sample_weight"), batch_size)
    validation = arguments.get("validation_data")
    if validation is None:
        return
    if isinstance(validation, (tuple, list)) and not isinstance(validation, MixedBatch):
        if not 1 <= len(validation) <= 3:
            raise ValueError(
                "Argument `validation_data` must be a tuple (x_val, y_val) or "
                "(x_val, y_val, sample_weight_val), or a tf.data.Dataset. "
                f"Received: a {type(validation).__name__} of {len(validation)} "
                "items."
            )
        parts = list(validation) + [None] * (3 - len(validation))
        names = tuple(f"validation_data[{i}]" for i in range(3))
        _check_samples(subject, *parts, names, batch_size, run_teacher=False)
    else:
        _check_samples(
            subject,
            validation,
            None,
            None,
            ("validation_data", "", ""),
            None,
            run_teacher=False,
        )


# ---------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------


def _check_samples(subject, x, y, weights, names, batch_size, run_teacher=True):
    """Checks one set of samples given as `fit` takes them."""
    if x is None:
        return
    label_name = names[0]  # a dataset's labels come with its inputs
    stored = None
    if isinstance(x, tf.data.Dataset):
        batch = _first_element(x, names[0])
        stored = batches.cached_outputs(batch)
        x, y, weights, labelled = batches.unpack_batch(batch)
        if labelled is not None:  # a transfer set: x holds unlabelled rows too
            weights = None
        first = x
    elif _batches.is_indexed(x):  # a PyDataset: batch 0, by index
        if len(x) == 0:
            raise ValueError(
                f"Argument `{names[0]}` is an empty PyDataset (len 0). Expected "
                "at least one batch."
            )
        x, y, weights, labelled = batches.unpack_batch(x[0])
        first = x
    elif _batches.is_stream(x):
        return  # a one-shot iterator: reading it would use up a batch
    else:
        rows = _check_lengths(x, y, weights, names)
        first = tf.nest.map_structure(lambda a: a[: batch_size or _DEFAULT_BATCH], x)
        if rows == 0:
            raise ValueError(
                f"Argument `{names[0]}` holds no samples (0 rows). Expected at "
                "least one sample to train on."
            )
        labelled, label_name = None, names[1]
    x = tf.nest.map_structure(_batches.to_numpy, x)
    _check_inputs(subject, x, names[0])
    if labelled is None and y is not None:
        _check_labels(subject, tf.nest.map_structure(_batches.to_numpy, y), label_name)
    if stored is not None:
        _check_stored_outputs(subject, first, stored, names[0], run_teacher)
    elif run_teacher:
        _check_teacher_outputs(subject, first, names[0])


def _first_element(dataset, argument):
    """The first element of `dataset` (a fresh iteration of one element)."""
    if int(dataset.cardinality()) == 0:
        element = None
    else:
        element = next(iter(dataset.take(1)), None)
    if element is None:
        raise ValueError(
            f"Argument `{argument}` is an empty dataset: it yields no batch. "
            "Expected at least one batch (was it filtered, or `take(0)`?)."
        )
    return element


def _rows(value):
    flat = tf.nest.flatten(value)
    if not flat:
        return None
    shape = np.shape(_batches.to_numpy(flat[0]))
    return shape[0] if shape else None


def _check_lengths(x, y, weights, names) -> int:
    """All arrays of `x`, `y` and `sample_weight` have one length; returns it."""
    sizes = {}
    for value, name in zip((x, y, weights), names):
        if value is None:
            continue
        for i, array in enumerate(tf.nest.flatten(value)):
            shape = np.shape(_batches.to_numpy(array))
            label = name if len(tf.nest.flatten(value)) == 1 else f"{name}[{i}]"
            if not shape:
                raise ValueError(
                    f"Argument `{label}` must hold one row per sample. Received "
                    f"a scalar: {label}={array!r}."
                )
            sizes[label] = shape[0]
    if len(set(sizes.values())) > 1:
        got = ", ".join(f"{k} has {v}" for k, v in sizes.items())
        raise ValueError(
            f"Arguments {', '.join(f'`{k}`' for k in sizes)} must have the same "
            f"number of samples (rows). Received: {got}."
        )
    return next(iter(sizes.values()))


def _check_inputs(subject, x, argument) -> None:
    """Shapes against the models' inputs; finite values; the pixel range."""
    flat = tf.nest.flatten(x)
    for array in flat:
        array = np.asarray(array)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise ValueError(
                f"Argument `{argument}` holds {bad} non-finite value(s) (NaN or "
                f"inf) out of {array.size}. Expected finite inputs: clean or "
                "impute them before training."
            )
    if len(flat) == 1 and not isinstance(x, dict):
        shape = np.shape(flat[0])
        models = [("student", subject.student)]
        if subject.teacher_inputs is None:
            models += [("teacher", t) for t in subject.teachers]
        for role, model in models:
            _check_input_shape(model, role, shape, argument)
    _warn_on_pixel_range(subject, flat, argument)


def _check_input_shape(model, role, shape, argument) -> None:
    structure = _batches.model_input_structure(model)
    specs = tf.nest.flatten(structure) if structure is not None else []
    if len(specs) != 1 or specs[0].shape.rank is None:
        return
    expected = tuple(specs[0].shape)[1:]
    got = tuple(shape)[1:]
    if len(got) != len(expected) or any(
        e is not None and e != g for e, g in zip(expected, got)
    ):
        raise ValueError(
            f"Argument `{argument}` has samples of shape {got}, but the "
            f"{role} ({model.name!r}) expects inputs of shape {expected} "
            "(after the batch dimension)."
        )


def _warn_on_pixel_range(subject, flat, argument) -> None:
    for array in flat:
        array = np.asarray(array)
        if array.ndim < 3 or array.size == 0 or array.dtype.kind not in "uif":
            continue
        low, high = array.min(), array.max()
        if low < 0 or not 1.5 < high <= 255:
            continue
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            continue
        if _rescales(subject):
            return
        warnings.warn(
            f"Argument `{argument}` looks like 8-bit images: values in "
            f"[{low}, {high}] (dtype {array.dtype}), and neither the teacher "
            "nor the student has a Rescaling or Normalization layer. If the "
            "models were trained on inputs in [0, 1], divide by 255 first "
            "(e.g. `x / 255.0`, or `keras.layers.Rescaling(1 / 255)` in the "
            "data pipeline); if they were trained on raw pixels, ignore this.",
            UserWarning,
            stacklevel=4,
        )
        return


def _rescales(subject) -> bool:
    models = [subject.student, *subject.teachers]
    return any(_utils.rescales_inputs(model) for model in models)


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


def _is_sparse_loss(loss) -> bool:
    if isinstance(loss, str):
        return "sparse_categorical" in loss
    name = getattr(loss, "__name__", type(loss).__name__)
    return "sparse" in name.lower() and "categorical" in name.lower()


def _ignored_class(loss):
    try:
        return loss.get_config().get("ignore_class")
    except (AttributeError, TypeError, NotImplementedError):
        return None


def _check_labels(subject, y, argument) -> None:
    """Labels against the student's (single) output: class indices in
    range, or one column per class."""
    outputs = _output_specs(subject.student)
    if outputs is None or isinstance(y, (dict, list, tuple)):
        return
    y = np.asarray(y)
    out = outputs
    classes = out[-1]
    if classes is None or y.ndim == 0:
        return
    if y.dtype.kind in "fc" and not np.isfinite(y).all():
        raise ValueError(
            f"Argument `{argument}` holds non-finite labels (NaN or inf). "
            "Expected finite labels."
        )
    if y.ndim == len(out) and y.shape[-1] not in (1, classes):
        raise ValueError(
            f"Argument `{argument}` has {y.shape[-1]} columns (shape "
            f"{y.shape}), but the student outputs {classes} classes (output "
            f"shape {out}). Expected one column per class (one-hot) or class "
            f"indices of shape {y.shape[:-1]}."
        )
    loss = subject.hard_loss
    sparse = y.ndim == len(out) - 1 or (y.ndim == len(out) and y.shape[-1] == 1)
    if not sparse or classes < 2:
        return
    if y.dtype.kind not in "iub" and not _is_sparse_loss(loss):
        return
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise ValueError(
            f"Argument `{argument}` must hold class indices (whole numbers) for "
            f"a student with {classes} classes. Received fractional labels, "
            f"e.g. {y.flat[np.argmax(y != np.round(y))]}."
        )
    ignored = _ignored_class(loss)
    values = y if ignored is None else y[y != ignored]
    if values.size and (values.min() < 0 or values.max() >= classes):
        raise ValueError(
            f"Argument `{argument}` holds labels out of range for the "
            f"student's {classes} classes: received labels from "
            f"{values.min()} to {values.max()}. Expected class indices in "
            f"[0, {classes - 1}] (is the student's last layer too narrow, or "
            "are the labels 1-based?)."
        )


def _output_specs(model):
    """The static shape of the model's single output, or None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(tf.nest.flatten(outputs)) != 1:
        return None
    try:
        shape = tuple(tf.nest.flatten(outputs)[0].shape)
    except (TypeError, ValueError):  # unknown rank
        return None
    return shape if len(shape) >= 2 else None


# ---------------------------------------------------------------------------
# The teacher on the first batch
# ---------------------------------------------------------------------------


def _check_teacher_outputs(subject, x, argument) -> None:
    """The teachers' outputs on the first batch are finite.

    Skipped with an `augmentation` (which may change the inputs' shape: the
    teacher sees the augmented view only inside the train step).
    """
    if not subject.teachers or subject.augmentation is not None:
        return
    x = teacher_side.route(x, subject.teacher_inputs, "teacher_inputs")
    for teacher in subject.teachers:
        outputs = teacher(
            tf.nest.map_structure(tf.convert_to_tensor, x), training=False
        )
        for output in tf.nest.flatten(outputs):
            values = np.asarray(tf.cast(output, tf.float32))
            finite = np.isfinite(values)
            if not finite.all():
                raise ValueError(
                    f"Argument `teacher` ({teacher.name!r}) gives non-finite "
                    f"outputs (NaN or inf) on the first batch of `{argument}`: "
                    f"{int(finite.size - finite.sum())} of {finite.size} values. "
                    "Expected finite logits or probabilities: check the "
                    "teacher's weights (a diverged training?) and its inputs' "
                    "preprocessing."
                )


# ---------------------------------------------------------------------------
# Stored teacher outputs (`keras_kd.data.with_teacher_outputs`)
# ---------------------------------------------------------------------------

# How far stored outputs may be from the live teacher's: float16 storage
# (a relative spacing of 2**-11) and the last bits of another batch size.
_STORED_ATOL, _STORED_RTOL = 1e-3, 4e-3


def _check_stored_outputs(subject, x, stored, argument, training) -> None:
    """Stored outputs are usable here and are the teacher's on the first batch.

    The teacher runs once on the first batch; where an output's stored
    value was kept (all classes, or the top k), it must equal the live
    teacher's logits (a final softmax's as log-probabilities) to float16
    tolerance. Otherwise the cache is of another teacher, or stale.
    """
    batches.refuse_cached_teaching(
        subject.owner,
        subject.teachers,
        subject.features,
        subject.augmentation,
        subject.mixup,
        subject.trains_teacher,
        training,
    )
    teacher = subject.teachers[0]
    x = teacher_side.route(x, subject.teacher_inputs, "teacher_inputs")
    live = tf.nest.flatten(
        teacher(tf.nest.map_structure(tf.convert_to_tensor, x), training=False)
    )
    probabilities = _utils.output_is_probabilities(teacher) or [False] * len(live)
    stored = tf.nest.flatten(stored)
    if len(stored) != len(live):
        raise ValueError(
            f"Argument `{argument}` carries {len(stored)} stored teacher "
            f"output(s), but the teacher {teacher.name!r} has {len(live)}. "
            "Compute the outputs again with "
            "`keras_kd.data.with_teacher_outputs(teacher, ...)`."
        )
    for index, (value, output, is_prob) in enumerate(zip(stored, live, probabilities)):
        value = np.asarray(value, np.float32)
        output = np.asarray(_utils.log_probs(output) if is_prob else output, np.float32)
        if value.shape != output.shape:
            raise ValueError(
                f"Argument `{argument}`: stored teacher output {index} has shape "
                f"{value.shape} on the first batch, the teacher {teacher.name!r} "
                f"gives {output.shape}. Compute the outputs again with this "
                "teacher."
            )
        if not np.isfinite(value).all():
            raise ValueError(
                f"Argument `{argument}` holds non-finite stored teacher outputs "
                "(NaN or inf) on the first batch. Expected finite logits."
            )
        kept = value > value.max(axis=-1, keepdims=True) - TOP_K_GAP / 2
        gap = np.abs(value - output)[kept]
        allowed = (_STORED_ATOL + _STORED_RTOL * np.abs(output))[kept]
        if (gap > allowed).any():
            raise ValueError(
                f"Argument `{argument}` carries teacher outputs that are not "
                f"those of the Distiller's teacher {teacher.name!r}: on the "
                f"first batch, output {index} differs by up to {gap.max():.4g} "
                "(float16 tolerance allows about "
                f"{allowed[np.argmax(gap)]:.2g}). The cache is stale or of "
                "another teacher: compute it again with "
                "`keras_kd.data.with_teacher_outputs(teacher, ...)`."
            )
