"""The one copy of each helper that several keras-kd modules share.

Argument checks (with one rule for error types: a value of the wrong *type*
raises `TypeError`, a value of the right type outside its range raises
`ValueError`), atomic file writes, probabilities to log-probabilities, and
walking a model's layers through nested models and wrappers.

Names here have no leading underscore so that modules may import them; the
module itself is private: users import nothing from it.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from keras_kd import backend
from keras_kd.backend import keras, tf

# Probabilities are clipped to this before their logarithm is taken, so that a
# model that says exactly 0 gives a finite log-probability.
PROB_EPSILON = 1e-7


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _type_name(value) -> str:
    return type(value).__name__


def check_bool(value, argument: str) -> bool:
    """`value` as a Python bool; numpy booleans are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Argument `{argument}` must be True or False. Received: "
            f"{argument}={value!r} of type {_type_name(value)}."
        )
    return bool(value)


def check_int(value, argument: str, minimum: int | None = None, what: str = "") -> int:
    """`value` as a Python int, at least `minimum` when one is given.

    Args:
        value: the value to check.
        argument: the argument's name, for the message.
        minimum: the smallest allowed value, or None.
        what: what the integer counts, e.g. "a training step", for the message.
    """
    described = f"an integer ({what})" if what else "an integer"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Argument `{argument}` must be {described}. Received: "
            f"{argument}={value!r} of type {_type_name(value)}."
        )
    if minimum is not None and value < minimum:
        raise ValueError(
            f"Argument `{argument}` must be {described} of at least {minimum}. "
            f"Received: {argument}={value}."
        )
    return int(value)


