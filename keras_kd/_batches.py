"""Samples in any form `fit` takes, as batches of numpy arrays.

A numpy array, a tuple `(x, y)` or `(x, y, sample_weight)` of arrays, a
`tf.data.Dataset` or tfds dataset (batched or not, with or without labels), a
generator or a `PyDataset` of batches: each is read here the way `fit` reads
it, and handed out as lists of numpy arrays (one per model input) that match
a list of `tf.TensorSpec`s. The export's calibration and verification, the
runtime runner and reports on held-out data share this one reading.

Names here have no leading underscore so that modules may import them; the
module itself is private: users import nothing from it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from keras_kd.backend import tf

# Samples per batch when a dataset of single samples is batched here.
BATCH_SIZE = 256

# Containers that hold every sample at once (as opposed to streams of batches).
_IN_MEMORY = (np.ndarray, list, tuple, dict)


# ---------------------------------------------------------------------------
# Kinds of data
# ---------------------------------------------------------------------------


def is_tensor(value) -> bool:
    """Whether `value` is a TensorFlow tensor or variable."""
    return isinstance(value, (tf.Tensor, tf.Variable)) or tf.is_tensor(value)


def is_stream(data) -> bool:
    """Whether `data` yields batches (as opposed to holding all samples)."""
    if isinstance(data, tf.data.Dataset):
        return True
    if isinstance(data, _IN_MEMORY) or is_tensor(data):
        return False
    return hasattr(data, "__iter__") or hasattr(data, "__getitem__")


def is_indexed(data) -> bool:
    """A `keras.utils.PyDataset` / `Sequence`: batches by index, a length."""
    names = {cls.__name__ for cls in type(data).__mro__}
    return bool(names & {"PyDataset", "Sequence"}) and hasattr(data, "__len__")


def check_data_kind(data, argument: str) -> None:
    """Raises `TypeError` unless `data` is None or samples `fit` would take."""
    if data is None:
        return
    if not isinstance(data, (str, bytes)) and (
        isinstance(data, _IN_MEMORY) or is_tensor(data) or is_stream(data)
    ):
        return
    raise TypeError(
        f"Argument `{argument}` must be samples like those `fit` takes: a "
        "numpy array, a tuple (x, y) of arrays, a tf.data.Dataset (or tfds "
        f"dataset), a generator or PyDataset. Received: {argument} of type "
        f"{type(data).__module__}.{type(data).__name__}."
    )


# ---------------------------------------------------------------------------
# Elements and streams
# ---------------------------------------------------------------------------


def x_of(element):
    """The inputs of one element, following `fit`: a tuple is (x, y, w)."""
    if isinstance(element, tuple):
        return element[0] if element else None
    return element


def y_of(element):
    """The labels of one element, or None when it has none."""
    if isinstance(element, tuple) and len(element) > 1:
        return element[1]
    return None


def to_numpy(value):
    """`value` (a tensor, an array or array-like) as a numpy array."""
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def stream(data):
    """The elements of a stream of batches, as numpy values."""
    if isinstance(data, tf.data.Dataset):
        for element in data:
            yield tf.nest.map_structure(to_numpy, element)
    elif is_indexed(data):
        for i in range(len(data)):
            yield data[i]
    else:
        yield from data


class _Kept:
    """Batches drawn once from a one-shot iterator, to be read again."""

    def __init__(self, elements):
        self.elements = elements

    def __iter__(self):
        return iter(self.elements)


def replayable(data, limit: int):
    """`data`, or, for a one-shot iterator, its first batches kept in memory.

    A generator can be read only once; a caller that reads the data several
    times (input shapes, calibration, verification) gets its first `limit`
    samples kept in memory. Anything else is returned as it is.
    """
    if data is None or not is_stream(data) or isinstance(data, tf.data.Dataset):
        return data
    if is_indexed(data) or iter(data) is not data:
        return data
    elements, seen = [], 0
    for element in data:
        elements.append(element)
        x = tf.nest.flatten(x_of(element))
        seen += len(x[0]) if x and np.ndim(x[0]) else 1
        if seen >= limit:
            break
    return _Kept(elements)


# ---------------------------------------------------------------------------
# Batches matched to input specs
# ---------------------------------------------------------------------------


def _shape_fits(shape, spec_shape) -> bool:
    return all(s is None or s == d for s, d in zip(tuple(spec_shape)[1:], shape[1:]))


def flat_inputs(x, specs, argument: str) -> list:
    """The arrays of `x`, one per spec, each with a batch dimension.

    Args:
        x: the inputs of one batch (or of one sample): an array, or a list /
            dict of arrays, one per model input.
        specs: one `tf.TensorSpec` per flat input, batch dimension first.
        argument: the name of the argument `x` came from, for messages.

    Returns:
        A list of numpy arrays cast to the specs' dtypes.
    """
    if isinstance(x, Mapping) and len(x) != len(specs):
        hint = (
            " For a tfds dataset, load it with as_supervised=True so that it "
            "yields (x, y) tuples."
            if len(specs) == 1
            else ""
        )
        raise ValueError(
            f"Argument `{argument}` yields dicts with keys {sorted(x)}, which "
            f"do not match the model's {len(specs)} input(s) "
            f"({[s.name for s in specs]}).{hint}"
        )
    flat = tf.nest.flatten(x)
    if len(flat) != len(specs):
        raise ValueError(
            f"Argument `{argument}` yields {len(flat)} input array(s); the "
            f"model has {len(specs)} input(s) of shapes "
            f"{[tuple(s.shape) for s in specs]}."
        )
    arrays = []
    for value, spec in zip(flat, specs):
        array = np.asarray(to_numpy(value))
        rank = spec.shape.rank
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank or not _shape_fits(array.shape, spec.shape):
            raise ValueError(
                f"Argument `{argument}` has samples of shape "
                f"{array.shape[1:] if array.ndim == rank else array.shape}; "
                f"the model expects inputs of shape {tuple(spec.shape)[1:]} "
                "(after the batch dimension)."
            )
        arrays.append(array.astype(spec.dtype.as_numpy_dtype, copy=False))
    return arrays


def iterate_batches(data, specs, argument: str, limit, with_labels: bool = False):
    """Yields `(inputs, labels)` batches of `data`, at most `limit` samples.

    Args:
        data: samples in any form `fit` takes.
        specs: one `tf.TensorSpec` per flat model input (batch first).
        argument: the argument `data` came from, for messages.
        limit: the most samples to yield, or None for all.
        with_labels: also read the labels (else `labels` is None).

    Yields:
        `(inputs, labels)`: a list of arrays (one per spec) and the labels
        as an array, or None.
    """
    seen = 0
    if isinstance(data, tf.data.Dataset):
        x_spec = tf.nest.flatten(x_of(data.element_spec))
        if x_spec and x_spec[0].shape.rank == specs[0].shape.rank - 1:
            data = data.batch(BATCH_SIZE)  # single samples: batch them
    elements = stream(data) if is_stream(data) else [data]
    for element in elements:
        if isinstance(element, tuple) and not element:
            continue
        inputs = flat_inputs(x_of(element), specs, argument)
        labels = y_of(element) if with_labels else None
        if labels is not None:
            labels = np.asarray(to_numpy(labels))
            if labels.ndim == 0:
                labels = labels[None]
        n = len(inputs[0])
        if limit is not None and seen + n > limit:
            keep = limit - seen
            inputs = [a[:keep] for a in inputs]
            labels = None if labels is None else labels[:keep]
            n = keep
        if n:
            yield inputs, labels
        seen += n
        if limit is not None and seen >= limit:
            return


def collect_inputs(data, specs, limit, argument: str) -> list:
    """The first `limit` samples' inputs of `data`, one array per spec."""
    parts = [inputs for inputs, _ in iterate_batches(data, specs, argument, limit)]
    if not parts:
        raise ValueError(
            f"Argument `{argument}` yielded no samples. Expected at least one."
        )
    return [np.concatenate(arrays) for arrays in zip(*parts)]


