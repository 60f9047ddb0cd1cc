"""Tests for `keras_kd.optimize`: quantization- and pruning-aware distillation.

The tfmot tests run only in the tf_keras flavour (TF_USE_LEGACY_KERAS=1 for
the whole pytest process); the Keras 3 run checks the errors that explain it.
"""

import gzip
import os
import sys

import numpy as np
import pytest

from conftest import keras3_only, legacy_only, make_mlp
from keras_kd import backend, export, optimize
from keras_kd._optimize_pruning import default_frequency
from keras_kd._utils import output_is_probabilities
from keras_kd.backend import keras
from keras_kd.data import load_digits
from keras_kd.distiller import Distiller
from keras_kd.losses import KLDivergence

BATCH = 64


def _mlp(hidden, activation=None, name=None):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation=activation)(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def digits():
    return load_digits(test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def trained_student(digits):
    """A float student trained on the labels, to prune from."""
    if not backend.LEGACY:
        return None
    keras.utils.set_random_seed(1)
    (x_train, y_train), _ = digits
    model = _mlp(64, name="student")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, batch_size=BATCH, epochs=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def teacher(digits):
    if not backend.LEGACY:
        return None
    keras.utils.set_random_seed(0)
    (x_train, y_train), _ = digits
    model = _mlp(128, name="teacher")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, batch_size=BATCH, epochs=10, verbose=0)
    return model


def _distill(teacher, student, digits, epochs, **fit_kwargs):
    (x_train, y_train), _ = digits
    distiller = Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        distillation_loss=KLDivergence(temperature=4.0),
        alpha=0.7,
    )
    return distiller.fit(
        x_train,
        y_train,
        batch_size=BATCH,
        epochs=epochs,
        verbose=0,
        **fit_kwargs,
    )


def _zero_share(array):
    array = np.asarray(array)
    return float(np.count_nonzero(array == 0)) / array.size


# ----------------------------------------------------------------------
# Both flavours: measures
# ----------------------------------------------------------------------


def test_sparsity_counts_zero_kernel_weights():
    model = make_mlp(10)  # kernels 8x10 and 10x3, biases left out
    first, second = (layer for layer in model.layers if layer.weights)
    k1 = np.ones((8, 10), "float32")
    k1[:, :4] = 0.0  # 32 zeros of 80
    k2 = np.ones((10, 3), "float32")
    k2[0] = 0.0  # 3 zeros of 30
    first.set_weights([k1, np.zeros(10, "float32")])  # zero biases don't count
    second.set_weights([k2, np.zeros(3, "float32")])
    assert optimize.sparsity(model) == pytest.approx(35 / 110)
    assert optimize.sparsity(model, per_layer=True) == {
        first.name: pytest.approx(0.4),
        second.name: pytest.approx(0.1),
    }


def test_sparsity_needs_kernels():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="no Dense or convolution kernels"):
        optimize.sparsity(model)
    with pytest.raises(TypeError, match=r"`model` must be .*`keras.Model`"):
        optimize.sparsity("model")


def test_sparsity_looks_through_nested_models():
    inner = make_mlp(6, n_in=4, n_out=5)  # kernels 4x6 and 6x5
    inputs = keras.Input((4,))
    head = keras.layers.Dense(2)  # kernel 5x2
    model = keras.Model(inputs, head(inner(inputs)))
    kernels = [
        np.asarray(w) for w in model.weights if w.shape.rank == 2
    ]  # the three kernels, found by shape
    assert sorted(k.size for k in kernels) == [10, 24, 30]
    dense_layers = [layer for layer in inner.layers if layer.weights] + [head]
    for layer, zeros in zip(dense_layers, (5, 12, 3)):
        kernel, bias = layer.get_weights()
        flat = np.ones(kernel.size, "float32")
        flat[:zeros] = 0.0
        layer.set_weights([flat.reshape(kernel.shape), bias])
    assert optimize.sparsity(model) == pytest.approx((5 + 12 + 3) / (24 + 30 + 10))
    per_layer = optimize.sparsity(model, per_layer=True)
    assert per_layer == {
        dense_layers[0].name: pytest.approx(5 / 24),
        dense_layers[1].name: pytest.approx(12 / 30),
        head.name: pytest.approx(3 / 10),
    }


def test_gzipped_size_matches_gzip(tmp_path):
    rng = np.random.default_rng(0)
    sparse = np.zeros(50_000, "float32")
    sparse[rng.choice(50_000, 5_000, replace=False)] = rng.normal(size=5_000)
    dense = rng.normal(size=50_000).astype("float32")
    sizes = {}
    for name, array in (("sparse", sparse), ("dense", dense)):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(array.tobytes())
        sizes[name] = optimize.gzipped_size(path)
        assert sizes[name] == len(gzip.compress(array.tobytes(), 9, mtime=0))
    assert sizes["sparse"] < 0.3 * sizes["dense"]
    with pytest.raises(ValueError, match="existing file"):
        optimize.gzipped_size(tmp_path / "missing.bin")


def test_strip_returns_a_model_without_wrappers_unchanged():
    model = make_mlp(4)
    assert optimize.strip(model) is model


