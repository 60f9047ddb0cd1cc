"""kd.calibrate: temperature scaling checked against numpy references."""

import os

import numpy as np
import pytest

import keras_kd as kd
from conftest import run_litert
from keras_kd.backend import keras, tf
from keras_kd.calibrate import TEMPERATURE_RANGE, TemperatureScaling, fit_temperature

pytest.importorskip("sklearn")


def np_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def np_nll(probs, labels):
    true = probs[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.clip(true, 1e-7, 1.0))))


def np_ece(probs, labels, num_bins=15):
    conf, pred, total = probs.max(1), probs.argmax(1), 0.0
    for k in range(num_bins):
        inside = (conf >= k / num_bins) & (conf < (k + 1) / num_bins)
        if k == num_bins - 1:
            inside |= conf == 1.0
        if inside.any():
            acc = np.mean(pred[inside] == labels[inside])
            total += inside.mean() * abs(acc - conf[inside].mean())
    return total


def np_nll_at(logits, labels, temperature):
    return np_nll(np_softmax(np.asarray(logits, np.float64) / temperature), labels)


@pytest.fixture(scope="module")
def digits():
    (x_train, y_train), (x_test, y_test) = kd.data.load_digits()
    return (x_train[:600], y_train[:600]), (x_test, y_test)


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP on digits, trained long enough to be over-confident."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = kd.models.mlp((8, 8, 1), 10, 16, name="small")
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def calibrated(trained, digits):
    return kd.calibrate(trained, digits[1])


def test_calibrated_probabilities_are_softmax_of_logits_over_t(
    trained, digits, calibrated
):
    x, _ = digits[1]
    logits = trained.predict(x, verbose=0)
    expected = np_softmax(np.asarray(logits, np.float64) / calibrated.temperature)
    got = calibrated.model.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert calibrated.temperature != pytest.approx(1.0, abs=0.02)  # it did scale
    # Temperature scaling never changes a prediction.
    np.testing.assert_array_equal(got.argmax(-1), logits.argmax(-1))
    assert not calibrated.from_probabilities
    assert calibrated.model.name == "small_calibrated"


def test_fitted_temperature_minimizes_nll_against_a_grid_search(
    trained, digits, calibrated
):
    x, y = digits[1]
    logits = trained.predict(x, verbose=0)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 4001))
    nll = np.array([np_nll_at(logits, y, t) for t in grid])
    best = grid[nll.argmin()]
    step = np.log(grid[1]) - np.log(grid[0])
    assert abs(np.log(calibrated.temperature) - np.log(best)) <= step
    assert np_nll_at(logits, y, calibrated.temperature) <= nll.min() + 1e-9


def test_before_and_after_figures_match_numpy(trained, digits, calibrated):
    x, y = digits[1]
    logits = trained.predict(x, verbose=0)
    before = np_softmax(logits)
    after = np_softmax(np.asarray(logits, np.float64) / calibrated.temperature)
    assert calibrated.ece_before == pytest.approx(np_ece(before, y), abs=1e-9)
    assert calibrated.ece_after == pytest.approx(np_ece(after, y), abs=1e-9)
    assert calibrated.nll_before == pytest.approx(np_nll(before, y), abs=1e-9)
    assert calibrated.nll_after == pytest.approx(np_nll(after, y), abs=1e-9)
    assert calibrated.nll_after <= calibrated.nll_before
    assert calibrated.num_samples == len(y) and calibrated.num_bins == 15
    assert set(calibrated.to_dict()) == {
        "temperature",
        "ece_before",
        "ece_after",
        "nll_before",
        "nll_after",
        "num_samples",
        "num_bins",
        "from_probabilities",
        "notes",
    }
    text = str(calibrated)
    assert f"T = {calibrated.temperature:.4f}" in text
    assert f"{calibrated.ece_before:.4f} -> {calibrated.ece_after:.4f}" in text


def test_known_temperature_is_recovered():
    # Labels drawn from softmax(z / 2.5): the NLL's minimum is near T = 2.5.
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(20000, 5))
    probs = np_softmax(logits / 2.5)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_softmax_model_is_calibrated_on_its_log_probabilities(
    trained, digits, calibrated
):
    x, y = digits[1]
    with_softmax = keras.Sequential(
        [keras.Input((8, 8, 1)), trained, keras.layers.Softmax()]
    )
    result = kd.calibrate(with_softmax, (x, y))
    assert result.from_probabilities
    # log softmax(z) differs from z by a constant a row: the same T.
    assert result.temperature == pytest.approx(calibrated.temperature, rel=1e-4)
    p = with_softmax.predict(x, verbose=0).astype(np.float64)
    expected = np_softmax(np.log(np.clip(p, 1e-7, 1.0)) / result.temperature)
    np.testing.assert_allclose(result.model.predict(x, verbose=0), expected, atol=1e-5)
    assert result.ece_before == pytest.approx(np_ece(p, y), abs=1e-9)