# ---------------------------------------------------------------------------
# A model's inputs
# ---------------------------------------------------------------------------


def input_specs(model, input_signature, data_sources):
    """One `tf.TensorSpec` per flat input (dynamic batch) and the structure.

    Args:
        model: a built model.
        input_signature: a `tf.TensorSpec` or a nest of them given by the
            user, or None to read the inputs from the model, or else from
            the first of `data_sources` that is not None.
        data_sources: samples to read a single input's shape from.

    Returns:
        `(specs, structure)` where `specs` are named `input_0`, `input_1`,
        ... with a dynamic batch dimension, and `structure` packs the flat
        list of inputs back into what `model` is called with.
    """
    if input_signature is not None:
        flat = tf.nest.flatten(input_signature)
        if not flat or not all(isinstance(s, tf.TensorSpec) for s in flat):
            raise TypeError(
                "Argument `input_signature` must be a `tf.TensorSpec` or a "
                "list of them, one per model input. Received: "
                f"input_signature={input_signature!r}."
            )
        structure = input_signature
    else:
        structure = model_input_structure(model)
        if structure is None:
            structure = spec_from_data(model, data_sources)
        flat = tf.nest.flatten(structure)
    specs = []
    for i, spec in enumerate(flat):
        shape = tuple(spec.shape)
        if not shape:
            raise ValueError(
                f"Input {i} of the model has no batch dimension (shape ()). "
                "Expected inputs of shape (batch, ...)."
            )
        dtype = tf.as_dtype(spec.dtype)
        specs.append(tf.TensorSpec((None,) + shape[1:], dtype, name=f"input_{i}"))
    return specs, structure


