import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from conftest import (
    assert_behaves_as_saved,
    hard_loss,
    keras3_only,
    make_mlp,
    np_dist,
    np_dkd,
    np_kl,
    np_log_softmax,
    np_standardize,
    saved_model,
    trained_teacher,
    twins,
    two_output_model,
)
from keras_kd import backend
from keras_kd.backend import keras

SCCE = "sparse_categorical_crossentropy"


def distiller_for(x, y, alpha=0.5, temperature=2.0, **compile_kwargs):
    d = kd.Distiller(teacher=trained_teacher(x, y), student=make_mlp(4, name="student"))
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=hard_loss(),
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(temperature),
        alpha=alpha,
        **compile_kwargs,
    )
    return d


def test_history_has_total_hard_and_distillation_loss_for_train_and_validation(data):
    x, y = data
    d = distiller_for(x, y)
    history = d.fit(x, y, validation_split=0.25, epochs=2, batch_size=16, verbose=0)
    for key in ["loss", "hard_loss", "distillation_loss", "accuracy"]:
        assert key in history.history and "val_" + key in history.history
        assert len(history.history[key]) == 2


def test_total_loss_combines_terms_with_alpha_weighting_distillation(data):
    x, y = data
    d = distiller_for(x, y, alpha=0.3)
    logs = d.evaluate(x, y, verbose=0, return_dict=True, batch_size=64)
    expected = 0.3 * logs["distillation_loss"] + 0.7 * logs["hard_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluated_distillation_loss_matches_numpy_reference(data):
    x, y = data
    d = distiller_for(x, y, temperature=3.0)
    logs = d.evaluate(x, y, verbose=0, return_dict=True, batch_size=64)
    t = d.teacher.predict(x, verbose=0)
    s = d.student.predict(x, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(np_kl(t, s, 3.0), rel=1e-4)
    # evaluate reports the student's metrics
    acc = np.mean(np.argmax(s, -1) == y)
    assert logs["accuracy"] == pytest.approx(acc)


def test_teacher_weights_unchanged_after_fit(data):
    x, y = data
    teacher = make_mlp(16, dropout=0.5, name="teacher")
    before = [w.copy() for w in teacher.get_weights()]
    d = kd.Distiller(teacher=teacher, student=make_mlp(4))
    d.compile(optimizer="adam", loss=hard_loss(), alpha=0.5)
    d.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = teacher.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert not teacher.trainable
    assert all(not any(v is w for w in d.trainable_weights) for v in teacher.weights)


def test_student_weights_change_during_fit(data):
    x, y = data
    d = distiller_for(x, y)
    before = [w.copy() for w in d.student.get_weights()]
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert any(
        not np.array_equal(a, b) for a, b in zip(before, d.student.get_weights())
    )


def test_alpha_zero_trains_like_plain_student_fit(data):
    x, y = data
    plain, distilled = twins(6, "student")
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss())
    plain.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    d = kd.Distiller(teacher=trained_teacher(x, y), student=distilled)
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=0.0)
    d.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), distilled.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_alpha_one_ignores_the_labels(data):
    x, y = data
    teacher = trained_teacher(x, y)
    s1, s2 = twins(6, "student")
    wrong = (y + 1) % 3
    for student, labels in ((s1, y), (s2, wrong)):
        d = kd.Distiller(teacher=teacher, student=student)
        d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=1.0)
        d.fit(x, labels, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(s1.get_weights(), s2.get_weights()):
        np.testing.assert_array_equal(a, b)
    # ...while the labels do matter for alpha < 1 (so the check above can fail).
    s3, s4 = twins(6, "student")
    for student, labels in ((s3, y), (s4, wrong)):
        d = kd.Distiller(teacher=teacher, student=student)
        d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=0.5)
        d.fit(x, labels, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert not np.allclose(s3.get_weights()[0], s4.get_weights()[0])


def test_alpha_one_needs_no_labels_and_no_hard_loss(data):
    x, y = data
    d = kd.Distiller(teacher=trained_teacher(x, y), student=make_mlp(4))
    d.compile(optimizer="adam", loss=None, alpha=1.0)
    history = d.fit(x, epochs=1, batch_size=16, verbose=0)
    assert history.history["hard_loss"] == [0.0]
    assert history.history["loss"][0] == pytest.approx(
        history.history["distillation_loss"][0]
    )


def test_softmax_teacher_is_detected_and_gives_right_soft_targets(data):
    x, y = data
    logit_teacher = trained_teacher(x, y)
    prob_teacher = keras.Sequential(
        [keras.Input((8,)), *logit_teacher.layers, keras.layers.Softmax()]
    )
    student = make_mlp(4)
    results = []
    for teacher in (logit_teacher, prob_teacher):
        d = kd.Distiller(teacher=teacher, student=student)
        d.compile(
            optimizer="sgd",
            loss=hard_loss(),
            distillation_loss=kd.losses.KLDivergence(4.0),
        )
        results.append(
            d.evaluate(x, y, verbose=0, return_dict=True)["distillation_loss"]
        )
    assert results[1] == pytest.approx(results[0], rel=1e-4)


def test_softmax_activation_in_last_dense_is_detected(data):
    x, y = data
    teacher = trained_teacher(x, y, activation="softmax")
    d = kd.Distiller(teacher=teacher, student=make_mlp(4))
    d.compile(
        optimizer="sgd", loss=hard_loss(), distillation_loss=kd.losses.KLDivergence(2.0)
    )
    logs = d.evaluate(x, y, verbose=0, return_dict=True, batch_size=64)
    t_logits = np.log(np.clip(teacher.predict(x, verbose=0), 1e-7, 1))
    s = d.student.predict(x, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(np_kl(t_logits, s, 2.0), rel=1e-4)


def test_teacher_none_is_plain_supervised_training(data):
    x, y = data
    plain, distilled = twins(6, "student")
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss())
    plain.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    d = kd.Distiller(teacher=None, student=distilled)
    d.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=0.9)
    history = d.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert history.history["distillation_loss"] == [0.0]
    for a, b in zip(plain.get_weights(), distilled.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["numpy", "tf.data", "tfds"])