@pytest.mark.parametrize("kind", ["dataset", "unbatched", "one_hot", "weighted"])
def test_input_kinds_give_the_same_temperature(trained, digits, calibrated, kind):
    x, y = digits[1]
    data = {
        "dataset": lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(37),
        "unbatched": lambda: tf.data.Dataset.from_tensor_slices((x, y)),
        "one_hot": lambda: (x, np.eye(10)[y]),
        "weighted": lambda: (x, y, np.ones(len(y))),
    }[kind]()
    result = kd.calibrate(trained, data, batch_size=50)
    assert result.temperature == pytest.approx(calibrated.temperature, rel=1e-6)
    assert result.num_samples == len(y)


def test_saved_and_loaded_as_keras_file(calibrated, digits, tmp_path):
    x, _ = digits[1]
    path = os.fspath(tmp_path / "calibrated.keras")
    calibrated.model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.layers[-1]
    assert isinstance(layer, TemperatureScaling)
    assert layer.temperature == calibrated.temperature
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), calibrated.model.predict(x, verbose=0), atol=1e-7
    )


def test_layer_config_round_trip():
    layer = TemperatureScaling(temperature=1.7, from_probabilities=True, name="t")
    config = layer.get_config()
    assert config["temperature"] == 1.7 and config["from_probabilities"] is True
    again = TemperatureScaling.from_config(config)
    z = np.array([[0.2, 0.3, 0.5]], "float32")
    np.testing.assert_allclose(
        np.asarray(again(z)), np_softmax(np.log(z) / 1.7), atol=1e-6
    )
    assert keras.saving.get_registered_name(TemperatureScaling) == (
        "keras_kd>TemperatureScaling"
    )


def test_exported_to_tflite(calibrated, digits, tmp_path):
    x, _ = digits[1]
    path = tmp_path / "calibrated.tflite"
    report = kd.export.to_tflite(calibrated.model, path, verify_data=x, latency_runs=0)
    assert report.top1_agreement == 1.0
    got, _ = run_litert(path, x[:64])
    np.testing.assert_allclose(
        got, calibrated.model.predict(x[:64], verbose=0), atol=1e-5
    )


def test_a_model_without_mistakes_ends_at_the_lowest_temperature():
    logits = np.array([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0]])
    assert fit_temperature(logits, [0, 1, 0]) == pytest.approx(TEMPERATURE_RANGE[0])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.layers[-1].set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    x = np.array([[4.0, 0.0], [0.0, 3.0]], "float32")
    with pytest.warns(UserWarning, match="lowest searched"):
        result = kd.calibrate(model, (x, np.array([0, 1])))
    assert result.temperature == pytest.approx(TEMPERATURE_RANGE[0])
    assert "does not determine T" in result.notes[0]


@pytest.mark.parametrize(
    "data, error, match",
    [
        (lambda x, y: x, ValueError, "`validation_data` must hold labels"),
        (lambda x, y: (x,), ValueError, "`validation_data` must hold labels"),
        (lambda x, y: (x, None), ValueError, "`validation_data` must hold labels"),
        (
            lambda x, y: tf.data.Dataset.from_tensor_slices(x).batch(8),
            ValueError,
            "`validation_data` must hold labels",
        ),
        (lambda x, y: None, ValueError, "`validation_data` is required"),
        (lambda x, y: "digits.npz", TypeError, "`validation_data` must be samples"),
        (lambda x, y: 3, TypeError, "`validation_data` must be samples"),
        (
            lambda x, y: (x[:, :4], y),
            ValueError,
            r"`validation_data` has samples of shape \(4, 8, 1\)",
        ),
        (lambda x, y: (x[:0], y[:0]), ValueError, "yielded no samples"),
    ],
)
def test_bad_validation_data_is_refused(trained, digits, data, error, match):
    x, y = digits[1]
    with pytest.raises(error, match=match):
        kd.calibrate(trained, data(x, y))


def test_bad_arguments_are_refused(trained, digits):
    with pytest.raises(TypeError, match="Argument `model` must be"):
        kd.calibrate("model.keras", digits[1])
    with pytest.raises(ValueError, match="`batch_size` must be an integer"):
        kd.calibrate(trained, digits[1], batch_size=0)
    with pytest.raises(TypeError, match="`num_bins` must be an integer"):
        kd.calibrate(trained, digits[1], num_bins=2.5)
    with pytest.raises(ValueError, match=r"`temperature` must be in \(0.0, inf\)"):
        TemperatureScaling(temperature=0.0)
    with pytest.raises(TypeError, match="`from_probabilities` must be True or False"):
        TemperatureScaling(from_probabilities="yes")


def test_a_model_with_two_outputs_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(3)(inputs)] * 2)
    x = np.zeros((8, 4), "float32")
    with pytest.raises(ValueError, match="`model` must have one output"):
        kd.calibrate(model, (x, np.zeros(8, "int64")))
