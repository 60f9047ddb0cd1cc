"""The teacher at a lower precision than the student (`teacher_dtype=`).

A frozen teacher only runs forward, so it can compute in `bfloat16` (or
`float16`) while the student trains in `float32`: `teacher_copy` rebuilds a
Sequential or functional teacher with every layer's dtype policy set to
`dtype` (its variables stored in that dtype too: nothing is cast per step)
and copies the weights over. The `Distiller` runs the copy and casts its
outputs and tapped features back to `float32` before any loss sees them; the
teacher itself is left as it was (it is what `.keras` files save).

Whether it pays depends on the hardware: on CPUs with `avx512_bf16` (or AMX)
TensorFlow's oneDNN kernels run a `bfloat16` convolutional teacher's forward
pass about 1.7 times faster than `float32` (a 10-epoch distillation ran in
0.8 of the time: BENCHMARKS.md); without them, and for `float16` on any CPU
(Eigen kernels), it is slower. On GPUs both halve the memory traffic.
"""

from __future__ import annotations

from keras_kd import _utils
from keras_kd.backend import keras, tf

DTYPES = ("bfloat16", "float16", "float32")


def check_teacher_dtype(value, owner="Distiller", trains_teacher=False):
    """`teacher_dtype`: None or one of `DTYPES` (a string); refused where the
    teacher trains (`owner` names the model for the message)."""
    if value is None:
        return None
    name = getattr(value, "name", value)
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(
            "Argument `teacher_dtype` must be None (the teacher's own precision) "
            f"or one of {list(DTYPES)}. Received: teacher_dtype={value!r}."
        )
    if trains_teacher:
        raise ValueError(
            f"{owner} trains its teacher, so the teacher cannot run as a "
            f"lower-precision copy. Received: teacher_dtype={name!r}; pass "
            "teacher_dtype=None (or build both models under a mixed precision "
            "policy)."
        )
    return name


def teacher_copy(model, dtype: str):
    """A frozen copy of `model` whose layers compute (and store) in `dtype`.

    Args:
        model: a Sequential or functional `keras.Model`, nested models
            included.
        dtype: `"bfloat16"`, `"float16"` or `"float32"`.

    Returns:
        The copy, not trainable, with `model`'s weights cast to `dtype`
        (but for layers that keep their own, e.g. integer lookups).

    Raises:
        ValueError: for a subclassed model, which cannot be rebuilt from its
            layers.
    """
    if not _utils.is_graph_model(model):
        raise ValueError(
            "Argument `teacher_dtype` needs a Sequential or functional teacher, "
            "whose layers can be rebuilt at another precision. Received a "
            f"subclassed teacher, {type(model).__name__} {model.name!r}: build it "
            "under `keras.mixed_precision.set_dtype_policy('mixed_bfloat16')` "
            "instead, or pass teacher_dtype=None."
        )
    copy = _clone(model, dtype)
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


class Runners:
    """The teachers as they run: `models`, the teachers themselves or their
    lower-precision copies.

    A plain holder, not a list, so that neither flavour's saving (which walks
    a model's attributes) saves the copies' weights beside the teacher's.
    """

    __slots__ = ("models", "sources")

    def __init__(self, models, sources=None):
        self.models = list(models)
        self.sources = self.models if sources is None else list(sources)

    def sync(self):
        """Copies the teachers' current weights into their copies (after a
        `.keras` file loaded the teacher, or the user changed its weights):
        the `Distiller` calls it as `fit` and `evaluate` start."""
        for model, source in zip(self.models, self.sources):
            if model is not source:
                model.set_weights(source.get_weights())


def teacher_copies(teachers, dtype) -> Runners:
    """`teachers` as they are (dtype None) or each as a `teacher_copy`."""
    if dtype is None:
        return Runners(teachers)
    return Runners([teacher_copy(model, dtype) for model in teachers], teachers)


def to_float32(value):
    """A tensor (or nest of them) cast to float32 where it is floating."""

    def cast(tensor):
        if tensor is None or not tensor.dtype.is_floating:
            return tensor
        return tf.cast(tensor, tf.float32)

    return tf.nest.map_structure(cast, value)


def _clone(model, dtype):
    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            return _clone(layer, dtype)
        config = layer.get_config()
        if type(layer).__name__ != "InputLayer" and "dtype" in config:
            config["dtype"] = dtype
        return type(layer).from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer)


__all__ = [
    "DTYPES",
    "Runners",
    "check_teacher_dtype",
    "teacher_copies",
    "teacher_copy",
    "to_float32",
]
