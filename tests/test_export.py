"""Tests for keras_kd/export/: conversion, quantization, verification."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import keras3_only, legacy_only, make_mlp, run_litert
from keras_kd import backend, export
from keras_kd.backend import keras, tf
from keras_kd.data import load_digits
from keras_kd.export import _convert

MODES = [None, "float16", "dynamic", "int8", "int8_io"]


def _build_digits_mlp(hidden=128):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs, name="digits_mlp")


@pytest.fixture(scope="module")
def digits():
    return load_digits(test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    """A small classifier trained on scikit-learn's digits (real data)."""
    keras.utils.set_random_seed(0)
    (x_train, y_train), _ = digits
    model = _build_digits_mlp()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, batch_size=64, epochs=12, verbose=0)
    return model


class TinySubclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, inputs, training=None):
        return self.out(self.hidden(inputs))


def _make_model(kind):
    if kind == "sequential":
        return make_mlp(16)
    if kind == "functional":
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3)(hidden))
    model = TinySubclassed()
    model(np.zeros((1, 8), "float32"))
    return model


def test_models_come_from_this_process_flavour():
    model = make_mlp(4)
    expected = "tf_keras" if backend.LEGACY else "keras"
    assert type(model).__module__.split(".")[0] == expected


@pytest.mark.parametrize("quantization", MODES)
def test_every_quantization_mode_converts_and_runs(
    trained, digits, tmp_path, quantization
):
    (x_train, _), (x_test, _) = digits
    path = tmp_path / "model.tflite"
    report = export.to_tflite(
        trained,
        path,
        quantization,
        representative_data=x_train,
        verify_data=x_test[:200],
        num_calibration_samples=100,
        latency_runs=5,
    )
    assert path.is_file() and report.size_bytes == path.stat().st_size
    assert report.quantization == (quantization or "float32")
    assert report.num_params == trained.count_params()
    assert report.interpreter == "ai_edge_litert"
    assert report.num_verify_samples == 200
    assert report.latency_ms is not None and report.latency_ms > 0
    assert report.top1_agreement >= 0.97
    assert report.input_dtypes == ["int8" if quantization == "int8_io" else "float32"]
    # dynamic batch dimension: batches of 1 and 7 both run
    for n in (1, 7):
        y, detail = run_litert(path, x_test[:n])
        assert y.shape == (n, 10)
        assert detail["shape_signature"][0] == -1
    keras_y = trained.predict(x_test[:7], verbose=0)
    np.testing.assert_allclose(y, keras_y, atol=0.5)


def test_quantized_files_are_smaller(trained, digits, tmp_path):
    (x_train, _), _ = digits
    sizes = {}
    for quantization in MODES:
        sizes[quantization] = export.to_tflite(
            trained,
            tmp_path / f"{quantization}.tflite",
            quantization,
            representative_data=x_train,
            num_calibration_samples=50,
            verify=False,
        ).size_bytes
    # Reference: each kernel weight takes 4 bytes in float32, 2 in float16
    # and 1 in int8 (biases stay 32-bit, int8 adds per-channel scales).
    kernels = sum(int(np.prod(w.shape)) for w in trained.weights if "kernel" in w.name)
    assert sizes[None] - sizes["float16"] >= 0.95 * 2 * kernels
    for quantization in ("dynamic", "int8", "int8_io"):
        assert sizes[None] - sizes[quantization] >= 0.85 * 3 * kernels


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_float32_export_matches_keras_to_1e_5(kind, data, tmp_path):
    x, _ = data
    model = _make_model(kind)
    path = tmp_path / "model.tflite"
    report = export.to_tflite(model, path, verify_data=x)
    assert report.max_abs_diff <= 1e-5
    assert report.max_rel_diff <= 1e-5  # float32 rounding, whatever the scale
    assert report.top1_agreement == 1.0
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(run_litert(path, x)[0], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        export.predict_tflite(path, x), expected, atol=1e-5, rtol=0
    )


