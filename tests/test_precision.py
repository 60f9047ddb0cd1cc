"""A teacher at a lower precision than the student (`teacher_dtype=`)."""

import io

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp, np_kl
from keras_kd import _precision
from keras_kd.backend import keras, tf

TEMPERATURE = 2.0


def _nested_teacher():
    inner = keras.Sequential(
        [keras.layers.Dense(16, activation="relu"), keras.layers.BatchNormalization()],
        name="inner",
    )
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(3, name="logits")(inner(inputs))
    return keras.Model(inputs, outputs, name="teacher")


def _distiller(teacher, student, **kwargs):
    distiller = kd.Distiller(teacher=teacher, student=student, **kwargs)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(temperature=TEMPERATURE),
        alpha=1.0,
    )
    return distiller


def _float_dtypes(model):
    return {
        tf.as_dtype(v.dtype).name
        for v in model.weights
        if tf.as_dtype(v.dtype).is_floating
    }


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_copy_computes_in_dtype_and_leaves_the_teacher_alone(data, dtype):
    x, _ = data
    teacher = _nested_teacher()
    before = [w.copy() for w in teacher.get_weights()]
    reference = teacher(x, training=False).numpy()

    copy = _precision.teacher_copy(teacher, dtype)
    output = copy(x, training=False)

    assert tf.as_dtype(output.dtype).name == dtype
    assert dtype in _float_dtypes(copy)  # weights stored in the dtype
    assert not copy.trainable
    # The copy's weights are the teacher's, rounded to the dtype.
    for ours, theirs in zip(copy.get_weights(), teacher.get_weights()):
        rounded = tf.cast(tf.cast(theirs, ours.dtype), tf.float32).numpy()
        np.testing.assert_array_equal(np.asarray(ours, np.float32), rounded)
    # Outputs agree with float32 to the dtype's precision (8 bits of
    # mantissa for bfloat16, 11 for float16), and are not float32's.
    eps = {"bfloat16": 2.0**-8, "float16": 2.0**-11}[dtype]
    got = _precision.to_float32(output).numpy()
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() <= 16 * eps * scale
    assert np.abs(got - reference).max() > 0
    # The teacher is untouched: float32, same weights, same outputs.
    assert _float_dtypes(teacher) == {"float32"}
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(teacher(x, training=False).numpy(), reference)


def test_distiller_learns_from_the_lower_precision_teacher(data):
    x, y = data
    teacher = make_mlp(16, name="teacher")
    student = make_mlp(4, name="student")
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = _distiller(teacher, student, teacher_dtype="bfloat16")

    logs = distiller.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)

    # Numpy reference from the bfloat16 copy's outputs (cast to float32).
    copy = _precision.teacher_copy(teacher, "bfloat16")
    soft = _precision.to_float32(copy(x, training=False)).numpy()
    student_logits = student(x, training=False).numpy()
    expected = np_kl(soft, student_logits, TEMPERATURE)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    # ... which is not the float32 teacher's figure.
    full = np_kl(teacher(x, training=False).numpy(), student_logits, TEMPERATURE)
    assert abs(full - expected) > 1e-5 * abs(expected)

    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    for a, b in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)  # frozen, and still float32
    assert _float_dtypes(student) == {"float32"}


def test_feature_taps_read_the_copy_in_float32(data):
    x, y = data
    teacher = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="t_hidden"),
            keras.layers.Dense(3, name="t_logits"),
        ],
        name="teacher",
    )
    student = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(4, activation="relu", name="s_hidden"),
            keras.layers.Dense(3, name="s_logits"),
        ],
        name="student",
    )
    distiller = _distiller(
        teacher,
        student,
        features=[kd.FeatureMatch("t_hidden", "s_hidden")],
        teacher_dtype="bfloat16",
    )
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["feature_loss"][0])
    assert history.history["feature_loss"][0] > 0
    _, features = distiller._teacher_forward(tf.constant(x))
    assert [tf.as_dtype(f.dtype).name for f in features] == ["float32"]
    # The tapped values are the copy's, not the float32 teacher's.
    hidden = keras.Model(teacher.inputs, teacher.get_layer("t_hidden").output)
    assert np.abs(features[0].numpy() - hidden(x).numpy()).max() > 0