def check_number(
    value,
    argument: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """`value` as a Python float inside the interval from `low` to `high`.

    Either bound may be None (unbounded); `low_open` / `high_open` exclude it.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Argument `{argument}` must be a number{f' ({what})' if what else ''}. "
            f"Received: {argument}={value!r} of type {_type_name(value)}."
        )
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or math.isnan(value):
        left = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
        right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        raise ValueError(
            f"Argument `{argument}` must be in {left}, {right}"
            f"{f' ({what})' if what else ''}. Received: {argument}={value}."
        )
    return float(value)


def check_alpha(alpha, argument: str = "alpha") -> float:
    """The weight of the distillation term: a number in [0, 1]."""
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
        raise TypeError(
            f"Argument `{argument}` must be a number between 0 and 1 (the "
            "weight of the distillation term). Received: "
            f"{argument}={alpha!r} of type {_type_name(alpha)}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"Argument `{argument}` must be between 0 and 1: it weights the "
            "distillation term, loss = alpha * distillation + (1 - alpha) * "
            f"hard. Received: {argument}={alpha}."
        )
    return float(alpha)


def model_kind() -> str:
    """What a model must be in this process's Keras flavour, for messages."""
    return "a tf_keras model" if backend.LEGACY else "a Keras 3 model"


def _other_flavour_hint(model) -> str:
    other = any(
        cls.__name__ == "Model"
        and cls.__module__.split(".")[0] in ("keras", "tf_keras")
        for cls in type(model).__mro__
    )
    if not other:
        return ""
    return (
        " It seems to come from the other Keras flavour: keras-kd uses "
        f"{backend.FLAVOUR} in this process (TF_USE_LEGACY_KERAS "
        f"{'=1' if backend.LEGACY else 'unset'}); build the models with the "
        "same Keras (`from keras_kd.backend import keras`)."
    )


def check_model(model, argument: str, allow_none: bool = False) -> None:
    """Raises unless `model` is a `keras.Model` of this process's flavour."""
    if model is None:
        if allow_none:
            return
        raise ValueError(
            f"Argument `{argument}` is required. Received: {argument}=None. "
            f"Expected {model_kind()} (`keras.Model`)."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `{argument}` must be {model_kind()} (`keras.Model`). "
            f"Received: {argument}={model!r} of type "
            f"{type(model).__module__}.{_type_name(model)}."
            f"{_other_flavour_hint(model)}"
        )


def is_graph_model(model) -> bool:
    """Whether `model` is Sequential or Functional (a graph of layers), or a
    subclass of Functional such as KerasHub's task models."""
    return backend.is_graph_network(model)


def with_token_mask(sample_weight, token_mask):
    """Per-token weights from a Keras mask (`mask_zero=True` upstream).

    Args:
        sample_weight: None, or weights per example or per token.
        token_mask: the `(batch, time)` Keras mask, or None.

    Returns:
        `sample_weight` unchanged without a mask or when it already holds
        per-token weights; else the mask in float32, times the per-example
        weights when there are some.
    """
    if token_mask is None:
        return sample_weight
    flat = tf.nest.flatten(sample_weight) if sample_weight is not None else []
    if len(flat) > 1 or (flat and flat[0].shape.rank != 1):
        return sample_weight  # per-token weights given: they rule
    mask = tf.cast(token_mask, tf.float32)
    if flat:
        mask = mask * tf.reshape(tf.cast(flat[0], tf.float32), [-1, 1])
    return mask


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path, content: bytes | Callable[[str], object]) -> None:
    """Writes `path` in full or not at all.

    The content goes to a temporary file in the same directory, is flushed to
    disk (`fsync`) and then renamed over `path`, so a crash or an error never
    leaves a half-written file under the final name.

    Args:
        path: the file to write; its directory is created if missing.
        content: the bytes to write, or a function that writes the file at the
            temporary path it is given (e.g. `model.save_weights`).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # Keep the final suffix: Keras chooses the format of `save_weights` by it.
    fd, temporary = tempfile.mkstemp(
        prefix=f".{base}.", suffix=f".tmp-{base}", dir=directory
    )
    try:
        if callable(content):
            os.close(fd)
            content(temporary)
            fd = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        # mkstemp creates the file readable by its owner only (0600); give it
        # the mode of any file this process creates (0666 less the umask).
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# ---------------------------------------------------------------------------
# Probabilities
# ---------------------------------------------------------------------------


def log_probs(probabilities):
    """float32 log-probabilities of `probabilities`, clipped away from 0.

    `log(p)` is a valid set of logits for `p`: softmax(log p) = p.
    """
    probabilities = tf.cast(probabilities, tf.float32)
    return tf.math.log(tf.clip_by_value(probabilities, PROB_EPSILON, 1.0))


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

# Wrappers (tfmot's quantize and prune wrappers, `TimeDistributed`) hold the
# real layer in `.layer`; quantize-aware activations hold theirs in
# `.activation`. Nothing real nests deeper than this.
_MAX_WRAPPING = 8


def unwrap_layer(layer):
    """The innermost layer held by wrappers (`.layer`), or `layer` itself."""
    for _ in range(_MAX_WRAPPING):
        inner = getattr(layer, "layer", None)
        if not isinstance(inner, keras.layers.Layer):
            break
        layer = inner
    return layer


def walk_layers(model, into_wrappers: bool = True) -> Iterator:
    """Every layer of `model`, depth first and in order, through nested models.

    Args:
        model: a model (or layer).
        into_wrappers: also yield the layer a wrapper holds in `.layer`, after
            the wrapper.

    Yields:
        Each layer once (by identity), the model itself excluded.
    """
    seen = set()
    stack = list(reversed(getattr(model, "layers", None) or []))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        children = list(getattr(layer, "layers", None) or [])
        inner = getattr(layer, "layer", None) if into_wrappers else None
        if isinstance(inner, keras.layers.Layer):
            children.insert(0, inner)
        stack.extend(reversed(children))


# Layers that scale or standardize a model's inputs: a model holding one
# takes raw pixels (0-255) rather than [0, 1].
RESCALING_LAYERS = ("Rescaling", "Normalization")


def rescales_inputs(model) -> bool:
    """Whether `model` holds a `Rescaling` or `Normalization` layer (at any depth).

    Such a model scales its own inputs, so it is fed images as they are stored
    (0-255), not divided by 255.
    """
    return any(type(layer).__name__ in RESCALING_LAYERS for layer in walk_layers(model))


def applies_softmax(layer) -> bool:
    """Whether `layer` ends with a softmax (its outputs are probabilities).

    Looks through wrappers that hold the real layer in `.layer` and through
    activations that hold the real one in `.activation`.
    """
    layer = unwrap_layer(layer)
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    for _ in range(_MAX_WRAPPING):
        inner = getattr(activation, "activation", None)
        if inner is None:
            break
        activation = inner
    if activation is None:
        return False
    name = getattr(activation, "__name__", None) or str(activation)
    return name == "softmax" or activation is keras.activations.softmax


def output_layers(model):
    """The layers that produce a model's outputs, or None where unknown."""
    try:
        outputs = tf.nest.flatten(model.outputs)
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    layers = [backend.keras_history_layer(output) for output in outputs]
    return None if any(layer is None for layer in layers) else layers


def output_is_probabilities(model):
    """For each output of `model`, whether its last layer applies softmax.

    Returns None where the model's structure cannot be inspected (e.g. an
    unbuilt or subclassed model).
    """
    layers = output_layers(model)
    if layers is None:
        return None
    return [applies_softmax(layer) for layer in layers]


def computes_in_float16(model) -> bool:
    """Whether `model` computes in float16 (`mixed_float16` or `float16`),
    where a loss needs scaling for its gradients not to underflow."""
    policy = getattr(model, "dtype_policy", None)
    return getattr(policy, "compute_dtype", None) == "float16"


def batch_size(x):
    """The number of rows of a batch of inputs (a tensor or a nest), a tensor."""
    return tf.shape(tf.nest.flatten(x)[0])[0]
