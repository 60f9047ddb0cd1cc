"""SelfDistillation's Keras hooks: generations inside one `fit`.

References are recorded independently of the callback: a `Recorder` reads
the Distiller's state at epoch boundaries, the History's own logs give the
metrics, numpy recomputes ensemble teachers.
"""

import math

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp, np_log_softmax
from keras_kd.backend import keras


def self_distiller(lr=0.05, alpha=0.5, temperature=2.0, student=None, loss=None):
    student = student if student is not None else make_mlp(6, name="student")
    d = kd.Distiller(teacher=None, student=student)
    d.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=loss or hard_loss(),
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(temperature),
        alpha=alpha,
    )
    return d


def _copy(weights):
    return [np.array(w) for w in weights]


class Recorder(keras.callbacks.Callback):
    """Records the Distiller's state when each epoch begins and the
    student's weights when each epoch ends."""

    def __init__(self):
        super().__init__()
        self.begin, self.end_weights = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        m = self.model
        teacher = m.teacher
        self.begin[epoch] = {
            "teacher_model": teacher,
            "teacher": None if teacher is None else _copy(teacher.get_weights()),
            "student": _copy(m.student.get_weights()),
            "iterations": int(m.optimizer.iterations.numpy()),
            "optimizer": [np.array(v.numpy()) for v in m.optimizer.variables],
            "alpha": m.alpha,
            "temperature": m.distillation_loss.temperature,
            "teacher_trainable": None if teacher is None else teacher.trainable,
        }

    def on_epoch_end(self, epoch, logs=None):
        self.end_weights[epoch] = _copy(self.model.student.get_weights())