def test_accepts_numpy_tf_data_and_tfds(data, kind):
    x, y = data
    if kind == "numpy":
        inputs = dict(x=x, y=y, batch_size=16)
    elif kind == "tf.data":
        inputs = dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(16))
    else:
        tfds = pytest.importorskip("tensorflow_datasets")
        with tfds.testing.mock_data(num_examples=32):
            ds = tfds.load("mnist", split="train", as_supervised=True)
        ds = ds.map(
            lambda im, lab: (
                tf.reshape(tf.cast(im, tf.float32), (784,))[:8] / 255.0,
                lab % 3,
            )
        )
        inputs = dict(x=ds.batch(8))
    d = distiller_for(x, y)
    history = d.fit(epochs=1, verbose=0, **inputs)
    assert np.isfinite(history.history["loss"][0])


def test_sample_weights_scale_both_terms(data):
    x, y = data
    d = distiller_for(x, y)
    plain = d.evaluate(x, y, verbose=0, return_dict=True, batch_size=64)
    weighted = d.evaluate(
        x,
        y,
        sample_weight=np.full(len(x), 2.0),
        verbose=0,
        return_dict=True,
        batch_size=64,
    )
    assert weighted["distillation_loss"] == pytest.approx(
        2 * plain["distillation_loss"], rel=1e-5
    )
    assert weighted["hard_loss"] == pytest.approx(2 * plain["hard_loss"], rel=1e-5)
    d.fit(x, y, sample_weight=np.linspace(0, 1, len(x)), epochs=1, verbose=0)


def test_predict_and_call_are_the_students(data):
    x, y = data
    d = distiller_for(x, y)
    np.testing.assert_allclose(
        d.predict(x, verbose=0), d.student.predict(x, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(d(x[:4])), np.asarray(d.student(x[:4])), rtol=1e-6
    )


def test_multi_output_with_a_loss_per_output(data):
    x, y = data
    y2 = (y + 1) % 5
    teacher, student = two_output_model(16, "teacher"), two_output_model(4, "student")
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer="adam",
        loss=[hard_loss(), hard_loss()],
        distillation_loss={"a": kd.losses.KLDivergence(2.0), "b": None},
        alpha=0.5,
    )
    d.fit(x, (y, y2), epochs=1, batch_size=16, verbose=0)
    logs = d.evaluate(x, (y, y2), verbose=0, return_dict=True, batch_size=64)
    t_a = teacher.predict(x, verbose=0)[0]
    s_a = student.predict(x, verbose=0)[0]
    assert logs["distillation_loss"] == pytest.approx(np_kl(t_a, s_a, 2.0), rel=1e-4)
    d.compile(
        optimizer="adam",
        loss=[hard_loss(), hard_loss()],
        distillation_loss=[kd.losses.KLDivergence(2.0), kd.losses.KLDivergence(3.0)],
    )
    logs = d.evaluate(x, (y, y2), verbose=0, return_dict=True, batch_size=64)
    t_b, s_b = teacher.predict(x, verbose=0)[1], student.predict(x, verbose=0)[1]
    expected = np_kl(t_a, s_a, 2.0) + np_kl(t_b, s_b, 3.0)
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-4)


