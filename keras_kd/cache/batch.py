"""The element a cache yields, its stored form, and the top-k rebuild.

A cached example is stored as a flat tuple of arrays (its inputs, labels,
sample weights, then per teacher output its logits, or its top-k logits and
their indices) described by a *layout*: a JSON-able dict that the manifest
of a cache on disk holds. Reading turns the flat tuple back into a
`TeacherBatch`.
"""

from __future__ import annotations

import collections

import numpy as np

from keras_kd.backend import tf

# The gap below the smallest kept logit at which a top-k rebuild fills the
# dropped classes: exp(-1e6 / T) underflows to 0 in float32 for T < 5,000.
TOP_K_GAP = 1e6

TeacherBatch = collections.namedtuple(
    "TeacherBatch", ["x", "y", "teacher_outputs", "sample_weight"]
)
TeacherBatch.__new__.__defaults__ = ((), ())
TeacherBatch.__doc__ = """Examples with their teacher's outputs, as
`keras_kd.data.with_teacher_outputs` yields them.

`x` the inputs, `y` the labels, `teacher_outputs` the teacher's outputs as
float32 logits (in the teacher's output structure), `sample_weight` the
weights. An absent `y` or `sample_weight` is an empty tuple `()` (which
`tf.distribute` splits, unlike None; the Distiller reads `()` and None as
absent). `tf.data` keeps the structure through
`shuffle`, `batch` and `prefetch`, each example with its own outputs, so a
`keras_kd.Distiller` recognises the batches and uses `teacher_outputs`
instead of running its teacher.
"""

_PARTS = ("x", "y", "sample_weight")


def rebuild_top_k(values, indices, num_classes: int):
    """Full logits from the `k` kept ones: the rest `min(kept) - TOP_K_GAP`.

    Args:
        values: float, shape `(..., k)`: the kept logits.
        indices: int, shape `(..., k)`: their classes, distinct per position.
        num_classes: the length of the rebuilt last axis.

    Returns:
        float32 logits of shape `(..., num_classes)`. At any temperature `T`
        below 5,000, `softmax(logits / T)` is `softmax(values / T)` on
        the kept classes and exactly 0 elsewhere: the kept classes'
        probabilities renormalised over them, the tail's mass dropped.
    """
    values = tf.cast(values, tf.float32)
    indices = tf.cast(indices, tf.int64)
    shape = tf.shape(values, out_type=tf.int64)
    lead, k = shape[:-1], shape[-1]
    rows = tf.reduce_prod(lead)
    values = tf.reshape(values, [rows, k])
    fill = tf.reduce_min(values, axis=-1, keepdims=True) - TOP_K_GAP
    flat = tf.reshape(indices, [rows, k]) + tf.range(rows)[:, None] * num_classes
    flat = tf.reshape(flat, [-1, 1])
    size = tf.reshape(rows * num_classes, [1])
    # Kept values are placed as they are (adding and removing the fill would
    # round them to the float32 spacing at 1e6).
    kept = tf.scatter_nd(flat, tf.reshape(values, [-1]), size)
    is_kept = tf.scatter_nd(flat, tf.ones_like(tf.reshape(values, [-1])), size)
    dense = tf.where(
        tf.reshape(is_kept, [rows, num_classes]) > 0,
        tf.reshape(kept, [rows, num_classes]),
        fill,
    )
    return tf.reshape(dense, tf.concat([lead, [num_classes]], 0))


# ---------------------------------------------------------------------------
# Nests described as JSON, in `tf.nest.flatten` order (dict keys sorted)
# ---------------------------------------------------------------------------


def describe(value):
    """A JSON description of a nest of arrays of examples (batch axis first)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {"dict": {str(k): describe(value[k]) for k in sorted(value)}}
    if isinstance(value, (list, tuple)):  # tf.data reads lists as tensors
        return {"tuple": [describe(v) for v in value]}
    array = np.asarray(value)
    return {"dtype": array.dtype.name, "shape": [int(d) for d in array.shape[1:]]}


def _children(node):
    if "dict" in node:
        return [node["dict"][k] for k in sorted(node["dict"])]
    return node.get("list", node.get("tuple"))


def leaves(description) -> list:
    """The leaf descriptions (`dtype`, `shape`) of a nest, in flat order."""
    if description is None:
        return []
    children = _children(description)
    if children is None:
        return [description]
    return [leaf for child in children for leaf in leaves(child)]


def pack(description, flat):
    """`flat` values (in flat order) packed in the described nest."""
    values = iter(flat)

    def build(node):
        if node is None:
            return None
        if "dict" in node:
            return {k: build(node["dict"][k]) for k in sorted(node["dict"])}
        if "list" in node:
            return [build(v) for v in node["list"]]
        if "tuple" in node:
            return tuple(build(v) for v in node["tuple"])
        return next(values)

    return build(description)


# ---------------------------------------------------------------------------
# The stored form
# ---------------------------------------------------------------------------


def stored_leaves(layout) -> list:
    """`(dtype, per-example shape)` of each stored array, in stored order.

    The layout describes one view; with `layout["views"] = K` the inputs
    and the teacher's outputs are stored with a leading axis of K views.
    """
    # With `views=K` the inputs and the outputs hold K views: a leading axis.
    views = [layout["views"]] if layout.get("views") else []
    out = [
        (leaf["dtype"], (views if part == "x" else []) + list(leaf["shape"]))
        for part in _PARTS
        for leaf in leaves(layout[part])
    ]
    for leaf in leaves(layout["teacher_outputs"]):
        shape = views + list(leaf["shape"])
        if layout["top_k"] is None:
            out.append((layout["dtype"], shape))
        else:
            kept = shape[:-1] + [layout["top_k"]]
            out += [(layout["dtype"], kept), ("int32", kept)]
    return out


def stored_arrays(x, y, sample_weight, logits, dtype, top_k) -> list:
    """The stored arrays of a batch: inputs, labels, weights, then outputs.

    `logits` are the teacher's flat float32 outputs (numpy), stored in
    `dtype`, or as their `top_k` largest values (in `dtype`) and int32
    indices.
    """
    parts = [p for p in (x, y, sample_weight) if p is not None]
    flat = [np.asarray(a) for part in parts for a in tf.nest.flatten(part)]
    for output in logits:
        if top_k is None:
            flat.append(np.asarray(output, dtype))
            continue
        values, indices = tf.math.top_k(output, k=top_k, sorted=True)
        flat += [values.numpy().astype(dtype), indices.numpy().astype("int32")]
    return flat


def element(layout, flat):
    """A `TeacherBatch` from one stored example (a flat tuple of tensors)."""
    flat = list(flat)
    parts = {}
    for part in _PARTS:
        count = len(leaves(layout[part]))
        parts[part] = pack(layout[part], flat[:count]) if count else ()
        flat = flat[count:]
    outputs = []
    for leaf in leaves(layout["teacher_outputs"]):
        if layout["top_k"] is None:
            outputs.append(tf.cast(flat.pop(0), tf.float32))
        else:
            values, indices = flat.pop(0), flat.pop(0)
            outputs.append(rebuild_top_k(values, indices, leaf["shape"][-1]))
    return TeacherBatch(
        parts["x"],
        parts["y"],
        pack(layout["teacher_outputs"], outputs),
        parts["sample_weight"],
    )


__all__ = ["TOP_K_GAP", "TeacherBatch", "rebuild_top_k"]
