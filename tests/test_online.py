import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from conftest import (
    assert_behaves_as_saved,
    hard_loss,
    make_mlp,
    np_dkd,
    np_kl,
    np_log_softmax,
    saved_model,
    twins,
)
from keras_kd.backend import keras


def test_online_teacher_with_teacher_alpha_zero_learns_like_plain_fit(data):
    x, y = data
    teacher, teacher_twin = twins(16, "teacher")
    d = kd.OnlineDistiller(teacher=teacher, student=make_mlp(4))
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=0.7)
    history = d.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    teacher_twin.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss())
    plain = teacher_twin.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(teacher.get_weights(), teacher_twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert history.history["teacher_loss"] == pytest.approx(
        plain.history["loss"], rel=1e-5
    )
    assert teacher.trainable


def test_online_student_learns_from_the_teachers_current_outputs(data):
    x, y = data
    teacher = make_mlp(16, name="teacher")
    d = kd.OnlineDistiller(teacher=teacher, student=make_mlp(4), teacher_alpha=0.5)
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(2.0),
        alpha=0.5,
    )
    student_before = [w.copy() for w in d.student.get_weights()]
    teacher_before = [w.copy() for w in teacher.get_weights()]
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert any(
        not np.allclose(a, b) for a, b in zip(student_before, d.student.get_weights())
    )
    assert any(
        not np.allclose(a, b) for a, b in zip(teacher_before, teacher.get_weights())
    )
    # evaluation measures the distillation term against the teacher as it is now
    logs = d.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    t, s = teacher.predict(x, verbose=0), d.student.predict(x, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(np_kl(t, s, 2.0), rel=1e-4)


def test_online_distiller_takes_the_distillers_online_arguments():
    teacher, student = make_mlp(8), make_mlp(4)
    d = kd.OnlineDistiller(teacher, student, True, 0.25, name="both")
    assert type(d) is kd.OnlineDistiller and isinstance(d, kd.Distiller)
    assert d.teacher is teacher and d.student is student and d.name == "both"
    assert d.train_teacher and d.teacher_alpha == 0.25 and teacher.trainable
    with pytest.raises(ValueError, match="always trains its teacher"):
        kd.OnlineDistiller(make_mlp(8), make_mlp(4), train_teacher=False)


def test_online_teacher_learns_towards_the_student_with_teacher_alpha(data):
    # One step, checked against a hand-written tape over both models: the
    # student's loss as in the offline Distiller, the teacher's
    # teacher_alpha * KL(student || teacher) + (1 - teacher_alpha) * CE.
    x, y = data
    (teacher, teacher_ref), (student, student_ref) = twins(16, "t"), twins(4, "s")
    d = kd.OnlineDistiller(teacher, student, teacher_alpha=0.4)
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(2.0),
        alpha=0.7,
    )
    logs = d.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    t = teacher_ref(x, training=True).numpy()
    s = student_ref(x, training=True).numpy()

    def ce(z):
        return np.mean(-np_log_softmax(z)[np.arange(len(y)), y])

    assert logs["teacher_loss"][0] == pytest.approx(
        0.4 * np_kl(s, t, 2.0) + 0.6 * ce(t), rel=1e-4
    )
    assert logs["loss"][0] == pytest.approx(
        0.7 * np_kl(t, s, 2.0) + 0.3 * ce(s), rel=1e-4
    )
    with tf.GradientTape() as tape:
        t_out, s_out = teacher_ref(x, training=True), student_ref(x, training=True)
        kl = kd.losses.KLDivergence(2.0)
        student_loss = 0.7 * kl(tf.stop_gradient(t_out), s_out) + 0.3 * hard_loss()(
            y, s_out
        )
        teacher_loss = 0.4 * kl(tf.stop_gradient(s_out), t_out) + 0.6 * hard_loss()(
            y, t_out
        )
        total = student_loss + teacher_loss
    variables = teacher_ref.trainable_variables + student_ref.trainable_variables
    keras.optimizers.SGD(0.1).apply_gradients(
        zip(tape.gradient(total, variables), variables)
    )
    for a, b in zip(
        teacher.get_weights() + student.get_weights(),
        teacher_ref.get_weights() + student_ref.get_weights(),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_online_softmax_teacher_learning_from_a_logits_student(data):
    # In the teacher's term the student's outputs are the targets: each side
    # keeps its own softmax detection (logits stay logits).
    x, y = data
    teacher = make_mlp(16, activation="softmax", name="teacher")
    d = kd.OnlineDistiller(teacher, make_mlp(4), teacher_alpha=1.0)
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(2.0),
        alpha=1.0,
    )
    p_t = teacher(x, training=True).numpy()
    s = d.student(x, training=True).numpy()
    logs = d.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    log_p_t = np.log(np.clip(p_t, 1e-7, 1.0))
    assert logs["teacher_loss"][0] == pytest.approx(np_kl(s, log_p_t, 2.0), rel=1e-4)
    assert logs["loss"][0] == pytest.approx(np_kl(log_p_t, s, 2.0), rel=1e-4)


def test_online_distiller_saved_by_keras_kd_0_1_loads_and_behaves_the_same():
    # keras-kd 0.1 saved it as a "Distiller" with `train_teacher: True`.
    d, reference = saved_model("online_distiller")
    assert type(d) is kd.OnlineDistiller and d.teacher.trainable
    assert d.teacher_alpha == 0.5 and d.alpha == pytest.approx(0.6)
    assert_behaves_as_saved(d, reference, {"teacher": d.teacher, "student": d.student})