def test_int8_agrees_with_keras_on_99_percent(trained, digits, tmp_path):
    (x_train, _), (x_test, y_test) = digits
    path = tmp_path / "int8.tflite"
    report = export.to_tflite(
        trained,
        path,
        "int8",
        representative_data=x_train,
        verify_data=(x_test, y_test),
        num_verify_samples=len(x_test),
    )
    assert report.num_verify_samples == len(x_test)
    assert report.top1_agreement >= 0.99
    # Independent reference: the file run with LiteRT's own API, the model
    # with `predict`, compared with numpy.
    keras_y = trained.predict(x_test, verbose=0)
    file_y = run_litert(path, x_test)[0]
    keras_top1, file_top1 = keras_y.argmax(-1), file_y.argmax(-1)
    assert report.top1_agreement == pytest.approx(np.mean(keras_top1 == file_top1))
    max_abs = float(np.max(np.abs(file_y - keras_y)))
    assert max_abs > 1e-3  # int8 rounding: a difference that can be measured
    assert report.max_abs_diff == pytest.approx(max_abs, rel=1e-4)
    assert report.max_rel_diff == pytest.approx(
        max_abs / float(np.max(np.abs(keras_y))), rel=1e-4
    )
    accuracy = export.evaluate_tflite(path, (x_test, y_test))
    assert accuracy == pytest.approx(np.mean(file_top1 == y_test))
    assert abs(accuracy - np.mean(keras_top1 == y_test)) <= 0.01


def test_int8_io_quantizes_inputs_and_dequantizes_outputs(trained, digits, tmp_path):
    (x_train, _), (x_test, y_test) = digits
    path = tmp_path / "int8_io.tflite"
    report = export.to_tflite(
        trained, path, "int8_io", representative_data=x_train, verify_data=x_test
    )
    assert report.input_dtypes == ["int8"] and report.output_dtypes == ["int8"]
    assert report.top1_agreement >= 0.99
    reference, _ = run_litert(path, x_test)  # quantized by hand
    np.testing.assert_allclose(
        export.predict_tflite(path, x_test), reference, atol=1e-6
    )
    assert report.max_abs_diff == pytest.approx(
        np.max(np.abs(reference - trained.predict(x_test, verbose=0))), rel=1e-5
    )
    one_hot = np.eye(10, dtype="float32")[y_test]
    ds = tf.data.Dataset.from_tensor_slices((x_test, one_hot)).batch(50)
    assert export.evaluate_tflite(path, ds) == pytest.approx(
        np.mean(reference.argmax(-1) == y_test)
    )


@pytest.mark.parametrize("quantization", ["int8", "int8_io"])
def test_int8_without_representative_data_is_an_error(quantization, tmp_path):
    model = make_mlp(8)
    path = tmp_path / "model.tflite"
    message = r"`representative_data` is required.*Received: representative_data=None"
    with pytest.raises(ValueError, match=message):
        export.to_tflite(model, path, quantization)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def no_conversion(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the converter ran before the arguments were checked")

    monkeypatch.setattr(_convert, "make_converter", fail)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"quantization": "int4"},
            ValueError,
            r"`quantization`.*Received: quantization='int4'.*'int8_io'",
        ),
        ({"quantization": 8}, TypeError, r"`quantization`.*Received: quantization=8"),
        (
            {"num_calibration_samples": 0},
            ValueError,
            r"`num_calibration_samples`.*Received: num_calibration_samples=0",
        ),
        (
            {"num_verify_samples": 2.5},
            TypeError,
            r"`num_verify_samples` must be an integer",
        ),
        (
            {"select_tf_ops": "yes"},
            TypeError,
            r"`select_tf_ops`.*Received: select_tf_ops='yes'",
        ),
        ({"metadata": ["labels"]}, TypeError, r"`metadata` must be a dict"),
        ({"metadata": {"labels": 3}}, TypeError, r"metadata\['labels'\]=3"),
        ({"metadata": {"min_runtime_version": "1"}}, ValueError, r"reserves"),
        (
            {"representative_data": "x.npy"},
            TypeError,
            r"`representative_data`.*Received: representative_data of type "
            r"builtins.str",
        ),
        (
            {"converter_options": {"optimizations": []}},
            ValueError,
            r"`converter_options`",
        ),
        ({"num_threads": 0}, ValueError, r"`num_threads`.*at least 1"),
        # A wrong type is a TypeError, a wrong value a ValueError.
        ({"num_threads": True}, TypeError, r"`num_threads` must be an integer"),
        ({"latency_runs": -1}, ValueError, r"`latency_runs`.*at least 0"),
        ({"verify": 1}, TypeError, r"`verify` must be True or False"),
        ({"metadata": {"": "x"}}, ValueError, r"non-empty string keys"),
        ({"metadata": {3: "x"}}, TypeError, r"non-empty string keys"),
    ],
)
def test_bad_arguments_raise_before_conversion(
    kwargs, error, message, tmp_path, no_conversion
):
    with pytest.raises(error, match=message):
        export.to_tflite(make_mlp(4), tmp_path / "m.tflite", **kwargs)
    assert os.listdir(tmp_path) == []