class Rig(keras.callbacks.Callback):
    """Writes a chosen `score` into the logs of each epoch (put it before
    SelfDistillation), so that the best generation is known in advance."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]


def run_generations(data, epochs, distiller=None, before=(), **kwargs):
    """Fits a Distiller with `SelfDistillation(**kwargs)` and a `Recorder`
    after it (and the callbacks `before` ahead of it).

    Returns:
        `(distiller, self_distillation, recorder, history)`.
    """
    x, y = data
    d = distiller if distiller is not None else self_distiller()
    cb = kd.callbacks.SelfDistillation(verbose=0, **kwargs)
    rec = Recorder()
    callbacks = [*before, cb, rec]
    history = d.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=callbacks)
    return d, cb, rec, history


def _assert_same_weights(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_generation_boundaries_teacher_and_reinitialisation(data):
    x, y = data
    d, cb, rec, history = run_generations(
        data, 6, generations=3, epochs_per_generation=2, keep_weights=True
    )
    assert history.history["generation"] == [1, 1, 2, 2, 3, 3]
    distill = history.history["distillation_loss"]
    assert distill[:2] == [0.0, 0.0] and all(v > 0 for v in distill[2:])
    assert [r["first_epoch"] for r in cb.generation_results] == [0, 2, 4]
    assert [r["last_epoch"] for r in cb.generation_results] == [1, 3, 5]
    steps_per_epoch = math.ceil(len(x) / 16)
    for gen, epoch in ((2, 2), (3, 4)):
        previous = rec.end_weights[epoch - 1]  # the student when gen - 1 ended
        _assert_same_weights(cb.generation_results[gen - 2]["weights"], previous)
        state = rec.begin[epoch]
        # the new teacher is the previous generation's final student...
        _assert_same_weights(state["teacher"], previous)
        assert state["teacher_trainable"] is False
        # ...and stays frozen for the whole generation
        _assert_same_weights(rec.begin[epoch + 1]["teacher"], previous)
        # the student starts afresh, not from the teacher's weights
        assert not np.allclose(state["student"][0], previous[0])
        # the optimizer starts afresh: no iterations, zero Adam moments
        assert state["iterations"] == 0
        assert rec.begin[epoch + 1]["iterations"] == steps_per_epoch
        assert all(np.all(v == 0) for v in state["optimizer"] if v.ndim > 0)
    assert rec.begin[1]["iterations"] == steps_per_epoch
    assert len(cb.generation_results) == 3
    metrics = cb.generation_results[-1]["metrics"]
    assert metrics["loss"] == pytest.approx(history.history["loss"][-1])
    assert metrics["accuracy"] == pytest.approx(history.history["accuracy"][-1])


def test_restore_best_keeps_the_generation_with_the_lowest_loss(data):
    d, cb, rec, history = run_generations(
        data,
        3,
        generations=3,
        epochs_per_generation=1,
        monitor="loss",
        restore_best=True,
    )
    best = int(np.argmin(history.history["loss"])) + 1
    assert cb.best_generation == best
    _assert_same_weights(d.student.get_weights(), rec.end_weights[best - 1])


@pytest.mark.parametrize(
    "mode, scores, best",
    [
        ("max", [0.2, 0.9, 0.5], 2),
        ("min", [0.2, 0.9, 0.5], 1),
        ("max", [0.1, 0.3, 0.8], 3),
    ],
)
def test_restore_best_by_the_mode_of_a_metric(data, mode, scores, best):
    d, cb, rec, _ = run_generations(
        data,
        3,
        before=[Rig(scores)],
        generations=3,
        epochs_per_generation=1,
        monitor="score",
        mode=mode,
        restore_best=True,
    )
    assert cb.best_generation == best
    _assert_same_weights(d.student.get_weights(), rec.end_weights[best - 1])
    # the restored weights are those of that generation, no other one
    others = [g for g in (1, 2, 3) if g != best]
    for g in others:
        assert not np.array_equal(d.student.get_weights()[0], rec.end_weights[g - 1][0])


def test_a_metric_of_unknown_direction_needs_mode():
    with pytest.raises(ValueError, match="mode='max'") as info:
        kd.callbacks.SelfDistillation(monitor="score", restore_best=True)
    assert "'score'" in str(info.value)
    # known directions, and a monitor that restore_best does not use, are fine
    kd.callbacks.SelfDistillation(monitor="val_accuracy", restore_best=True)
    kd.callbacks.SelfDistillation(monitor="val_distillation_loss", restore_best=True)
    kd.callbacks.SelfDistillation(monitor="score")


def test_a_monitor_missing_from_the_logs_is_an_error(data):
    rec = Recorder()
    with pytest.raises(ValueError, match="val_loss") as info:
        run_generations(
            data,
            6,
            generations=3,
            epochs_per_generation=2,
            monitor="val_loss",
            restore_best=True,
            before=[rec],
        )
    assert "validation_data" in str(info.value) and "'accuracy'" in str(info.value)
    assert sorted(rec.begin) == [0, 1]  # raised when generation 1 ended


def test_model_fn_builds_the_fresh_students_and_their_teachers(data):
    built = []  # (model, its weights as model_fn returned it)

    def model_fn():
        # Constant initial weights, different for each call: a student from
        # model_fn is recognisable, one from clone_model (random) is not.
        value = 0.01 * (len(built) + 1)
        init = keras.initializers.Constant(value)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(6, activation="relu", kernel_initializer=init),
                keras.layers.Dense(3, kernel_initializer=init),
            ]
        )
        built.append((model, _copy(model.get_weights())))
        return model

    d = self_distiller(student=model_fn())
    built.clear()
    _, _, rec, _ = run_generations(
        data, 3, distiller=d, generations=3, epochs_per_generation=1, model_fn=model_fn
    )
    assert len(built) >= 4  # a teacher and a fresh student for each of gens 2, 3
    initial_weights = [weights for _, weights in built]
    models = [model for model, _ in built]
    for epoch in (1, 2):
        state = rec.begin[epoch]
        # the student starts from the initial weights of a model_fn model...
        matches = [
            i
            for i, weights in enumerate(initial_weights)
            if all(np.array_equal(a, b) for a, b in zip(state["student"], weights))
        ]
        assert len(matches) == 1, epoch
        # ...and the teacher is a model_fn model holding the previous weights
        assert any(state["teacher_model"] is m for m in models), epoch
        _assert_same_weights(state["teacher"], rec.end_weights[epoch - 1])


def test_model_fn_of_another_architecture_is_an_error(data):
    with pytest.raises(ValueError, match="model_fn"):
        run_generations(data, 2, generations=2, model_fn=lambda: make_mlp(7))


def _np_probs(model, weights, x):
    model.set_weights(weights)
    return model.predict(x, verbose=0)


def test_ensemble_teacher_averages_earlier_generations(data):
    x, y = data
    d, _, rec, _ = run_generations(
        data, 3, generations=3, epochs_per_generation=1, ensemble=True
    )
    member = make_mlp(6)
    probs = [
        np.exp(np_log_softmax(_np_probs(member, rec.end_weights[e], x))) for e in (0, 1)
    ]
    teacher_probs = np.exp(np_log_softmax(d.teacher.predict(x, verbose=0)))
    np.testing.assert_allclose(
        teacher_probs, np.mean(probs, axis=0), rtol=1e-4, atol=1e-6
    )


def test_ensemble_of_softmax_students_averages_their_probabilities(data):
    x, y = data
    student = make_mlp(6, activation="softmax", name="student")
    d, cb, rec, _ = run_generations(
        data,
        3,
        distiller=self_distiller(
            student=student,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        ),
        generations=3,
        epochs_per_generation=1,
        ensemble=True,
    )
    member = make_mlp(6, activation="softmax")
    probs = [_np_probs(member, rec.end_weights[e], x) for e in (0, 1)]
    # The teacher's output is the log of the members' mean probability (had
    # the softmax gone unnoticed, it would be the log-softmax of probabilities).
    np.testing.assert_allclose(
        d.teacher.predict(x, verbose=0),
        np.log(np.mean(probs, axis=0)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_alpha_and_temperature_per_generation(data):
    d, cb, rec, _ = run_generations(
        data,
        3,
        generations=3,
        epochs_per_generation=1,
        alpha=[None, 0.3, 0.8],
        temperature=[1.0, 3.0, 5.0],
    )
    assert [round(rec.begin[e]["alpha"], 6) for e in (0, 1, 2)] == [0.5, 0.3, 0.8]
    assert [rec.begin[e]["temperature"] for e in (0, 1, 2)] == [1.0, 3.0, 5.0]


def test_early_stopping_ends_the_generation_not_the_run(data):
    x, y = data
    d = self_distiller()
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=1e9)
    cb = kd.callbacks.SelfDistillation(
        generations=3, epochs_per_generation=4, early_stopping=stopper, verbose=0
    )
    history = d.fit(x, y, epochs=12, batch_size=16, verbose=0, callbacks=[cb])
    assert history.history["generation"] == [1, 1, 2, 2, 3, 3]
    assert [r["first_epoch"] for r in cb.generation_results] == [0, 2, 4]
    assert [r["last_epoch"] for r in cb.generation_results] == [1, 3, 5]


def test_distiller_saves_after_self_distillation(data, tmp_path):
    x, y = data
    d = self_distiller()
    cb = kd.callbacks.SelfDistillation(
        generations=2, epochs_per_generation=1, verbose=0
    )
    d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    path = str(tmp_path / "born_again.keras")
    d.save(path)
    restored = keras.saving.load_model(path)
    assert restored.teacher is None  # the swapped-in teacher is not saved state
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), d.predict(x, verbose=0), rtol=1e-6
    )


def test_model_checkpoint_works_across_generations(data, tmp_path):
    x, y = data
    d = self_distiller()
    path = str(tmp_path / "ckpt.weights.h5")
    ckpt = keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    cb = kd.callbacks.SelfDistillation(
        generations=2, epochs_per_generation=1, verbose=0
    )
    d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, ckpt])
    fresh = self_distiller()
    fresh.load_weights(path)
    np.testing.assert_allclose(
        fresh.student.predict(x, verbose=0), d.student.predict(x, verbose=0), rtol=1e-6
    )


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt(f"stopped after epoch {epoch}")


def _resumable_run(tmp_path, name, interrupt_at=None):
    keras.utils.set_random_seed(5)
    d = self_distiller(lr=0.02)
    callbacks = [
        kd.callbacks.SelfDistillation(
            generations=3,
            epochs_per_generation=3,
            seed=11,
            backup_dir=str(tmp_path / name / "kd"),
            verbose=0,
        ),
        keras.callbacks.BackupAndRestore(str(tmp_path / name / "backup")),
    ]
    if interrupt_at is not None:
        callbacks.append(Interrupt(interrupt_at))
    return d, callbacks


def test_backup_and_restore_resumes_in_the_right_generation(data, tmp_path):
    x, y = data
    fit = dict(x=x, y=y, epochs=9, batch_size=16, shuffle=False, verbose=0)
    d, callbacks = _resumable_run(tmp_path, "straight")
    d.fit(callbacks=callbacks, **fit)
    reference = d.student.get_weights()

    d, callbacks = _resumable_run(tmp_path, "resumed", interrupt_at=3)  # mid gen 2
    with pytest.raises(KeyboardInterrupt):
        d.fit(callbacks=callbacks, **fit)
    d, callbacks = _resumable_run(tmp_path, "resumed")
    history = d.fit(callbacks=callbacks, **fit)
    assert history.history["generation"] == [2, 2, 3, 3, 3]
    assert [r["generation"] for r in callbacks[0].generation_results] == [1, 2, 3]
    for a, b in zip(d.student.get_weights(), reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_without_backup_dir_is_an_error(data):
    x, y = data
    d = self_distiller()
    cb = kd.callbacks.SelfDistillation(
        generations=2, epochs_per_generation=1, verbose=0
    )
    with pytest.raises(ValueError, match="backup_dir"):
        d.fit(x, y, epochs=2, initial_epoch=1, batch_size=16, verbose=0, callbacks=[cb])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(generations=0), ValueError, "`generations`"),
        (dict(generations="3"), TypeError, "`generations`"),
        (dict(epochs_per_generation=1.5), TypeError, "`epochs_per_generation`"),
        (dict(generations=3, alpha=[0.1, 0.2]), ValueError, "`alpha`"),
        (dict(alpha=1.5), ValueError, "`alpha`"),
        (dict(generations=2, alpha=[0.5, 1.5]), ValueError, r"`alpha\[1\]`"),
        (dict(temperature=0.0), ValueError, "`temperature`"),
        (dict(mode="best"), ValueError, "`mode`"),
        (dict(restore_best=True, monitor="f1"), ValueError, "mode='max'"),
        (dict(model_fn="resnet"), TypeError, "`model_fn`"),
        (dict(early_stopping="yes"), TypeError, "`early_stopping`"),
        (dict(seed=1.5), TypeError, "`seed`"),
        (dict(ensemble="yes"), TypeError, "`ensemble`"),
    ],
)
def test_self_distillation_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kd.callbacks.SelfDistillation(**kwargs)


@pytest.mark.parametrize(
    "callback",
    [
        lambda: kd.callbacks.SelfDistillation(verbose=0),
        lambda: kd.callbacks.AlphaSchedule(lambda epoch: 0.5),
        lambda: kd.callbacks.TemperatureSchedule(lambda epoch: 2.0),
    ],
    ids=["SelfDistillation", "AlphaSchedule", "TemperatureSchedule"],
)
def test_callbacks_need_a_distiller(data, callback):
    x, y = data
    model = make_mlp(4)
    model.compile(optimizer="adam", loss=hard_loss())
    with pytest.raises(TypeError, match="Distiller"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback()])
