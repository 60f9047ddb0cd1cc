"""Several teachers, class subsets and dict inputs (`keras_kd/_teaching.py`)."""

import os

import numpy as np
import pytest

import keras_kd as kd
from conftest import make_mlp, np_kl, np_log_softmax
from keras_kd.backend import keras, tf

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _evaluate(distiller, x, y, temperature=1.0, alpha=1.0):
    distiller.compile(
        "sgd",
        SCE,
        distillation_loss=kd.losses.KLDivergence(temperature=temperature),
        alpha=alpha,
    )
    return distiller.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True)


def _np_kl_to_probs(target_probs, student_logits, temperature):
    """T^2 * KL(target || softmax(s / T)), mean over samples (numpy)."""
    ls = np_log_softmax(np.asarray(student_logits) / temperature)
    lt = np.log(target_probs)
    return ((target_probs * (lt - ls)).sum(-1) * temperature**2).mean()


def _softmax(z):
    return np.exp(np_log_softmax(z))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_several_teachers_average_probabilities(data, temperature):
    x, y = data
    t1, t2, t3 = make_mlp(16), make_mlp(8), make_mlp(12, activation="softmax")
    student = make_mlp(4)
    weights = [1.0, 3.0, 2.0]
    d = kd.Distiller([t1, t2, t3], student, teacher_weights=weights)
    logs = _evaluate(d, x, y, temperature)
    z1, z2 = t1.predict(x, verbose=0), t2.predict(x, verbose=0)
    p3 = t3.predict(x, verbose=0).astype(np.float64)  # a softmax teacher
    soft = [_softmax(z1 / temperature), _softmax(z2 / temperature)]
    soft.append(_softmax(np.log(p3) / temperature))
    target = sum(w * p for w, p in zip(weights, soft)) / sum(weights)
    expected = _np_kl_to_probs(target, student.predict(x, verbose=0), temperature)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)
    # not the average of logits
    by_logits = np_kl((z1 + 3 * z2) / 4, student.predict(x, verbose=0), temperature)
    assert not np.isclose(logs["distillation_loss"], by_logits, rtol=1e-3)


def test_equal_weights_by_default_and_every_teacher_frozen(data):
    x, y = data
    t1, t2 = make_mlp(16), make_mlp(8)
    before = [w.copy() for w in t1.get_weights() + t2.get_weights()]
    student = make_mlp(4)
    d = kd.Distiller([t1, t2], student)
    logs = _evaluate(d, x, y)
    target = (
        _softmax(t1.predict(x, verbose=0)) + _softmax(t2.predict(x, verbose=0))
    ) / 2
    expected = _np_kl_to_probs(target, student.predict(x, verbose=0), 1.0)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)
    d.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(before, t1.get_weights() + t2.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert list(d.teacher) == [t1, t2]


def test_class_subset_renormalises_the_teachers_distribution(data):
    x, y = data
    teacher = make_mlp(16, n_out=6)
    student = make_mlp(4, n_out=3)
    indices = [5, 0, 2]
    d = kd.Distiller(teacher, student, class_indices=indices)
    logs = _evaluate(d, x, y, temperature=2.0)
    p = _softmax(teacher.predict(x, verbose=0) / 2.0)[:, indices]
    target = p / p.sum(-1, keepdims=True)
    expected = _np_kl_to_probs(target, student.predict(x, verbose=0), 2.0)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)


def test_class_subset_with_several_teachers(data):
    x, y = data
    t1, t2 = make_mlp(16, n_out=5), make_mlp(8, n_out=5)
    student = make_mlp(4, n_out=2)
    d = kd.Distiller([t1, t2], student, teacher_weights=[2, 1], class_indices=[3, 1])
    logs = _evaluate(d, x, y % 2, temperature=2.0)
    avg = (
        2 * _softmax(t1.predict(x, verbose=0) / 2)
        + _softmax(t2.predict(x, verbose=0) / 2)
    ) / 3
    target = avg[:, [3, 1]] / avg[:, [3, 1]].sum(-1, keepdims=True)
    expected = _np_kl_to_probs(target, student.predict(x, verbose=0), 2.0)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)


def _image_model(size, name):
    inputs = keras.Input((size, size, 1), name=f"{name}_in")
    h = keras.layers.Flatten()(inputs)
    return keras.Model(
        inputs, keras.layers.Dense(3)(keras.layers.Dense(8)(h)), name=name
    )