# ----------------------------------------------------------------------
# Keras 3 flavour: the errors that explain the fix
# ----------------------------------------------------------------------


@keras3_only
@pytest.mark.parametrize(
    "call",
    [
        lambda m: optimize.quantization_aware(m),
        lambda m: optimize.prune(m, 0.5, end_step=10),
        lambda m: optimize.pruning_callbacks(),
    ],
    ids=["quantization_aware", "prune", "pruning_callbacks"],
)
def test_keras3_flavour_explains_tf_keras_and_the_extra(call, monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    with pytest.raises(RuntimeError) as excinfo:
        call(make_mlp(4))
    message = str(excinfo.value)
    assert "TF_USE_LEGACY_KERAS=1" in message
    assert "pip install keras-kd[optimize]" in message
    # tfmot was not imported: it would switch TF_USE_LEGACY_KERAS on
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert "tensorflow_model_optimization" not in sys.modules


# ----------------------------------------------------------------------
# tf_keras flavour: quantization-aware distillation
# ----------------------------------------------------------------------


@legacy_only
def test_quantization_aware_distillation_exports_an_int8_file(
    teacher, digits, tmp_path
):
    _, (x_test, y_test) = digits
    student = _mlp(32, name="student")
    original = [w.copy() for w in student.get_weights()]
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_q = optimize.quantization_aware(student)
    kinds = {type(layer).__name__ for layer in student_q.layers}
    assert {"QuantizeLayer", "QuantizeWrapperV2"} <= kinds
    history = _distill(teacher, student_q, digits, epochs=5)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    for before, after in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)  # the teacher is frozen
    for before, after in zip(original, student.get_weights()):
        np.testing.assert_array_equal(before, after)  # a copy was trained

    path = tmp_path / "qat.tflite"
    report = export.to_tflite(  # no calibration data: QAT carries its ranges
        student_q,
        path,
        "int8",
        verify_data=(x_test, y_test),
        num_verify_samples=len(x_test),
    )
    assert report.top1_agreement >= 0.98
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "FULLY_CONNECTED" in ops
    tensors = interpreter.get_tensor_details()
    float_tensors = [t for t in tensors if t["dtype"] == np.float32]
    assert len(float_tensors) <= 3  # the float input/output around QUANTIZE
    assert any(t["dtype"] == np.int8 and len(t["shape"]) == 2 for t in tensors)
    keras_accuracy = np.mean(student_q.predict(x_test, verbose=0).argmax(-1) == y_test)
    accuracy = export.evaluate_tflite(path, (x_test, y_test))
    assert accuracy > 0.8
    assert abs(accuracy - keras_accuracy) <= 0.02


@legacy_only
def test_quantization_aware_on_a_subset_of_layers(digits, tmp_path):
    (x_train, _), _ = digits
    student = _mlp(16)
    first_dense = [
        layer for layer in student.layers if isinstance(layer, keras.layers.Dense)
    ][0]
    student_q = optimize.quantization_aware(student, layers=[first_dense.name])
    wrapped_dense = [
        layer.layer.name
        for layer in student_q.layers
        if type(layer).__name__ == "QuantizeWrapperV2"
        and isinstance(layer.layer, keras.layers.Dense)
    ]
    assert wrapped_dense == [first_dense.name]  # the output layer stays float
    np.testing.assert_array_equal(
        student_q.predict(x_train[:4], verbose=0).shape, (4, 10)
    )
    # the float layers are calibrated on representative data
    report = export.to_tflite(
        student_q, tmp_path / "partial.tflite", "int8", representative_data=x_train
    )
    assert report.top1_agreement >= 0.9


