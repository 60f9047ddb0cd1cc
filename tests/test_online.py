import numpy as np
import pytest

import keras_kd as kd
from keras_kd.backend import keras

from conftest import make_mlp, np_kl, np_log_softmax


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def twins(hidden, name):
    a = make_mlp(hidden, name=name + "_a")
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    return a, b


def test_online_teacher_with_teacher_alpha_zero_learns_like_plain_fit(data):
    x, y = data
    teacher, teacher_twin = twins(16, "teacher")
    d = kd.Distiller(teacher=teacher, student=make_mlp(4), train_teacher=True)
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=0.7)
    history = d.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    teacher_twin.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss())
    plain = teacher_twin.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(teacher.get_weights(), teacher_twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert history.history["teacher_loss"] == pytest.approx(plain.history["loss"], rel=1e-5)
    assert teacher.trainable


def test_online_student_learns_from_the_teachers_current_outputs(data):
    x, y = data
    teacher = make_mlp(16, name="teacher")
    d = kd.Distiller(teacher=teacher, student=make_mlp(4), train_teacher=True,
                     teacher_alpha=0.5)
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(),
              distillation_loss=kd.losses.KLDivergence(2.0), alpha=0.5)
    student_before = [w.copy() for w in d.student.get_weights()]
    teacher_before = [w.copy() for w in teacher.get_weights()]
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(student_before, d.student.get_weights()))
    assert any(not np.allclose(a, b) for a, b in zip(teacher_before, teacher.get_weights()))
    # evaluation measures the distillation term against the teacher as it is now
    logs = d.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    t, s = teacher.predict(x, verbose=0), d.student.predict(x, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(np_kl(t, s, 2.0), rel=1e-4)


def test_online_needs_a_teacher_and_a_hard_loss():
    with pytest.raises(ValueError, match="train_teacher"):
        kd.Distiller(teacher=None, student=make_mlp(4), train_teacher=True)
    with pytest.raises(TypeError, match="train_teacher"):
        kd.Distiller(teacher=make_mlp(8), student=make_mlp(4), train_teacher="yes")
    with pytest.raises(ValueError, match="teacher_alpha"):
        kd.Distiller(teacher=make_mlp(8), student=make_mlp(4), train_teacher=True,
                     teacher_alpha=2.0)
    d = kd.Distiller(teacher=make_mlp(8), student=make_mlp(4), train_teacher=True)
    with pytest.raises(ValueError, match="`loss`.*train_teacher"):
        d.compile(optimizer="adam", loss=None, alpha=1.0)


def cohort(n=2, temperature=1.0, alpha=0.5, lr=0.05):
    peers = [make_mlp(8, name=f"peer{i}") for i in range(n)]
    m = kd.MutualLearning(peers)
    m.compile(optimizer=keras.optimizers.Adam(lr), loss=hard_loss(), metrics=["accuracy"],
              temperature=temperature, alpha=alpha)
    return m, peers


def test_mutual_learning_updates_every_peer_with_its_own_optimizer(data):
    x, y = data
    m, peers = cohort(3)
    before = [[w.copy() for w in p.get_weights()] for p in peers]
    history = m.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0)
    for peer, old in zip(peers, before):
        assert any(not np.allclose(a, b) for a, b in zip(old, peer.get_weights()))
    optimizers = m.peer_optimizers
    assert len({id(o) for o in optimizers}) == 3
    assert [int(o.iterations.numpy()) for o in optimizers] == [6, 6, 6]
    for key in ("loss", "accuracy", "peer_0_accuracy", "peer_2_loss", "val_peer_1_accuracy"):
        assert key in history.history


def test_mutual_learning_loss_matches_numpy(data):
    x, y = data
    m, peers = cohort(3, temperature=3.0, alpha=0.4)
    logs = m.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    z = [p.predict(x, verbose=0) for p in peers]
    T = 3.0
    for i in range(3):
        others = [np.exp(np_log_softmax(z[j] / T)) for j in range(3) if j != i]
        target_logits = np.log(np.mean(others, axis=0))  # log of the mean peer prediction
        kl = np_kl(target_logits, z[i] / T, 1.0) * T**2
        ce = np.mean(-np_log_softmax(z[i])[np.arange(len(y)), y])
        assert logs[f"peer_{i}_loss"] == pytest.approx(0.4 * kl + 0.6 * ce, rel=1e-4)
        acc = np.mean(np.argmax(z[i], -1) == y)
        assert logs[f"peer_{i}_accuracy"] == pytest.approx(acc)


def test_mutual_learning_peer_saves_as_plain_keras_model(data, tmp_path):
    x, y = data
    m, peers = cohort(2)
    m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "peer1.keras")
    m.peers[1].save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), peers[1].predict(x, verbose=0),
                               rtol=1e-6)
    np.testing.assert_allclose(m.predict(x, verbose=0), peers[0].predict(x, verbose=0), rtol=1e-6)


def test_mutual_learning_rejects_bad_cohorts():
    with pytest.raises(ValueError, match="at least two"):
        kd.MutualLearning([make_mlp(4)])
    model = make_mlp(4)
    with pytest.raises(ValueError, match="different models"):
        kd.MutualLearning([model, model])
    with pytest.raises(TypeError, match=r"`peers\[1\]`"):
        kd.MutualLearning([make_mlp(4), "model"])
    m = kd.MutualLearning([make_mlp(4), make_mlp(4)])
    with pytest.raises(ValueError, match="`loss`"):
        m.compile(optimizer="adam", loss=None)
    with pytest.raises(ValueError, match="`alpha`"):
        m.compile(optimizer="adam", loss=hard_loss(), alpha=-1)
