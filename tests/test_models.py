"""The reference models of keras_kd.models, against hand-computed references."""

import numpy as np
import pytest

from keras_kd import models
from keras_kd.backend import keras


def _dense(units_in, units_out):
    return units_in * units_out + units_out


def _conv3x3(channels_in, filters):
    return 9 * channels_in * filters + filters


def _layer_types(model):
    return [type(layer).__name__ for layer in model.layers[1:]]  # after Input


def _numpy_mlp(model, x):
    """ReLU hidden layers and linear logits, from the model's weights."""
    weights = model.get_weights()
    h = x.reshape(len(x), -1).astype(np.float64)
    for i in range(0, len(weights), 2):
        h = h @ weights[i] + weights[i + 1]
        if i + 2 < len(weights):
            h = np.maximum(h, 0.0)
    return h


def test_mlp_is_relu_layers_then_logits():
    x = np.random.default_rng(0).random((16, 4, 3, 1)).astype("float32")
    model = models.mlp((4, 3, 1), 5, hidden=(7, 6), name="m")
    assert isinstance(model, keras.Model) and model.name == "m"
    assert _layer_types(model) == ["Flatten", "Dense", "Dense", "Dense"]
    np.testing.assert_allclose(
        np.asarray(model(x, training=False)),
        _numpy_mlp(model, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_mlp_regularisers_act_in_training_only():
    x = np.random.default_rng(1).random((16, 6, 6, 1)).astype("float32")
    model = models.mlp(
        (6, 6, 1), 4, hidden=(8, 8), dropout=0.3, input_dropout=0.2, jitter=1
    )
    assert _layer_types(model) == [
        "RandomTranslation",
        "Flatten",
        "Dropout",
        "Dense",
        "Dropout",
        "Dense",
        "Dropout",
        "Dense",
    ]
    translation = model.layers[1]
    assert translation.height_factor == translation.width_factor == 1 / 6
    rates = [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.2, 0.3, 0.3]
    reference = _numpy_mlp(model, x)
    np.testing.assert_allclose(
        np.asarray(model(x, training=False)), reference, rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(np.asarray(model(x, training=True)), reference, atol=1e-3)


def test_mlp_counts_parameters_and_flattens_only_images():
    flat = models.mlp((784,), 10, hidden=(800, 800))
    assert _layer_types(flat) == ["Dense", "Dense", "Dense"]
    expected = _dense(784, 800) + _dense(800, 800) + _dense(800, 10)
    assert flat.count_params() == expected == 1_276_810
    # one hidden layer from an int: the demo's student on 8x8 digits
    assert models.mlp((8, 8, 1), 10, hidden=32).count_params() == (
        _dense(64, 32) + _dense(32, 10)
    )


def test_cnn_is_the_keras_mnist_convnet():
    model = models.cnn((8, 8, 1), 10)
    assert _layer_types(model) == [
        "Conv2D",
        "Conv2D",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    conv1, conv2 = model.layers[1:3]
    assert (conv1.filters, conv2.filters) == (32, 64)
    assert conv1.padding == conv2.padding == "same"
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits
    expected = (
        _conv3x3(1, 32) + _conv3x3(32, 64) + _dense(4 * 4 * 64, 128) + _dense(128, 10)
    )
    assert model.count_params() == expected == 151_306
    assert tuple(model.output_shape) == (None, 10)


def test_strided_cnn_halves_the_image_twice():
    model = models.strided_cnn((28, 28, 1), 10)
    assert _layer_types(model) == ["Conv2D", "Conv2D", "Flatten", "Dense", "Dense"]
    conv1, conv2 = model.layers[1:3]
    assert tuple(conv1.strides) == tuple(conv2.strides) == (2, 2)
    assert tuple(conv2.output.shape) == (None, 7, 7, 32)
    expected = (
        _conv3x3(1, 16) + _conv3x3(16, 32) + _dense(7 * 7 * 32, 64) + _dense(64, 10)
    )
    assert model.count_params() == expected == 105_866


def test_same_seed_gives_the_same_initial_weights():
    # The examples rely on it: scratch and distilled students start alike.
    keras.utils.set_random_seed(5)
    a = models.mlp((8, 8, 1), 10, hidden=16).get_weights()
    keras.utils.set_random_seed(5)
    b = models.mlp((8, 8, 1), 10, hidden=16).get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: models.mlp((8,), 10, hidden="8"), TypeError, "`hidden`.*'8'"),
        (lambda: models.mlp((8,), 10, hidden=(8, 0)), ValueError, "`hidden`.*hidden=0"),
        (lambda: models.mlp((8,), 10, dropout=1.0), ValueError, "`dropout`.*1.0"),
        (lambda: models.mlp((8,), 0), ValueError, "`num_classes`.*num_classes=0"),
        (lambda: models.mlp((8,), 10, jitter=1), ValueError, "`jitter`.*height"),
        (lambda: models.mlp("8", 10), TypeError, "`input_shape`.*'8'"),
        (lambda: models.mlp((8, 0), 10), ValueError, "`input_shape`.*=0"),
        (lambda: models.mlp((), 10), ValueError, "`input_shape`.*at least one"),
        (lambda: models.cnn((64,), 10), ValueError, "`input_shape`.*channels"),
        (
            lambda: models.strided_cnn((8, 8, 1), 10, filters=2.0),
            TypeError,
            "`filters`.*2.0",
        ),
    ],
)
def test_bad_arguments_are_rejected_with_the_argument_named(build, error, message):
    with pytest.raises(error, match=message):
        build()