@legacy_only
def test_quantization_aware_rejects_what_tfmot_cannot_take():
    class Tiny(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Sequential or Functional"):
        optimize.quantization_aware(Tiny())
    with pytest.raises(TypeError, match="`model` must be a tf_keras model"):
        optimize.quantization_aware("student")
    with pytest.raises(ValueError, match=r"`layers` names a layer .*Received: 'nope'"):
        optimize.quantization_aware(_mlp(4), layers=["nope"])


@legacy_only
def test_unsupported_layer_points_to_the_layers_argument(digits):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.LayerNormalization()(keras.layers.Dense(8)(x))
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    with pytest.raises(ValueError, match=r"(?s)not supported.*`layers=\[...\]`"):
        optimize.quantization_aware(model)
    student_q = optimize.quantization_aware(model, layers=[keras.layers.Dense])
    assert student_q.predict(digits[0][0][:2], verbose=0).shape == (2, 10)


@legacy_only
def test_distiller_sees_a_softmax_output_through_tfmot_wrappers():
    student_q = optimize.quantization_aware(_mlp(4, activation="softmax"))
    assert output_is_probabilities(student_q) == [True]
    student_p = optimize.prune(_mlp(4, activation="softmax"), 0.5, end_step=10)
    assert output_is_probabilities(student_p) == [True]
    assert output_is_probabilities(optimize.quantization_aware(_mlp(4))) == [False]


# ----------------------------------------------------------------------
# tf_keras flavour: pruning-aware distillation
# ----------------------------------------------------------------------


@legacy_only
@pytest.mark.parametrize("target, use_callbacks", [(0.5, True), (0.8, False)])
def test_pruning_aware_distillation_reaches_the_target_sparsity(
    teacher, trained_student, digits, tmp_path, target, use_callbacks
):
    (x_train, _), (x_test, y_test) = digits
    epochs = 3
    steps = epochs * int(np.ceil(len(x_train) / BATCH))
    student = trained_student
    original = [w.copy() for w in student.get_weights()]
    student_p = optimize.prune(student, target, end_step=steps)
    callbacks = optimize.pruning_callbacks() if use_callbacks else []
    _distill(teacher, student_p, digits, epochs, callbacks=callbacks)
    pruned = optimize.strip(student_p)
    kinds = {type(layer).__name__ for layer in pruned.layers}
    assert "PruneLowMagnitude" not in kinds
    for before, after in zip(original, student.get_weights()):
        np.testing.assert_array_equal(before, after)  # `student` is untouched
    kernels = {
        layer.name: layer.get_weights()[0]
        for layer in pruned.layers
        if isinstance(layer, keras.layers.Dense)
    }
    for name, kernel in kernels.items():  # each kernel, counted independently
        assert _zero_share(kernel) == pytest.approx(target, abs=0.01), name
    total = sum(k.size for k in kernels.values())
    zeros = sum(np.count_nonzero(k == 0) for k in kernels.values())
    assert optimize.sparsity(pruned) == pytest.approx(zeros / total)
    # through the wrappers too: `strip` masked the kernels they hold
    assert optimize.sparsity(student_p) == pytest.approx(zeros / total)

    dense_path, pruned_path = tmp_path / "dense.tflite", tmp_path / "pruned.tflite"
    export.to_tflite(student, dense_path, verify=False)
    report = export.to_tflite(pruned, pruned_path, verify_data=(x_test, y_test))
    assert report.max_abs_diff <= 1e-5
    dense_gz, pruned_gz = (
        optimize.gzipped_size(dense_path),
        optimize.gzipped_size(pruned_path),
    )
    assert pruned_gz < (1 - 0.5 * target) * dense_gz
    assert export.evaluate_tflite(pruned_path, (x_test, y_test)) > 0.8


@legacy_only
def test_pruning_summaries_need_tensorboard(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            optimize.pruning_callbacks(log_dir=str(tmp_path))
    else:
        callbacks = optimize.pruning_callbacks(log_dir=str(tmp_path))
        names = [type(c).__name__ for c in callbacks]
        assert names == ["UpdatePruningStep", "PruningSummaries"]


@legacy_only
def test_pruning_callbacks_reject_a_bad_log_dir():
    with pytest.raises(TypeError, match=r"`log_dir`.*Received: log_dir=3"):
        optimize.pruning_callbacks(log_dir=3)
    with pytest.raises(ValueError, match=r"`log_dir`.*Received: log_dir=''"):
        optimize.pruning_callbacks(log_dir="")


@legacy_only
def test_pruned_model_must_be_stripped_before_export(tmp_path):
    student_p = optimize.prune(_mlp(8), 0.5, end_step=10)
    with pytest.raises(ValueError, match=r"keras_kd.optimize.strip\(model\)"):
        export.to_tflite(student_p, tmp_path / "p.tflite")
    assert os.listdir(tmp_path) == []


@legacy_only
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"target_sparsity": 1.0},
            ValueError,
            r"`target_sparsity` must be in \[0.0, 1.0\)",
        ),
        ({"target_sparsity": "half"}, TypeError, r"`target_sparsity` must be a number"),
        (
            {"end_step": 0},
            ValueError,
            r"`end_step` must be an integer \(a training step\) of at least 1",
        ),
        # A wrong type is a TypeError, a wrong value a ValueError.
        ({"end_step": 10.0}, TypeError, r"`end_step` must be an integer"),
        ({"frequency": True}, TypeError, r"`frequency` must be an integer"),
        ({"target_sparsity": np.bool_(True)}, TypeError, r"must be a number"),
        ({"begin_step": -1}, ValueError, r"`begin_step`.*at least 0"),
        ({"layers": []}, ValueError, r"`layers` must be None or a non-empty"),
        ({"layers": 3}, TypeError, r"`layers` must be None or a non-empty"),
        (
            {"end_step": 100, "frequency": 30},
            ValueError,
            r"`frequency` must divide.*frequency=30",
        ),
        ({"initial_sparsity": 0.9}, ValueError, r"`initial_sparsity` must not exceed"),
        ({"layers": ["nope"]}, ValueError, r"`layers` names a layer"),
        ({"layers": [keras.layers.Conv2D]}, ValueError, r"selects no layer"),
    ],
)
def test_prune_rejects_bad_arguments(kwargs, error, message):
    arguments = {"target_sparsity": 0.5, "end_step": 100}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        optimize.prune(_mlp(4), **arguments)


def test_default_frequency_lands_on_end_step():
    for span in (1, 7, 63, 100, 1000, 4099):
        frequency = default_frequency(span)
        assert span % frequency == 0 and 1 <= frequency <= max(1, min(100, span // 10))