def test_save_and_load_round_trip(data, tmp_path):
    x, y = data
    d = distiller_for(x, y, alpha=0.25, temperature=5.0)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "distiller.keras")
    d.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, kd.Distiller)
    assert restored.alpha == pytest.approx(0.25)
    assert restored.distillation_loss.temperature == 5.0
    assert not restored.teacher.trainable
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), d.predict(x, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        restored.teacher.predict(x, verbose=0),
        d.teacher.predict(x, verbose=0),
        rtol=1e-6,
    )
    a = d.evaluate(x, y, verbose=0, return_dict=True)
    b = restored.evaluate(x, y, verbose=0, return_dict=True)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5)
    restored.fit(x, y, epochs=1, batch_size=16, verbose=0)


def test_student_saves_as_a_plain_keras_model(data, tmp_path):
    x, y = data
    d = distiller_for(x, y)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "student.keras")
    d.student.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "pred.npy", d.student.predict(x, verbose=0))
    keras_module = "tf_keras" if backend.LEGACY else "keras"
    script = (
        "import sys, numpy as np\n"
        f"import {keras_module} as keras\n"
        f"m = keras.saving.load_model({path!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"ref = np.load({str(tmp_path / 'pred.npy')!r})\n"
        "np.testing.assert_allclose(m.predict(x, verbose=0), ref, rtol=1e-6)\n"
        "assert not any(k.startswith('keras_kd') for k in sys.modules), "
        "'keras_kd imported'\n"
    )
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_jit_compile_trains_as_without_it(data):
    x, y = data
    teacher = trained_teacher(x, y)
    students = twins(6, "student")
    initial = students[0].get_weights()
    results = []
    for student, jit in zip(students, (False, True)):
        d = kd.Distiller(teacher=teacher, student=student)
        d.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=hard_loss(),
            metrics=["accuracy"],
            alpha=0.6,
            jit_compile=jit,
            steps_per_execution=2,
        )
        history = d.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        assert d.jit_compile is jit
        results.append((history.history, student.get_weights()))
    (plain, plain_weights), (jitted, jitted_weights) = results
    assert set(plain) == set(jitted)
    for key in plain:
        np.testing.assert_allclose(jitted[key], plain[key], rtol=1e-5, err_msg=key)
    for a, b in zip(plain_weights, jitted_weights):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # the runs did train (so agreeing is not agreeing on nothing)
    assert not np.allclose(plain_weights[0], initial[0])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_train_step_logs_the_float32_losses(data, policy):
    x, y = data
    teacher = trained_teacher(x, y)
    keras.mixed_precision.set_global_policy(policy)
    student = make_mlp(4)
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(3.0),
        alpha=0.5,
    )
    # What the one training step below sees: the student's low-precision
    # outputs (no dropout, so training=True computes the same) and the
    # teacher's float32 ones.
    s = np.asarray(student(x, training=True)).astype(np.float64)
    t = teacher.predict(x, verbose=0)
    assert student(x[:1]).dtype != "float32"  # the policy is in force
    before = [w.copy() for w in student.get_weights()]
    logs = d.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    distill, hard = logs["distillation_loss"][0], logs["hard_loss"][0]
    ce = np.mean(-np_log_softmax(s)[np.arange(len(y)), y])
    assert distill == pytest.approx(np_kl(t, s, 3.0), rel=2e-3)
    # tf_keras computes Keras's compiled loss in the compute dtype: under
    # bfloat16 (8 significant bits) the logged hard loss is rounded to within
    # half a spacing, 2**-8 relative (1.50396 logs as 1.5078125).
    rounding = 2.0**-8 if policy == "mixed_bfloat16" and backend.LEGACY else 2e-3
    assert hard == pytest.approx(ce, rel=rounding)
    assert logs["loss"][0] == pytest.approx(0.5 * distill + 0.5 * hard, rel=1e-5)
    assert all(w.dtype == np.float32 for w in student.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_follows_the_float32_one(data, policy):
    # The low-precision run stays within a few % of the float32 one (with
    # float16, only if the loss-scaled gradients are unscaled).
    x, y = data
    teacher = trained_teacher(x, y)
    initial = make_mlp(4).get_weights()
    weights = {}
    for run in ("float32", policy):
        keras.mixed_precision.set_global_policy(run)
        student = make_mlp(4)
        student.set_weights(initial)
        d = kd.Distiller(teacher=teacher, student=student)
        d.compile(optimizer=keras.optimizers.SGD(0.05), loss=hard_loss(), alpha=0.5)
        d.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights[run] = student.get_weights()
    moved = max(np.abs(a - b).max() for a, b in zip(weights["float32"], initial))
    for a, b in zip(weights["float32"], weights[policy]):
        assert np.abs(a - b).max() < 0.05 * moved + 1e-3


# --- errors, raised before training --------------------------------------------------


def test_incomparable_output_shapes_are_rejected():
    with pytest.raises(
        ValueError,
        match=r"teacher output shape \(None, 3\).*student output shape \(None, 5\)",
    ):
        kd.Distiller(teacher=make_mlp(8, n_out=3), student=make_mlp(4, n_out=5))


def test_teacher_that_is_the_student_is_rejected():
    model = make_mlp(4)
    with pytest.raises(ValueError, match="`teacher` and `student` must be different"):
        kd.Distiller(teacher=model, student=model)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    d = kd.Distiller(teacher=make_mlp(8), student=make_mlp(4))
    with pytest.raises(
        ValueError, match=rf"`alpha` must be between 0 and 1.*alpha={alpha}"
    ):
        d.compile(optimizer="adam", loss=SCCE, alpha=alpha)


def test_non_numeric_alpha_is_rejected():
    d = kd.Distiller(teacher=make_mlp(8), student=make_mlp(4))
    with pytest.raises(TypeError, match="`alpha`"):
        d.compile(optimizer="adam", loss=SCCE, alpha="0.5")
    with pytest.raises(ValueError, match="`alpha`"):
        d.alpha = 2.0


def test_temperature_must_be_positive_when_building_the_loss():
    with pytest.raises(ValueError, match="`temperature` must be greater than 0"):
        kd.losses.KLDivergence(temperature=-2.0)


@pytest.mark.parametrize("bad", [3, keras.optimizers.Adam, "adam"])
def test_distillation_loss_that_is_not_a_loss_is_rejected(bad):
    d = kd.Distiller(teacher=make_mlp(8), student=make_mlp(4))
    with pytest.raises((TypeError, ValueError), match="`distillation_loss`.*Received"):
        d.compile(optimizer="adam", loss=SCCE, distillation_loss=bad)


@pytest.mark.parametrize("bad", [42, "not_a_loss"])
def test_hard_loss_that_is_not_a_loss_is_rejected(bad):
    d = kd.Distiller(teacher=make_mlp(8), student=make_mlp(4))
    with pytest.raises((TypeError, ValueError), match="`loss`.*Received"):
        d.compile(optimizer="adam", loss=bad)


def test_missing_hard_loss_is_rejected_when_labels_are_weighted():
    d = kd.Distiller(teacher=make_mlp(8), student=make_mlp(4))
    with pytest.raises(ValueError, match="`loss`.*required"):
        d.compile(optimizer="adam", loss=None, alpha=0.5)


def test_student_without_trainable_weights_is_rejected():
    student = make_mlp(4)
    student.trainable = False
    with pytest.raises(ValueError, match="`student` has no trainable weights"):
        kd.Distiller(teacher=make_mlp(8), student=student)


def test_non_model_arguments_are_rejected():
    with pytest.raises(TypeError, match="`student` must be"):
        kd.Distiller(teacher=make_mlp(8), student="model.keras")
    with pytest.raises(TypeError, match="`teacher` must be"):
        kd.Distiller(teacher=lambda x: x, student=make_mlp(4))


def test_unknown_output_name_in_distillation_loss_dict_is_rejected():
    d = kd.Distiller(teacher=two_output_model(8, "t"), student=two_output_model(4, "s"))
    with pytest.raises(ValueError, match="names no output.*'c'"):
        d.compile(
            optimizer="adam",
            loss=[SCCE, SCCE],
            distillation_loss={"c": kd.losses.KLDivergence()},
        )


@keras3_only
def test_non_tensorflow_backend_is_rejected(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="TensorFlow backend.*'jax'"):
        kd.Distiller(teacher=make_mlp(8), student=make_mlp(4))


def test_plain_callable_distillation_loss_is_reduced_and_weighted(data):
    x, y = data
    d = distiller_for(x, y)
    reference = kd.losses.KLDivergence(2.0, reduction="none")
    d.compile(
        optimizer="sgd",
        loss=hard_loss(),
        distillation_loss=lambda t, s: reference(t, s),
    )
    logs = d.evaluate(x, y, verbose=0, return_dict=True, batch_size=64)
    t, s = d.teacher.predict(x, verbose=0), d.student.predict(x, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(np_kl(t, s, 2.0), rel=1e-4)
    d.fit(x, y, sample_weight=np.ones(len(x)), epochs=1, verbose=0)


# --- what Keras provides, and what older keras-kd saved ------------------------------


def test_history_holds_the_distillers_losses_and_no_stray_keras_tracker(data):
    # Keras's own "loss" tracker is left out of `metrics` by its name; if Keras
    # renamed it, it would show up here as an extra key stuck at 0.
    x, y = data
    d = distiller_for(x, y)
    history = d.fit(x, y, validation_split=0.25, epochs=1, batch_size=16, verbose=0)
    keys = {"loss", "hard_loss", "distillation_loss", "accuracy"}
    assert set(history.history) == keys | {"val_" + k for k in keys}
    losses = [m for m in d.metrics if m.name == "loss"]
    assert losses == [d.total_loss_tracker], [m.name for m in d.metrics]
    logs = d.evaluate(x, y, verbose=0, return_dict=True, batch_size=64)
    assert logs["loss"] == pytest.approx(
        0.5 * logs["distillation_loss"] + 0.5 * logs["hard_loss"], rel=1e-5
    )


def test_compute_hard_loss_is_the_loss_keras_computes(data):
    # The Keras internals it reads are guarded in tests/test_backend.py.
    x, y = data
    d = distiller_for(x, y)
    plain = keras.models.clone_model(d.student)
    plain.set_weights(d.student.get_weights())
    plain.compile(loss=hard_loss())
    expected = plain.evaluate(x, y, batch_size=64, verbose=0)
    got = float(d.compute_hard_loss(tf.constant(y), d.student(x)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_output_is_probabilities_is_still_importable_from_the_distiller_module():
    from keras_kd.distiller import output_is_probabilities

    assert output_is_probabilities(make_mlp(4, activation="softmax")) == [True]
    assert output_is_probabilities(make_mlp(4)) == [False]


@pytest.mark.parametrize("name", ["offline_distiller", "softmax_teacher_distiller"])
def test_distiller_saved_by_keras_kd_0_1_loads_and_behaves_the_same(name):
    d, reference = saved_model(name)
    assert type(d) is kd.Distiller and not d.teacher.trainable
    assert d.alpha == pytest.approx(0.3)
    assert d.distillation_loss.temperature == 3.0
    assert_behaves_as_saved(d, reference, {"teacher": d.teacher, "student": d.student})


# --- objectives that need the labels or the step: DecoupledKD, DIST ------------------
# References (np_dist, np_dkd, np_standardize in conftest.py) written from the
# papers in numpy.


def untrained_teacher():
    """A teacher whose top class is often not the label, so that passing the
    labels and using the teacher's top class give different losses."""
    return make_mlp(16, name="teacher")


@pytest.mark.parametrize("encoding", ["sparse", "one_hot"])
def test_distiller_gives_the_batch_labels_to_decoupled_kd(data, encoding):
    x, y = data
    teacher, student = untrained_teacher(), make_mlp(4, name="student")
    d = kd.Distiller(teacher=teacher, student=student)
    one_hot = encoding == "one_hot"
    d.compile(
        optimizer="sgd",
        loss=keras.losses.CategoricalCrossentropy(from_logits=True)
        if one_hot
        else hard_loss(),
        distillation_loss=kd.losses.DecoupledKD(temperature=2.0),
        alpha=0.5,
    )
    labels = np.eye(3, dtype="float32")[y] if one_hot else y
    logs = d.evaluate(x, labels, batch_size=16, return_dict=True, verbose=0)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(np_dkd(t, s, y, 2.0), rel=1e-4)
    top = np.argmax(t, -1)
    assert np.mean(top != y) > 0.3
    assert logs["distillation_loss"] != pytest.approx(np_dkd(t, s, top, 2.0), rel=1e-2)


def test_unlabelled_batches_give_decoupled_kd_the_teachers_top_class(data):
    x, y = data
    teacher, student = untrained_teacher(), make_mlp(4, name="student")
    # what the single training step below sees (no dropout)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=None,
        distillation_loss=kd.losses.DecoupledKD(temperature=2.0),
        alpha=1.0,
    )
    history = d.fit(x, batch_size=len(x), epochs=1, verbose=0).history
    logged = history["distillation_loss"][0]
    assert logged == pytest.approx(np_dkd(t, s, np.argmax(t, -1), 2.0), rel=1e-4)
    assert logged != pytest.approx(np_dkd(t, s, y, 2.0), rel=1e-2)
    assert history["hard_loss"] == [0.0]


def test_decoupled_kd_warmup_follows_the_distillers_training_steps(data):
    x, y = data
    teacher, student = untrained_teacher(), make_mlp(4, name="student")
    loss = kd.losses.DecoupledKD(temperature=2.0, warmup_steps=8)
    d = kd.Distiller(teacher=teacher, student=student)
    # learning rate 0: the student stays as it is, only the step advances
    d.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=hard_loss(), distillation_loss=loss
    )
    assert loss.step_counter is d.optimizer.iterations
    full = np_dkd(teacher.predict(x, verbose=0), student.predict(x, verbose=0), y, 2.0)
    history = d.fit(x, y, batch_size=len(x), epochs=3, verbose=0).history
    np.testing.assert_allclose(
        history["distillation_loss"], [full / 8, 2 * full / 8, 3 * full / 8], rtol=1e-4
    )
    d.fit(x, y, batch_size=16, epochs=2, verbose=0)  # 8 steps more
    logs = d.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(full, rel=1e-4)


def test_distiller_dist_matches_numpy_with_sample_weights(data):
    x, y = data
    teacher, student = trained_teacher(x, y), make_mlp(4, name="student")
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer="sgd",
        loss=hard_loss(),
        distillation_loss=kd.losses.DIST(temperature=2.0),
        alpha=0.5,
    )
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    w = np.linspace(0.0, 2.0, len(x)).astype("float32")
    logs = d.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    assert logs["distillation_loss"] == pytest.approx(np_dist(t, s, 2.0), rel=1e-4)
    logs = d.evaluate(
        x, y, sample_weight=w, batch_size=len(x), return_dict=True, verbose=0
    )
    assert logs["distillation_loss"] == pytest.approx(
        np_dist(t, s, 2.0, weights=w), rel=1e-4
    )
    d.fit(x, y, sample_weight=w, batch_size=16, epochs=1, verbose=0)


def test_each_output_gets_its_own_labels(data):
    x, y = data
    y2 = (y + 1) % 5
    teacher, student = two_output_model(16, "teacher"), two_output_model(4, "student")
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer="adam",
        loss=[hard_loss(), hard_loss()],
        distillation_loss=[
            kd.losses.DecoupledKD(2.0),
            kd.losses.DecoupledKD(3.0, non_target_weight=2.0),
        ],
    )
    logs = d.evaluate(x, (y, y2), batch_size=64, return_dict=True, verbose=0)
    (t_a, t_b) = teacher.predict(x, verbose=0)
    (s_a, s_b) = student.predict(x, verbose=0)
    expected = np_dkd(t_a, s_a, y, 2.0) + np_dkd(t_b, s_b, y2, 3.0, 1.0, 2.0)
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("objective", ["dist", "decoupled_kd", "standardized_kl"])
def test_new_objectives_log_float32_losses_under_mixed_float16(data, objective):
    x, y = data
    teacher = trained_teacher(x, y)
    keras.mixed_precision.set_global_policy("mixed_float16")
    student = make_mlp(4)
    loss, reference = {
        "dist": (kd.losses.DIST(2.0), lambda t, s: np_dist(t, s, 2.0)),
        "decoupled_kd": (kd.losses.DecoupledKD(2.0), lambda t, s: np_dkd(t, s, y, 2.0)),
        "standardized_kl": (
            kd.losses.KLDivergence(2.0, standardize=True),
            lambda t, s: np_kl(np_standardize(t), np_standardize(s), 2.0),
        ),
    }[objective]
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=hard_loss(),
        distillation_loss=loss,
        alpha=0.5,
    )
    s = np.asarray(student(x, training=True)).astype(np.float64)
    t = teacher.predict(x, verbose=0)
    assert student(x[:1]).dtype == "float16"  # the policy is in force
    history = d.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    assert history["distillation_loss"][0] == pytest.approx(reference(t, s), rel=2e-3)
    value = d.compute_distillation_loss(teacher(x), student(x), labels=y)
    assert value.dtype == "float32"