def test_dict_inputs_are_routed_to_each_model():
    rng = np.random.default_rng(0)
    x = {
        "image_hr": rng.random((32, 8, 8, 1)).astype("float32"),
        "image": rng.random((32, 4, 4, 1)).astype("float32"),
    }
    y = rng.integers(0, 3, 32)
    teacher, student = _image_model(8, "t"), _image_model(4, "s")
    d = kd.Distiller(
        teacher, student, teacher_inputs="image_hr", student_inputs="image"
    )
    logs = _evaluate(d, x, y, temperature=2.0, alpha=0.5)
    expected = np_kl(
        teacher.predict(x["image_hr"], verbose=0),
        student.predict(x["image"], verbose=0),
        2.0,
    )
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)
    history = d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    np.testing.assert_allclose(
        d.predict(x, verbose=0), student.predict(x["image"], verbose=0), rtol=1e-5
    )
    np.testing.assert_allclose(
        d.predict(x["image"], verbose=0),
        student.predict(x["image"], verbose=0),
        rtol=1e-5,
    )


def test_dict_routing_errors():
    rng = np.random.default_rng(0)
    teacher, student = _image_model(8, "t"), _image_model(4, "s")
    d = kd.Distiller(
        teacher, student, teacher_inputs="image_hr", student_inputs="image"
    )
    d.compile("sgd", SCE)
    with pytest.raises(ValueError, match="no entry 'image_hr'"):
        d.fit({"image": rng.random((8, 4, 4, 1))}, np.zeros(8), verbose=0)
    with pytest.raises(TypeError, match="teacher_inputs"):
        kd.Distiller(teacher, student, teacher_inputs=3)
    with pytest.raises(ValueError, match="augmentation"):
        kd.Distiller(
            teacher, student, teacher_inputs="a", augmentation=kd.augment.jitter(1)
        )


def test_routed_inputs_with_stored_teacher_outputs():
    rng = np.random.default_rng(0)
    x = {
        "image_hr": rng.random((8, 8, 8, 1)).astype("float32"),
        "image": rng.random((8, 4, 4, 1)).astype("float32"),
    }
    y = rng.integers(0, 3, 8)
    teacher, student = _image_model(8, "t"), _image_model(4, "s")

    def cached(outputs):
        batch = kd.data.TeacherBatch(x, y, outputs, ())
        return tf.data.Dataset.from_tensor_slices(batch).batch(4)

    d = kd.Distiller(
        teacher, student, teacher_inputs="image_hr", student_inputs="image"
    )
    live = _evaluate(d, x, y, temperature=2.0, alpha=0.5)
    # The teacher's outputs on its own entry, stored: the same losses.
    stored = d.evaluate(
        cached(teacher.predict(x["image_hr"], verbose=0)), return_dict=True, verbose=0
    )
    for key in ("loss", "distillation_loss", "hard_loss"):
        np.testing.assert_allclose(stored[key], live[key], rtol=1e-5)
    # Outputs of another input (here: the teacher on zeros) are refused.
    stale = teacher.predict(np.zeros_like(x["image_hr"]), verbose=0)
    with pytest.raises(ValueError, match="not those of the Distiller's teacher"):
        d.fit(cached(stale), verbose=0)


