"""The Distiller as a Keras model: construction, mixed precision, predict on
stored teacher outputs, and the optimizer state a saved file carries."""

import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from conftest import hard_loss, make_mlp, trained_teacher
from keras_kd.backend import keras


def test_train_teacher_true_names_the_online_distiller():
    with pytest.raises(ValueError, match=r"kd\.OnlineDistiller.*train_teacher=True"):
        kd.Distiller(make_mlp(8), make_mlp(4), train_teacher=True)
    with pytest.raises(TypeError, match="train_teacher"):
        kd.Distiller(make_mlp(8), make_mlp(4), train_teacher="yes")
    plain = kd.Distiller(make_mlp(8), make_mlp(4), train_teacher=False)
    assert type(plain) is kd.Distiller and not plain.train_teacher
    online = kd.OnlineDistiller(make_mlp(8), make_mlp(4))
    assert isinstance(online, kd.Distiller) and online.train_teacher


# --- a student computing in float16 ------------------------------------------


def _float16_student():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return make_mlp(4, name="student")
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _tiny_loss(y_true, y_pred):
    # Small enough that its gradient, flowing back through the student's
    # float16 layers, underflows to zero unless the loss is scaled first.
    scce = keras.losses.sparse_categorical_crossentropy(
        y_true, tf.cast(y_pred, tf.float32), from_logits=True
    )
    return 1e-7 * scce


def _one_step(distiller, x, y):
    before = [np.array(w) for w in distiller.student.get_weights()]
    distiller.train_on_batch(x, y)
    after = distiller.student.get_weights()
    return max(float(np.abs(a - b).max()) for a, b in zip(after, before))


def test_a_float16_student_gets_its_loss_scaled(data):
    x, y = data
    student = _float16_student()
    assert keras.mixed_precision.global_policy().name == "float32"
    d = kd.Distiller(make_mlp(8, name="teacher"), student)
    d.compile(optimizer=keras.optimizers.SGD(1e3), loss=_tiny_loss, alpha=0.0)
    assert isinstance(d.optimizer, keras.mixed_precision.LossScaleOptimizer)
    moved = _one_step(d, x[:16], y[:16])
    assert moved > 0, "the scaled gradient should survive float16"

    # The control: the same step without loss scaling loses the gradient.
    control = kd.Distiller(make_mlp(8, name="teacher"), _float16_student())
    control.compile(optimizer=keras.optimizers.SGD(1e3), loss=_tiny_loss, alpha=0.0)
    control.optimizer = keras.optimizers.SGD(1e3)
    assert _one_step(control, x[:16], y[:16]) == 0.0


def test_a_float32_student_keeps_the_optimizer_it_was_given():
    d = kd.Distiller(make_mlp(8), make_mlp(4))
    sgd = keras.optimizers.SGD(0.1)
    d.compile(optimizer=sgd, loss=hard_loss())
    assert d.optimizer is sgd


# --- predict on stored teacher outputs ----------------------------------------


def test_predict_on_a_teacher_batch_dataset_predicts_from_its_inputs(data):
    x, y = data
    teacher = make_mlp(8, name="teacher")
    d = kd.Distiller(teacher, make_mlp(4, name="student"))
    d.compile(optimizer="sgd", loss=hard_loss())
    stored = kd.data.with_teacher_outputs(teacher, (x, y)).batch(16)
    got = d.predict(stored, verbose=0)
    np.testing.assert_allclose(got, d.student.predict(x, verbose=0), rtol=1e-6)
    inputs_only = kd.data.with_teacher_outputs(teacher, x).batch(16)
    np.testing.assert_allclose(d.predict(inputs_only, verbose=0), got, rtol=1e-6)


# --- the optimizer state of a saved Distiller ----------------------------------


def _adam_distiller(x, y):
    keras.utils.set_random_seed(3)
    teacher = trained_teacher(x, y)  # compiled and fitted with its own Adam
    d = kd.Distiller(teacher, make_mlp(4, name="student"))
    d.compile(optimizer=keras.optimizers.Adam(0.01), loss=hard_loss())
    return d


def test_a_reloaded_distiller_keeps_its_optimizer_state(data, tmp_path):
    x, y = data
    path = str(tmp_path / "distiller.keras")
    d = _adam_distiller(x, y)
    checkpoint = keras.callbacks.ModelCheckpoint(path)
    d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[checkpoint])
    restored = keras.saving.load_model(path)

    # The same slots (Adam's moments of every student weight), same values.
    assert len(d.optimizer.variables) > 2
    assert len(restored.optimizer.variables) == len(d.optimizer.variables)
    for a, b in zip(d.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(restored.optimizer.iterations) == int(d.optimizer.iterations) == 8

    # The same next step as the uninterrupted model: Adam's moments carried
    # on (a restart from zero moments would move the weights differently).
    start = restored.student.get_weights()
    d.train_on_batch(x[:16], y[:16])
    restored.train_on_batch(x[:16], y[:16])
    for a, b in zip(d.student.get_weights(), restored.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    restarted = _adam_distiller(x, y)
    restarted.student.set_weights(start)
    restarted.train_on_batch(x[:16], y[:16])
    assert not np.allclose(
        restarted.student.get_weights()[0], restored.student.get_weights()[0]
    )