@pytest.mark.parametrize("objective", ["dist", "decoupled_kd"])
def test_new_objectives_under_jit_compile_match_numpy(data, objective):
    x, y = data
    teacher, student = untrained_teacher(), make_mlp(4, name="student")
    loss = kd.losses.DIST(2.0) if objective == "dist" else kd.losses.DecoupledKD(2.0)
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer="sgd",
        loss=hard_loss(),
        distillation_loss=loss,
        alpha=0.5,
        jit_compile=True,
    )
    logs = d.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    expected = np_dist(t, s, 2.0) if objective == "dist" else np_dkd(t, s, y, 2.0)
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-4)
    history = d.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_distiller_with_decoupled_kd_saves_and_loads(data, tmp_path):
    x, y = data
    d = kd.Distiller(teacher=trained_teacher(x, y), student=make_mlp(4))
    d.compile(
        optimizer="adam",
        loss=hard_loss(),
        distillation_loss=kd.losses.DecoupledKD(
            3.0, non_target_weight=4.0, warmup_steps=5
        ),
        alpha=0.5,
    )
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    d.save(path)
    restored = keras.saving.load_model(path)
    loss = restored.distillation_loss
    assert isinstance(loss, kd.losses.DecoupledKD)
    assert loss.get_config() == d.distillation_loss.get_config()
    assert loss.step_counter is restored.optimizer.iterations
    a = d.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    b = restored.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5), key