def model_input_structure(model):
    """The model's inputs as a nest of `tf.TensorSpec`, or None if unknown."""
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if structure is None:
        try:
            inputs = model.inputs  # a Keras 3 Sequential has only these
        except (AttributeError, ValueError):
            inputs = None
        if inputs:
            structure = inputs[0] if len(inputs) == 1 else list(inputs)
    if structure is not None:
        return tf.nest.map_structure(
            lambda t: tf.TensorSpec(tuple(t.shape), t.dtype), structure
        )
    save_spec = getattr(model, "save_spec", None)  # tf_keras, after a call
    if callable(save_spec):
        try:
            spec = save_spec(dynamic_batch=True)
        except (TypeError, ValueError):
            spec = None
        if spec:
            args, _ = spec
            if len(args) == 1:
                return args[0]
    return None


def spec_from_data(model, data_sources):
    """The spec of a single input, read from the first data given.

    Arrays and tuples hold samples along their first axis; generators and
    `PyDataset`s yield batches, as in `fit`; a `tf.data.Dataset` is batched
    when its first dimension is unknown.
    """
    for data in data_sources:
        if data is None:
            continue
        if isinstance(data, tf.data.Dataset):
            flat = tf.nest.flatten(x_of(data.element_spec))
            if len(flat) != 1 or not flat[0].shape.rank:
                break
            shape, dtype = tuple(flat[0].shape), flat[0].dtype
            if shape[0] is None:
                shape = shape[1:]
        else:
            if is_stream(data):
                x = x_of(next(iter(stream(data)), None))
            else:
                x = x_of(data)
            flat = tf.nest.flatten(x)
            if len(flat) != 1:
                break
            array = np.asarray(to_numpy(flat[0]))
            if array.ndim < 1:
                break
            shape, dtype = array.shape[1:], array.dtype
        dtype = tf.as_dtype(dtype)
        if not dtype.is_floating or dtype == tf.float64:
            dtype = tf.float32
        return tf.TensorSpec((None,) + tuple(shape), dtype)
    raise ValueError(
        f"Cannot tell the inputs of model {model.name!r} (a subclassed model "
        "that records no input shapes). Pass "
        "`input_signature=tf.TensorSpec((None, ...), tf.float32)`, or "
        "`representative_data` / `verify_data` to read them from."
    )