def test_bad_model_and_path_raise_before_conversion(tmp_path, no_conversion):
    with pytest.raises(TypeError, match=r"`model` must be .*Received: model='model'"):
        export.to_tflite("model", tmp_path / "m.tflite")
    with pytest.raises(TypeError, match=r"`path`.*Received: path=3"):
        export.to_tflite(make_mlp(4), 3)
    missing = tmp_path / "missing" / "m.tflite"
    with pytest.raises(ValueError, match=r"`path` must be in an existing directory"):
        export.to_tflite(make_mlp(4), missing)
    with pytest.raises(ValueError, match=r"`path` must name a file"):
        export.to_tflite(make_mlp(4), tmp_path)
    from keras_kd.distiller import Distiller

    with pytest.raises(ValueError, match=r"distiller.student"):
        export.to_tflite(Distiller(make_mlp(8), make_mlp(4)), tmp_path / "m.tflite")
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"`model` must be built"):
        export.to_tflite(unbuilt, tmp_path / "m.tflite")
    x = np.zeros((4, 5), "float32")  # the model takes 8 features
    message = r"`verify_data` has samples of shape \(5,\).*\(8,\)"
    with pytest.raises(ValueError, match=message):
        export.to_tflite(make_mlp(4), tmp_path / "m.tflite", verify_data=x)


class _FailingConverter:
    def __init__(self, *args, **kwargs):
        self.optimizations = []
        self.target_spec = type("Spec", (), {})()

    def convert(self):
        raise RuntimeError("simulated converter crash")


def test_failed_conversion_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(_convert, "make_converter", _FailingConverter)
    path = tmp_path / "model.tflite"
    message = r"(?s)nothing was written.*simulated converter crash"
    with pytest.raises(RuntimeError, match=message):
        export.to_tflite(make_mlp(4), path)
    assert os.listdir(tmp_path) == []
    # an existing file is kept as it was
    path.write_bytes(b"previous export")
    with pytest.raises(RuntimeError):
        export.to_tflite(make_mlp(4), path)
    assert os.listdir(tmp_path) == ["model.tflite"]
    assert path.read_bytes() == b"previous export"


def test_existing_file_is_replaced_by_a_successful_export(tmp_path, data):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous export")
    report = export.to_tflite(make_mlp(4), path, verify_data=data[0])
    assert os.listdir(tmp_path) == ["model.tflite"]
    assert path.read_bytes()[4:8] == b"TFL3"  # the flatbuffer identifier
    assert report.size_bytes == path.stat().st_size


def _determinant_model():
    inputs = keras.Input((3, 3))
    det = keras.layers.Lambda(lambda t: tf.reshape(tf.linalg.det(t), (-1, 1)))(inputs)
    return keras.Model(inputs, det)


def test_unsupported_op_fails_cleanly_and_select_tf_ops_converts_it(tmp_path):
    model = _determinant_model()
    path = tmp_path / "det.tflite"
    with pytest.raises(RuntimeError, match=r"select_tf_ops=True"):
        export.to_tflite(model, path)
    assert os.listdir(tmp_path) == []
    report = export.to_tflite(model, path, select_tf_ops=True)
    assert path.is_file()
    assert report.max_abs_diff is None
    assert any("MatrixDeterminant" in note for note in report.notes)