def test_round_trip_with_teachers_subset_and_routing(data, tmp_path):
    x, y = data
    d = kd.Distiller(
        [make_mlp(16, n_out=4), make_mlp(8, n_out=4)],
        make_mlp(4, n_out=2),
        teacher_weights=[1, 2],
        class_indices=[3, 0],
    )
    _evaluate(d, x, y % 2, temperature=2.0)
    path = os.fspath(tmp_path / "d.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    config = loaded.get_config()
    assert config["teacher_weights"] == [1.0, 2.0] and config["class_indices"] == [3, 0]
    assert len(loaded.teacher) == 2
    a = d.evaluate(x, y % 2, batch_size=64, verbose=0, return_dict=True)
    b = loaded.evaluate(x, y % 2, batch_size=64, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        b["distillation_loss"], a["distillation_loss"], rtol=1e-5
    )


def test_errors_before_training(data):
    t, s = make_mlp(16), make_mlp(4)
    with pytest.raises(ValueError, match="teacher_weights"):
        kd.Distiller([t, make_mlp(8)], s, teacher_weights=[1.0])
    with pytest.raises(ValueError, match="teacher_weights"):
        kd.Distiller([t, make_mlp(8)], s, teacher_weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="more than once"):
        kd.Distiller([t, t], s)
    with pytest.raises(ValueError, match="non-empty"):
        kd.Distiller([], s)
    with pytest.raises(ValueError, match="different models"):
        kd.Distiller([t, s], s)
    with pytest.raises(ValueError, match="lists 2 classes but the student"):
        kd.Distiller(make_mlp(8, n_out=5), s, class_indices=[0, 1])
    with pytest.raises(ValueError, match="has 5 classes"):
        kd.Distiller(make_mlp(8, n_out=5), s, class_indices=[0, 1, 7])
    with pytest.raises(ValueError, match="distinct"):
        kd.Distiller(make_mlp(8, n_out=5), s, class_indices=[1, 1, 2])
    with pytest.raises(TypeError, match="class_indices"):
        kd.Distiller(make_mlp(8, n_out=5), s, class_indices="012")
    with pytest.raises(ValueError, match="Online distillation"):
        kd.OnlineDistiller([t, make_mlp(8)], s)


# --- teacher_classes: a teacher of fewer classes (continual updates) -------


@pytest.mark.parametrize("student_activation", [None, "softmax"])
def test_teacher_classes_restrict_the_students_outputs(data, student_activation):
    x, y = data
    teacher = make_mlp(16, n_out=3)
    student = make_mlp(4, n_out=6, activation=student_activation)
    classes = [4, 0, 2]  # the teacher's classes 0, 1, 2 are the student's 4, 0, 2
    d = kd.Distiller(teacher, student, teacher_classes=classes)
    logs = _evaluate(d, x, y, temperature=2.0, alpha=0.5)
    target = _softmax(teacher.predict(x, verbose=0) / 2.0)
    s = student.predict(x, verbose=0).astype(np.float64)
    if student_activation == "softmax":
        s = np.log(s)  # log-probabilities renormalise like logits
    expected = _np_kl_to_probs(target, s[:, classes], 2.0)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)
    # The hard loss still covers all 6 classes of the student.
    hard = SCE(y, student.predict(x, verbose=0)) if student_activation is None else None
    if hard is not None:
        np.testing.assert_allclose(logs["hard_loss"], float(hard), rtol=1e-4)


def test_teacher_classes_train_and_round_trip(data, tmp_path):
    x, y = data
    teacher, student = make_mlp(16, n_out=2), make_mlp(4, n_out=3)
    before = [w.copy() for w in teacher.get_weights()]
    d = kd.Distiller(teacher, student, teacher_classes=[0, 1])
    _evaluate(d, x, y, temperature=2.0, alpha=0.5)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)  # the old model stays frozen
    path = os.fspath(tmp_path / "lwf.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config()["teacher_classes"] == [0, 1]
    a = d.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    b = loaded.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        b["distillation_loss"], a["distillation_loss"], rtol=1e-5
    )


def test_teacher_classes_errors_name_the_argument(data):
    t, s = make_mlp(8, n_out=2), make_mlp(4, n_out=3)
    with pytest.raises(ValueError, match=r"`teacher_classes` has index 3, but the st"):
        kd.Distiller(t, s, teacher_classes=[0, 3])
    with pytest.raises(ValueError, match=r"`teacher_classes` lists 3 classes but"):
        kd.Distiller(t, s, teacher_classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"`teacher_classes` lists 1 classes but"):
        kd.Distiller(t, s, teacher_classes=[0])
    with pytest.raises(ValueError, match="distinct"):
        kd.Distiller(t, s, teacher_classes=[1, 1])
    with pytest.raises(ValueError, match="teacher_classes"):
        kd.Distiller(t, s, teacher_classes=[-1, 0])
    with pytest.raises(TypeError, match="teacher_classes"):
        kd.Distiller(t, s, teacher_classes="01")
    with pytest.raises(ValueError, match="excludes `class_indices`"):
        kd.Distiller(
            t, make_mlp(4, n_out=2), teacher_classes=[0, 1], class_indices=[1, 0]
        )
    with pytest.raises(ValueError, match="Online distillation"):
        kd.OnlineDistiller(t, s, teacher_classes=[0, 1])
    x, y = data
    d = kd.Distiller(t, s, teacher_classes=[0, 1])
    d.compile("sgd", SCE, distillation_loss=kd.losses.DecoupledKD(), alpha=0.5)
    with pytest.raises(ValueError, match="`teacher_classes` does not support"):
        d.fit(x, y, epochs=1, verbose=0)
