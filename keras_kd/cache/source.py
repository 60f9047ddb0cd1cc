"""The data of the teacher pass, read as numpy batches.

`with_teacher_outputs` takes what `fit` takes: `x`, `(x, y)` or `(x, y,
sample_weight)` arrays, or a `tf.data.Dataset` (batched or not) of such
elements. `batches_of` reads either as `(x, y, sample_weight)` numpy batches.
"""

from __future__ import annotations

from keras_kd import _batches
from keras_kd.backend import tf


def split(element):
    """`(x, y, sample_weight)` of one element, as `fit` reads a tuple."""
    if isinstance(element, tuple) and not hasattr(element, "_fields"):
        if not 1 <= len(element) <= 3:
            raise ValueError(
                "Argument `data` must hold `x`, `(x, y)` or `(x, y, "
                f"sample_weight)`. Received a tuple of {len(element)} items."
            )
        parts = list(element) + [None] * (3 - len(element))
        return parts[0], parts[1], parts[2]
    return element, None, None


def size_of(data):
    """The number of examples of arrays, or of an unbatched dataset; None
    where unknown."""
    if data is None or isinstance(data, tf.data.Dataset):
        return None
    if _batches.is_stream(data):
        return None
    x = split(data)[0] if isinstance(data, tuple) else data
    flat = tf.nest.flatten(x)
    return len(flat[0]) if flat else None


def _is_batched(dataset, teacher) -> bool:
    """Whether a dataset yields batches: its inputs have the teacher's input
    rank (or, where unknown, an unknown first dimension, as `.batch()`
    leaves)."""
    x_spec = split(dataset.element_spec)[0]
    structure = _batches.model_input_structure(teacher)
    if isinstance(x_spec, dict) and structure is not None:
        if len(tf.nest.flatten(structure)) == 1:
            raise ValueError(
                f"Argument `data` yields dicts with keys {sorted(x_spec)}, but "
                "the teacher takes one input. For a tfds dataset, load it with "
                "as_supervised=True so that it yields (x, y) tuples."
            )
    first = tf.nest.flatten(x_spec)[0].shape
    if structure is not None and first.rank is not None:
        return first.rank == tf.nest.flatten(structure)[0].shape.rank
    return bool(first.rank) and first[0] is None


def batches_of(data, teacher, batch_size):
    """Yields the size of `data` (None where unknown), then its
    `(x, y, sample_weight)` batches as numpy."""
    if isinstance(data, tf.data.Dataset):
        batched = _is_batched(data, teacher)
        yield None
        source = data if batched else data.batch(batch_size)
    else:
        _batches.check_data_kind(data, "data")
        if _batches.is_stream(data):
            raise TypeError(
                "Argument `data` must be arrays (`x`, `(x, y)` or `(x, y, "
                "sample_weight)`) or a `tf.data.Dataset`. Received: data of "
                f"type {type(data).__name__}; wrap a generator in "
                "`tf.data.Dataset.from_generator`."
            )
        parts = split(data) if isinstance(data, tuple) else (data, None, None)
        sizes = {len(a) for p in parts if p is not None for a in tf.nest.flatten(p)}
        if len(sizes) != 1:
            raise ValueError(
                "Argument `data` must hold as many inputs, labels and sample "
                f"weights. Received lengths {sorted(sizes)}."
            )
        yield sizes.pop()
        given = tuple(p for p in parts if p is not None)
        source = tf.data.Dataset.from_tensor_slices(given).batch(batch_size)
    for element in source:
        element = tf.nest.map_structure(_batches.to_numpy, element)
        yield split(element)


__all__ = ["batches_of", "size_of", "split"]