@pytest.mark.parametrize(
    "kind",
    ["numpy", "tuple", "batched", "unbatched", "generator", "pydataset", "tfds"],
)
def test_representative_data_takes_what_fit_takes(kind, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(60, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 60)
    drawn = []
    if kind == "numpy":
        source = x
    elif kind == "tuple":
        source = (x, y)
    elif kind == "batched":
        source = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    elif kind == "unbatched":
        source = tf.data.Dataset.from_tensor_slices(x)
    elif kind == "generator":

        def batches():
            for start in range(0, len(x), 8):
                drawn.append(start)
                yield x[start : start + 8], y[start : start + 8]

        source = batches()
    elif kind == "pydataset":
        base = getattr(keras.utils, "PyDataset", None) or keras.utils.Sequence

        class Batches(base):
            def __init__(self):
                super().__init__()

            def __len__(self):
                return 8

            def __getitem__(self, index):
                drawn.append(index)
                return x[8 * index : 8 * index + 8], y[8 * index : 8 * index + 8]

        source = Batches()
    else:
        tfds = pytest.importorskip("tensorflow_datasets")
        with tfds.testing.mock_data(num_examples=60, data_dir=str(tmp_path)):
            source = tfds.load(
                "mnist", split="train", as_supervised=True, data_dir=str(tmp_path)
            )
        source = source.map(
            lambda image, label: (tf.cast(image, tf.float32) / 255.0, label)
        )
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    report = export.to_tflite(
        model,
        tmp_path / "m.tflite",
        "int8",
        representative_data=source,
        num_calibration_samples=20,
        num_verify_samples=20,
        latency_runs=0,
    )
    assert report.num_verify_samples == 20
    assert report.max_abs_diff < 0.5
    if kind == "generator":
        assert drawn == [0, 8, 16]  # a bounded number of batches is drawn
    if kind == "pydataset":
        assert max(drawn) == 2


def test_tfds_dataset_without_as_supervised_is_explained(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8, data_dir=str(tmp_path)):
        ds = tfds.load("mnist", split="train", data_dir=str(tmp_path))
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    with pytest.raises(ValueError, match="as_supervised=True"):
        export.to_tflite(model, tmp_path / "m.tflite", "int8", representative_data=ds)


def test_metadata_is_stored_in_the_file(tmp_path):
    path = tmp_path / "m.tflite"
    export.to_tflite(
        make_mlp(4),
        path,
        metadata={"labels": "a\nb\nc", "blob": b"\x00\x01"},
        verify=False,
    )
    entries = export.read_metadata(path)
    assert entries["labels"] == b"a\nb\nc" and entries["blob"] == b"\x00\x01"
    assert "min_runtime_version" in entries
    y, _ = run_litert(path, np.ones((2, 8), "float32"))  # still runs
    assert y.shape == (2, 3)


def test_falls_back_to_tf_lite_interpreter_with_a_note(tmp_path, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    report = export.to_tflite(make_mlp(4), tmp_path / "m.tflite", verify_data=data[0])
    assert report.interpreter == "tf.lite"
    assert any("ai-edge-litert" in note for note in report.notes)
    assert report.max_abs_diff <= 1e-5


def test_no_data_still_runs_the_file_and_says_so(tmp_path):
    report = export.to_tflite(make_mlp(4), tmp_path / "m.tflite")
    assert report.max_abs_diff is None and report.latency_ms > 0
    assert report.num_verify_samples == 0 and report.top1_agreement is None
    assert any("No verify_data" in note for note in report.notes)


def test_report_holds_what_is_measured_independently(tmp_path, data):
    x, _ = data
    model = make_mlp(4)
    path = tmp_path / "m.tflite"
    values = export.to_tflite(model, path, verify_data=x, latency_runs=3).to_dict()
    # The file on disk, measured by the operating system.
    assert values["path"] == str(path)
    assert values["size_bytes"] == os.path.getsize(path)
    # The parameters, counted from the weights.
    assert values["num_params"] == sum(w.size for w in model.get_weights())
    # The file's tensors, as LiteRT's own API reads them.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    assert values["input_dtypes"] == [
        np.dtype(d["dtype"]).name for d in interpreter.get_input_details()
    ]
    assert values["output_dtypes"] == ["float32"]
    # The comparison, recomputed from an interpreter run of our own.
    expected = model.predict(x, verbose=0)
    assert values["num_verify_samples"] == len(x)
    assert values["max_abs_diff"] <= 1e-5
    assert np.max(np.abs(run_litert(path, x)[0] - expected)) <= 1e-5
    assert values["top1_agreement"] == 1.0
    assert values["quantization"] == "float32" and values["latency_ms"] > 0
    # Plain values: the dict survives JSON unchanged, and is a copy.
    assert json.loads(json.dumps(values)) == values
    text = str(export.ExportReport(**values))
    assert f"{os.path.getsize(path):,} bytes" in text and "float32" in text


def test_multi_input_model_exports(tmp_path):
    a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
    joined = keras.layers.Concatenate()([a, keras.layers.Dense(2)(b)])
    model = keras.Model([a, b], keras.layers.Dense(4)(joined))
    rng = np.random.default_rng(1)
    xa = rng.normal(size=(16, 3)).astype("float32")
    xb = rng.normal(size=(16, 5)).astype("float32")
    report = export.to_tflite(model, tmp_path / "m.tflite", verify_data=[xa, xb])
    assert report.max_abs_diff <= 1e-5
    np.testing.assert_allclose(
        export.predict_tflite(tmp_path / "m.tflite", [xa, xb]),
        model.predict([xa, xb], verbose=0),
        atol=1e-5,
    )


def test_mixed_precision_model_exports_float32_outputs(tmp_path, data):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = make_mlp(8)
    keras.mixed_precision.set_global_policy("float32")
    report = export.to_tflite(model, tmp_path / "m.tflite", verify_data=data[0])
    assert report.output_dtypes == ["float32"]
    assert report.max_abs_diff < 1e-2
    assert any("float32 copy" in note for note in report.notes)
    assert model.layers[0].compute_dtype == "float16"  # the model is untouched


def test_evaluate_tflite_needs_labels_and_a_file(tmp_path, data):
    path = tmp_path / "m.tflite"
    report = export.to_tflite(make_mlp(4), path, verify=np.bool_(False))
    assert report.interpreter is None and report.latency_ms is None  # not run
    with pytest.raises(ValueError, match="must hold labels"):
        export.evaluate_tflite(path, data[0])
    with pytest.raises(ValueError, match=r"`path` must be an existing .tflite file"):
        export.evaluate_tflite(tmp_path / "missing.tflite", data)


@keras3_only
def test_subclassed_keras3_model_needs_a_signature_or_data(tmp_path, data):
    model = _make_model("subclassed")
    with pytest.raises(ValueError, match="input_signature"):
        export.to_tflite(model, tmp_path / "m.tflite")
    report = export.to_tflite(
        model,
        tmp_path / "m.tflite",
        input_signature=tf.TensorSpec((None, 8), tf.float32),
    )
    assert report.size_bytes > 0


@legacy_only
def test_subclassed_tf_keras_model_knows_its_inputs_after_a_call(tmp_path, data):
    model = _make_model("subclassed")
    report = export.to_tflite(
        model, tmp_path / "m.tflite", "int8", representative_data=data[0]
    )
    assert report.top1_agreement >= 0.9


def test_a_layer_calibrated_on_one_value_is_named_when_the_file_does_not_prepare(
    tmp_path,
):
    # The second ReLU is never positive (negative weights on non-negative
    # inputs, zero bias): int8 calibration sees a constant, and XNNPACK
    # refuses the file. The error says which tensors and why.
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    dead = keras.initializers.Constant(-1.0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(2, "relu"),
            keras.layers.Dense(2, "relu", kernel_initializer=dead, name="dead"),
            keras.layers.Dense(4),
        ]
    )
    path = tmp_path / "dead.tflite"
    with pytest.raises(RuntimeError, match=r"does not prepare.*dead.*one value"):
        export.to_tflite(model, path, "int8", x)
    assert not path.exists()