def test_saved_and_reloaded_with_its_teacher_dtype(data, tmp_path):
    x, y = data
    distiller = _distiller(
        make_mlp(16, name="teacher"),
        make_mlp(4, name="student"),
        teacher_dtype="bfloat16",
    )
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert distiller.get_config()["teacher_dtype"] == "bfloat16"
    assert (
        "teacher_dtype"
        not in kd.Distiller(teacher=make_mlp(16), student=make_mlp(4)).get_config()
    )
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    plain = kd.Distiller(teacher=distiller.teacher, student=distiller.student)
    plain.save(str(tmp_path / "plain.keras"))
    # The bfloat16 copy's weights are not saved beside the teacher's.
    assert _saved_arrays(path) == _saved_arrays(str(tmp_path / "plain.keras"))
    loaded = keras.models.load_model(path)
    assert loaded._teacher_dtype == "bfloat16"
    # The saved teacher is the float32 one; the reload runs a bfloat16 copy.
    assert _float_dtypes(loaded.teacher) == {"float32"}
    assert "bfloat16" in _float_dtypes(loaded._teacher_runners.models[0])
    ours = distiller.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    theirs = loaded.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    np.testing.assert_allclose(
        theirs["distillation_loss"], ours["distillation_loss"], rtol=1e-5
    )


def _saved_arrays(path):
    """The shapes and dtypes of a `.keras` file's weights (not the optimizer's)."""
    import zipfile

    import h5py

    found = []
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as f:
        with h5py.File(io.BytesIO(f.read()), "r") as h5:
            h5.visititems(
                lambda name, item: (
                    found.append((item.shape, str(item.dtype)))
                    if isinstance(item, h5py.Dataset) and "optimizer" not in name
                    else None
                )
            )
    return sorted(found)


def test_the_copy_follows_the_teachers_weights(data):
    x, y = data
    teacher = make_mlp(16, name="teacher")
    distiller = _distiller(teacher, make_mlp(4), teacher_dtype="bfloat16")
    teacher.set_weights([w * 2.0 for w in teacher.get_weights()])
    logs = distiller.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    soft = _precision.to_float32(
        _precision.teacher_copy(teacher, "bfloat16")(x, training=False)
    ).numpy()
    expected = np_kl(soft, distiller.student(x).numpy(), TEMPERATURE)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)


def test_replace_teacher_keeps_the_precision(data):
    x, y = data
    distiller = _distiller(
        make_mlp(16, name="teacher"), make_mlp(4), teacher_dtype="bfloat16"
    )
    new = make_mlp(8, name="new_teacher")
    distiller.replace_teacher(new)
    (runner,) = distiller._teacher_runners.models
    assert runner is not new and "bfloat16" in _float_dtypes(runner)
    logs = distiller.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    soft = _precision.to_float32(runner(x, training=False)).numpy()
    expected = np_kl(soft, distiller.student(x).numpy(), TEMPERATURE)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("value", ["int8", "float64", 16, "mixed_bfloat16"])
def test_bad_teacher_dtype(value):
    with pytest.raises(ValueError, match=r"teacher_dtype=.*(int8|float64|16|mixed)"):
        kd.Distiller(teacher=make_mlp(16), student=make_mlp(4), teacher_dtype=value)


def test_refused_for_a_subclassed_or_trained_teacher():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    teacher = Subclassed()
    teacher(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match="subclassed teacher.*Subclassed"):
        kd.Distiller(teacher=teacher, student=make_mlp(4), teacher_dtype="bfloat16")
    with pytest.raises(ValueError, match="trains its teacher.*teacher_dtype"):
        kd.OnlineDistiller(
            teacher=make_mlp(16), student=make_mlp(4), teacher_dtype="bfloat16"
        )
