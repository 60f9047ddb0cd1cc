"""Tests for keras_kd/continual.py: `widen_head` for continual updates."""

import os

import numpy as np
import pytest

import keras_kd as kd
from conftest import make_mlp
from keras_kd.backend import keras


def _cnn(classes=5, activation=None):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(classes, activation=activation)(h))


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")


@pytest.mark.parametrize("make", [lambda: _cnn(), lambda: make_mlp(8, n_out=5)])
def test_the_widened_model_keeps_the_old_outputs_bit_for_bit(make, x):
    keras.utils.set_random_seed(0)
    old = make()
    x = x if len(old.inputs[0].shape) == 4 else x.reshape(len(x), -1)[:, :8]
    before = np.asarray(old(x))
    weights = [w.copy() for w in old.get_weights()]
    widened = kd.widen_head(old, num_classes=9)
    after = np.asarray(widened(x))
    assert after.shape == (len(x), 9)
    np.testing.assert_array_equal(after[:, :5], before)  # bit for bit
    for a, b in zip(weights, old.get_weights()):  # the old model is untouched
        np.testing.assert_array_equal(a, b)
    kernel = widened.layers[-1].get_weights()[0]
    np.testing.assert_array_equal(kernel[:, :5], weights[-2])
    assert np.abs(kernel[:, 5:]).sum() > 0  # new rows drawn, not zeros
    assert widened.name.endswith("_widened")
    # Training the widened model leaves the old one as it was.
    widened.compile("sgd", "mse")
    widened.fit(x, np.zeros((len(x), 9)), epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(old(x)), before)


def test_a_softmax_head_keeps_its_old_scores_in_proportion(x):
    old = _cnn(activation="softmax")
    widened = kd.widen_head(old, 7, name="wider")
    p_old, p_new = np.asarray(old(x)), np.asarray(widened(x))
    ratio = p_new[:, :5] / p_old
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, 5)), rtol=1e-5)
    assert widened.name == "wider"


def test_the_widened_model_saves_and_exports(x, tmp_path):
    widened = kd.widen_head(_cnn(), 8)
    path = os.fspath(tmp_path / "w.keras")
    widened.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(widened(x)))
    report = kd.export.to_tflite(widened, tmp_path / "w.tflite", verify_data=x)
    assert report.top1_agreement == 1.0


def test_bad_arguments_name_what_is_wrong():
    old = _cnn()
    with pytest.raises(ValueError, match=r"`num_classes` must be .* at least 6"):
        kd.widen_head(old, 5)
    with pytest.raises(TypeError, match="num_classes"):
        kd.widen_head(old, "9")
    flat = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.ReLU()]
    )
    with pytest.raises(ValueError, match=r"last layer is a `Dense`.*ReLU"):
        kd.widen_head(flat, 5)
    with pytest.raises(TypeError, match="model"):
        kd.widen_head("model.keras", 5)


def test_a_frozen_teacher_widens_into_a_trainable_student():
    old = _cnn()
    old.trainable = False  # as a Distiller leaves its teacher
    widened = kd.widen_head(old, 6)
    assert widened.trainable and len(widened.trainable_weights) == 4
    assert not old.trainable