MIRRORED_OBJECTIVES = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import keras_kd as kd
from keras_kd.backend import keras

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = rng.integers(0, 3, 64)

def mlp(h):
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(h, "relu"),
                             keras.layers.Dense(3)])

keras.utils.set_random_seed(0)
teacher_w, student_w = mlp(16).get_weights(), mlp(4).get_weights()
strategies = {"default": tf.distribute.get_strategy(),
              "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
results = {}
for name, strategy in strategies.items():
    with strategy.scope():
        t, s = mlp(16), mlp(4)
        t.set_weights(teacher_w)
        s.set_weights(student_w)
        # per-sample objective, labels and warm-up: replicas change nothing
        dkd = kd.Distiller(teacher=t, student=s)
        dkd.compile(optimizer=keras.optimizers.SGD(0.1),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    distillation_loss=kd.losses.DecoupledKD(2.0, warmup_steps=3),
                    alpha=0.5)
        # batch-level objective: computed on each replica's half batch
        dist = kd.Distiller(teacher=t, student=s)
        dist.compile(optimizer="sgd", loss=None, alpha=1.0,
                     distillation_loss=kd.losses.DIST(2.0))
    history = dkd.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    after = dkd.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    logged = dist.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    results[name] = (history.history, after, s.get_weights(), logged)
one, two = results["default"], results["mirrored"]
for key in one[0]:
    np.testing.assert_allclose(two[0][key], one[0][key], rtol=1e-4, err_msg=key)
for key in one[1]:
    np.testing.assert_allclose(two[1][key], one[1][key], rtol=1e-4, err_msg=key)
for a, b in zip(one[2], two[2]):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
assert not np.allclose(one[2][0], student_w[0]), "the student did not train"
tl, sl = t.predict(x, verbose=0), s.predict(x, verbose=0)
loss = kd.losses.DIST(2.0)
def mean_over(size):
    return np.mean([float(loss(tl[i:i + size], sl[i:i + size]))
                    for i in range(0, 64, size)])
np.testing.assert_allclose(one[3]["distillation_loss"], mean_over(32), rtol=1e-4)
np.testing.assert_allclose(two[3]["distillation_loss"], mean_over(16), rtol=1e-4)
assert abs(mean_over(16) - mean_over(32)) > 1e-4 * mean_over(32)
print("SAME")
"""


def test_new_objectives_under_a_mirrored_strategy():
    # DecoupledKD (labels, warm-up) gives one replica's result on two; DIST's
    # intra-class term is computed on each replica's share of the batch.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_OBJECTIVES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]