def test_online_distiller_round_trips_through_a_keras_file(data, tmp_path):
    x, y = data
    d = kd.OnlineDistiller(make_mlp(8), make_mlp(4), teacher_alpha=0.3)
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=0.6)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "online.keras")
    d.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is kd.OnlineDistiller
    assert restored.teacher_alpha == 0.3 and restored.alpha == pytest.approx(0.6)
    for a, b in zip(d.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
    a = d.train_on_batch(x[:16], y[:16], return_dict=True)
    b = restored.train_on_batch(x[:16], y[:16], return_dict=True)
    assert set(a) == set(b) and "teacher_loss" in a
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    for w1, w2 in zip(d.teacher.get_weights(), restored.teacher.get_weights()):
        np.testing.assert_allclose(w1, w2, rtol=1e-6)


def test_online_needs_a_teacher_and_a_hard_loss():
    with pytest.raises(ValueError, match="needs a teacher.*teacher=None"):
        kd.OnlineDistiller(teacher=None, student=make_mlp(4))
    with pytest.raises(TypeError, match="train_teacher"):
        kd.OnlineDistiller(make_mlp(8), make_mlp(4), train_teacher="yes")
    with pytest.raises(ValueError, match="teacher_alpha"):
        kd.OnlineDistiller(make_mlp(8), make_mlp(4), teacher_alpha=2.0)
    d = kd.OnlineDistiller(teacher=make_mlp(8), student=make_mlp(4))
    with pytest.raises(ValueError, match="`loss`.*train_teacher"):
        d.compile(optimizer="adam", loss=None, alpha=1.0)


def cohort(n=2, temperature=1.0, alpha=0.5, lr=0.05):
    peers = [make_mlp(8, name=f"peer{i}") for i in range(n)]
    m = kd.MutualLearning(peers)
    m.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=hard_loss(),
        metrics=["accuracy"],
        temperature=temperature,
        alpha=alpha,
    )
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
    for key in (
        "loss",
        "accuracy",
        "peer_0_accuracy",
        "peer_2_loss",
        "val_peer_1_accuracy",
    ):
        assert key in history.history


def test_mutual_learning_loss_matches_numpy(data):
    x, y = data
    m, peers = cohort(3, temperature=3.0, alpha=0.4)
    logs = m.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    z = [p.predict(x, verbose=0) for p in peers]
    T = 3.0
    for i in range(3):
        others = [np.exp(np_log_softmax(z[j] / T)) for j in range(3) if j != i]
        target_logits = np.log(
            np.mean(others, axis=0)
        )  # log of the mean peer prediction
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
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), peers[1].predict(x, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        m.predict(x, verbose=0), peers[0].predict(x, verbose=0), rtol=1e-6
    )


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


def test_mutual_learning_round_trips_through_a_keras_file(data, tmp_path):
    x, y = data
    m, peers = cohort(3, temperature=2.5, alpha=0.3)
    m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "cohort.keras")
    m.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is kd.MutualLearning and len(restored.peers) == 3
    assert restored.temperature == 2.5 and restored.alpha == pytest.approx(0.3)
    np.testing.assert_array_equal(
        restored.predict(x, verbose=0), m.predict(x, verbose=0)
    )
    for peer, again in zip(peers, restored.peers):
        for a, b in zip(peer.get_weights(), again.get_weights()):
            np.testing.assert_array_equal(a, b)
    for mine, theirs in zip(m.peer_optimizers, restored.peer_optimizers):
        assert theirs is not restored.peer_optimizers[0] or mine is m.optimizer
        assert len(mine.variables) == len(theirs.variables)
        for a, b in zip(mine.variables, theirs.variables):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    a = m.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    b = restored.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert set(a) == set(b) and "peer_2_accuracy" in b
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    restored.fit(x, y, epochs=1, batch_size=16, verbose=0)


def test_mutual_learning_keeps_its_import_paths_and_registered_name():
    import keras_kd.mutual
    import keras_kd.online

    assert keras_kd.online.MutualLearning is keras_kd.mutual.MutualLearning
    assert kd.MutualLearning is keras_kd.mutual.MutualLearning
    for cls in (kd.MutualLearning, kd.OnlineDistiller):
        name = f"keras_kd>{cls.__name__}"
        assert keras.saving.get_registered_name(cls) == name
        assert keras.saving.get_registered_object(name) is cls


def test_mutual_learning_saved_by_keras_kd_0_1_still_loads():
    # Saved when the class lived in keras_kd.online (it is in keras_kd.mutual
    # now): found by its registered name.
    m, reference = saved_model("mutual_learning")
    assert type(m) is kd.MutualLearning
    assert_behaves_as_saved(
        m, reference, {f"peer{i}": p for i, p in enumerate(m.peers)}
    )


def test_online_teacher_term_gives_labels_to_decoupled_kd(data):
    x, y = data
    teacher, student = make_mlp(16, name="t"), make_mlp(4, name="s")
    t = teacher(x, training=False).numpy()
    s = student(x, training=False).numpy()
    d = kd.OnlineDistiller(teacher=teacher, student=student, teacher_alpha=1.0)
    d.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=hard_loss(),
        distillation_loss=kd.losses.DecoupledKD(temperature=2.0),
        alpha=1.0,
    )
    logs = d.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    # The teacher learns towards the student with the true labels, not with
    # the student's top class standing in for them.
    expected = np_dkd(s, t, y, temperature=2.0)
    assert logs["teacher_loss"][0] == pytest.approx(expected, rel=1e-4)
    stand_in = np_dkd(s, t, s.argmax(-1), temperature=2.0)
    assert abs(expected - stand_in) > 1e-3
