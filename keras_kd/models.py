"""Reference teachers and students for the examples, the demo and benchmarks.

Three small, well-known architectures, defined once so that every script
that reports a figure trains the same model:

* `mlp`: a multi-layer perceptron (Hinton et al. 2015's teachers and
  students, the demo's student, the online and self-distillation peers);
* `cnn`: the classic Keras MNIST convnet (two 3x3 convolutions, max pooling,
  dropout), the demo's teacher;
* `strided_cnn`: a small convnet without pooling (two strided 3x3
  convolutions), a student that fits in a phone app.

Each returns a Functional model mapping images to **logits** (no softmax),
as keras-kd's losses expect, built with the Keras flavour that
`keras_kd.backend` selects: `tf_keras` under `TF_USE_LEGACY_KERAS=1`, which
quantization- and pruning-aware distillation (`keras_kd.optimize`) need.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_kd._utils import check_int, check_number
from keras_kd.backend import keras


def _check_shape(input_shape, images: bool = False) -> tuple:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(
            "Argument `input_shape` must be a tuple of positive integers (one "
            f"example's shape, without the batch). Received: input_shape="
            f"{input_shape!r} of type {type(input_shape).__name__}."
        )
    shape = tuple(
        check_int(dim, "input_shape", 1, "a dimension of one example")
        for dim in input_shape
    )
    if images and len(shape) != 3:
        raise ValueError(
            "Argument `input_shape` must be `(height, width, channels)` for a "
            f"convolutional model. Received: input_shape={input_shape!r}."
        )
    if not shape:
        raise ValueError(
            "Argument `input_shape` must have at least one dimension. "
            f"Received: input_shape={input_shape!r}."
        )
    return shape


def _check_hidden(hidden) -> tuple:
    units = (hidden,) if not isinstance(hidden, (list, tuple)) else tuple(hidden)
    return tuple(check_int(u, "hidden", 1, "units of a hidden layer") for u in units)


def _dropout(rate, argument: str) -> float:
    return check_number(rate, argument, 0.0, 1.0, high_open=True, what="a rate")


def mlp(
    input_shape,
    num_classes: int,
    hidden: int | Sequence[int] = 128,
    dropout: float = 0.0,
    input_dropout: float = 0.0,
    jitter: int = 0,
    name: str = "mlp",
):
    """A multi-layer perceptron with ReLU hidden layers, returning logits.

    The layers, in order: an optional random translation of the images by up
    to `jitter` pixels (training only), `Flatten` (for inputs of more than
    one dimension), an optional dropout on the inputs, then for each entry
    of `hidden` a `Dense` ReLU layer followed by dropout when `dropout > 0`,
    and a `Dense` layer of `num_classes` logits.

    Args:
        input_shape: one example's shape, e.g. `(28, 28, 1)` or `(784,)`.
        num_classes: number of output logits.
        hidden: units of the hidden layer, or a sequence with the units of
            each hidden layer (`(1200, 1200)`: two layers of 1200).
        dropout: dropout rate after each hidden layer (0: none).
        input_dropout: dropout rate on the flattened inputs (0: none).
        jitter: largest random translation of image inputs in pixels, in
            training only (0: none); needs `(height, width, channels)` inputs.
        name: the model's name.

    Returns:
        A Functional `keras.Model` of the flavour of `keras_kd.backend`.

    Example:

    >>> from keras_kd import models
    >>> teacher = models.mlp((28, 28, 1), 10, hidden=(1200, 1200),
    ...                      dropout=0.3, jitter=2, name="teacher")
    >>> student = models.mlp((28, 28, 1), 10, hidden=(800, 800))
    >>> student.count_params()
    1276810
    """
    shape = _check_shape(input_shape)
    num_classes = check_int(num_classes, "num_classes", 1, "output logits")
    units = _check_hidden(hidden)
    dropout = _dropout(dropout, "dropout")
    input_dropout = _dropout(input_dropout, "input_dropout")
    jitter = check_int(jitter, "jitter", 0, "pixels")
    if jitter and len(shape) != 3:
        raise ValueError(
            "Argument `jitter` translates images, so `input_shape` must be "
            f"`(height, width, channels)`. Received: jitter={jitter}, "
            f"input_shape={input_shape!r}."
        )
    inputs = keras.Input(shape)
    x = inputs
    if jitter:
        x = keras.layers.RandomTranslation(
            jitter / shape[0],
            jitter / shape[1],
            fill_mode="constant",
            interpolation="nearest",
        )(x)
    if len(shape) > 1:
        x = keras.layers.Flatten()(x)
    if input_dropout:
        x = keras.layers.Dropout(input_dropout)(x)
    for n in units:
        x = keras.layers.Dense(n, activation="relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)


def _check_cnn(input_shape, num_classes, filters, hidden):
    return (
        _check_shape(input_shape, images=True),
        check_int(num_classes, "num_classes", 1, "output logits"),
        check_int(filters, "filters", 1, "convolution filters"),
        check_int(hidden, "hidden", 1, "units of the hidden layer"),
    )


def cnn(
    input_shape,
    num_classes: int,
    filters: int = 32,
    hidden: int = 128,
    name: str = "cnn",
):
    """The classic Keras MNIST convnet, returning logits.

    Two 3x3 same-padded ReLU convolutions (`filters`, then `2 * filters`),
    2x2 max pooling, dropout 0.25, `Flatten`, a `Dense` ReLU layer of
    `hidden` units, dropout 0.5 and a `Dense` layer of `num_classes` logits.
    An accurate teacher for small images (151,306 parameters on 8x8 digits).

    Args:
        input_shape: `(height, width, channels)`.
        num_classes: number of output logits.
        filters: filters of the first convolution (the second has twice as
            many).
        hidden: units of the dense hidden layer.
        name: the model's name.

    Returns:
        A Functional `keras.Model` of the flavour of `keras_kd.backend`.

    Example:

    >>> from keras_kd import models
    >>> models.cnn((8, 8, 1), 10).count_params()
    151306
    """
    shape, num_classes, filters, hidden = _check_cnn(
        input_shape, num_classes, filters, hidden
    )
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)


def strided_cnn(
    input_shape,
    num_classes: int,
    filters: int = 16,
    hidden: int = 64,
    name: str = "strided_cnn",
):
    """A small convnet without pooling, returning logits.

    Two 3x3 same-padded ReLU convolutions with stride 2 (`filters`, then
    `2 * filters`), `Flatten`, a `Dense` ReLU layer of `hidden` units and a
    `Dense` layer of `num_classes` logits. Every layer quantizes to int8
    and works with `keras_kd.optimize` (105,866 parameters on MNIST).

    Args:
        input_shape: `(height, width, channels)`.
        num_classes: number of output logits.
        filters: filters of the first convolution (the second has twice as
            many).
        hidden: units of the dense hidden layer.
        name: the model's name.

    Returns:
        A Functional `keras.Model` of the flavour of `keras_kd.backend`.

    Example:

    >>> from keras_kd import models
    >>> models.strided_cnn((28, 28, 1), 10).count_params()
    105866
    """
    shape, num_classes, filters, hidden = _check_cnn(
        input_shape, num_classes, filters, hidden
    )
    conv = dict(kernel_size=3, strides=2, padding="same", activation="relu")
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(filters, **conv)(inputs)
    x = keras.layers.Conv2D(2 * filters, **conv)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)


__all__ = ["cnn", "mlp", "strided_cnn"]
