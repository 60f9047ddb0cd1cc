import math

import numpy as np
import pytest

import keras_kd as kd
from keras_kd.backend import keras

from conftest import make_mlp, np_kl, np_log_softmax


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def self_distiller(lr=0.05, alpha=0.5, temperature=2.0):
    d = kd.Distiller(teacher=None, student=make_mlp(6, name="student"))
    d.compile(optimizer=keras.optimizers.Adam(lr), loss=hard_loss(), metrics=["accuracy"],
              distillation_loss=kd.losses.KLDivergence(temperature), alpha=alpha)
    return d


class Recorder(keras.callbacks.Callback):
    """Records the state the model is in when each epoch begins."""

    def __init__(self):
        super().__init__()
        self.begin = {}

    def on_epoch_begin(self, epoch, logs=None):
        m = self.model
        self.begin[epoch] = {
            "teacher": None if m.teacher is None else [w.copy() for w in m.teacher.get_weights()],
            "student": [w.copy() for w in m.student.get_weights()],
            "iterations": int(m.optimizer.iterations.numpy()),
            "optimizer": [np.array(v.numpy()) for v in m.optimizer.variables],
            "alpha": m.alpha,
            "teacher_trainable": None if m.teacher is None else m.teacher.trainable,
        }


def test_generation_boundaries_teacher_and_reinitialisation(data):
    x, y = data
    d = self_distiller()
    cb = kd.callbacks.SelfDistillation(generations=3, epochs_per_generation=2,
                                       keep_weights=True, verbose=0)
    rec = Recorder()
    history = d.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[cb, rec])
    assert history.history["generation"] == [1, 1, 2, 2, 3, 3]
    distill = history.history["distillation_loss"]
    assert distill[:2] == [0.0, 0.0] and all(v > 0 for v in distill[2:])
    assert [r["first_epoch"] for r in cb.generation_results] == [0, 2, 4]
    assert [r["last_epoch"] for r in cb.generation_results] == [1, 3, 5]
    steps_per_epoch = math.ceil(len(x) / 16)
    for gen, epoch in ((2, 2), (3, 4)):
        previous = cb.generation_results[gen - 2]["weights"]
        state = rec.begin[epoch]
        # the new teacher is the previous generation's final student...
        for a, b in zip(state["teacher"], previous):
            np.testing.assert_array_equal(a, b)
        assert state["teacher_trainable"] is False
        # ...and stays frozen for the whole generation
        for a, b in zip(rec.begin[epoch + 1]["teacher"], previous):
            np.testing.assert_array_equal(a, b)
        # the student starts afresh, not from the teacher's weights
        assert not np.allclose(state["student"][0], previous[0])
        # the optimizer starts afresh: no iterations, zero Adam moments
        assert state["iterations"] == 0
        assert rec.begin[epoch + 1]["iterations"] == steps_per_epoch
        assert all(np.all(v == 0) for v in state["optimizer"] if v.ndim > 0)
    assert rec.begin[1]["iterations"] == steps_per_epoch
    assert len(cb.generation_results) == 3
    assert set(cb.generation_results[-1]["metrics"]) >= {"loss", "accuracy"}


def test_restore_best_keeps_the_best_generation(data):
    x, y = data
    d = self_distiller()
    cb = kd.callbacks.SelfDistillation(generations=3, epochs_per_generation=1,
                                       monitor="loss", restore_best=True,
                                       keep_weights=True, verbose=0)
    d.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    losses = [r["metrics"]["loss"] for r in cb.generation_results]
    assert cb.best_generation == int(np.argmin(losses)) + 1
    best = cb.generation_results[cb.best_generation - 1]["weights"]
    for a, b in zip(d.student.get_weights(), best):
        np.testing.assert_array_equal(a, b)


def test_ensemble_teacher_averages_earlier_generations(data):
    x, y = data
    d = self_distiller()
    cb = kd.callbacks.SelfDistillation(generations=3, epochs_per_generation=1,
                                       ensemble=True, keep_weights=True, verbose=0)
    d.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    probs = []
    for result in cb.generation_results[:2]:
        member = make_mlp(6)
        member.set_weights(result["weights"])
        probs.append(np.exp(np_log_softmax(member.predict(x, verbose=0))))
    teacher_probs = np.exp(np_log_softmax(d.teacher.predict(x, verbose=0)))
    np.testing.assert_allclose(teacher_probs, np.mean(probs, axis=0), rtol=1e-4, atol=1e-6)


def test_alpha_and_temperature_per_generation(data):
    x, y = data
    d = self_distiller()
    cb = kd.callbacks.SelfDistillation(generations=3, epochs_per_generation=1,
                                       alpha=[None, 0.3, 0.8], temperature=[1.0, 3.0, 5.0],
                                       verbose=0)
    rec = Recorder()
    d.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb, rec])
    assert [round(rec.begin[e]["alpha"], 6) for e in (1, 2)] == [0.3, 0.8]
    assert d.distillation_loss.temperature == 5.0


def test_early_stopping_ends_the_generation_not_the_run(data):
    x, y = data
    d = self_distiller()
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=1e9)
    cb = kd.callbacks.SelfDistillation(generations=3, epochs_per_generation=4,
                                       early_stopping=stopper, verbose=0)
    history = d.fit(x, y, epochs=12, batch_size=16, verbose=0, callbacks=[cb])
    assert history.history["generation"] == [1, 1, 2, 2, 3, 3]
    assert [r["first_epoch"] for r in cb.generation_results] == [0, 2, 4]


def test_distiller_saves_after_self_distillation(data, tmp_path):
    x, y = data
    d = self_distiller()
    cb = kd.callbacks.SelfDistillation(generations=2, epochs_per_generation=1, verbose=0)
    d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    path = str(tmp_path / "born_again.keras")
    d.save(path)
    restored = keras.saving.load_model(path)
    assert restored.teacher is None  # the swapped-in teacher is not saved state
    np.testing.assert_allclose(restored.predict(x, verbose=0), d.predict(x, verbose=0),
                               rtol=1e-6)


def test_model_checkpoint_works_across_generations(data, tmp_path):
    x, y = data
    d = self_distiller()
    path = str(tmp_path / "ckpt.weights.h5")
    ckpt = keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    cb = kd.callbacks.SelfDistillation(generations=2, epochs_per_generation=1, verbose=0)
    d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, ckpt])
    fresh = self_distiller()
    fresh.load_weights(path)
    np.testing.assert_allclose(fresh.student.predict(x, verbose=0),
                               d.student.predict(x, verbose=0), rtol=1e-6)


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
        kd.callbacks.SelfDistillation(generations=3, epochs_per_generation=3, seed=11,
                                      backup_dir=str(tmp_path / name / "kd"), verbose=0),
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

    d, callbacks = _resumable_run(tmp_path, "resumed", interrupt_at=3)  # mid generation 2
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
    cb = kd.callbacks.SelfDistillation(generations=2, epochs_per_generation=1, verbose=0)
    with pytest.raises(ValueError, match="backup_dir"):
        d.fit(x, y, epochs=2, initial_epoch=1, batch_size=16, verbose=0, callbacks=[cb])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(generations=0), ValueError),
        (dict(epochs_per_generation=1.5), ValueError),
        (dict(generations=3, alpha=[0.1, 0.2]), ValueError),
        (dict(alpha=1.5), ValueError),
        (dict(temperature=0.0), ValueError),
        (dict(mode="best"), ValueError),
        (dict(model_fn="resnet"), TypeError),
        (dict(early_stopping="yes"), TypeError),
    ],
)
def test_self_distillation_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        kd.callbacks.SelfDistillation(**kwargs)


def test_self_distillation_needs_a_distiller(data):
    x, y = data
    model = make_mlp(4)
    model.compile(optimizer="adam", loss=hard_loss())
    with pytest.raises(TypeError, match="Distiller"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[kd.callbacks.SelfDistillation(verbose=0)])


# --- schedules -------------------------------------------------------------------


def _count_traces(distiller):
    traces = []
    original = distiller.train_step

    def counting(data):
        traces.append(1)
        return original(data)

    distiller.train_step = counting
    return traces


def _frozen_distiller(x, y, alpha=0.5, temperature=2.0):
    teacher = make_mlp(16, name="teacher")
    d = kd.Distiller(teacher=teacher, student=make_mlp(4))
    # lr=0: weights never move, so the loss changes only with the schedule
    d.compile(optimizer=keras.optimizers.SGD(0.0), loss=hard_loss(),
              distillation_loss=kd.losses.KLDivergence(temperature), alpha=alpha)
    return d


def test_temperature_schedule_changes_the_loss_without_retracing(data):
    x, y = data
    d = _frozen_distiller(x, y)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)  # traced with a constant T
    traces = _count_traces(d)
    schedule = kd.callbacks.TemperatureSchedule(kd.callbacks.linear(4.0, 1.0, 3))
    history = d.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[schedule])
    assert history.history["temperature"] == [4.0, 3.0, 2.0, 1.0]
    # One trace: the function is rebuilt once, when the temperature moves
    # into a variable, and never again as the temperature changes.
    t, s = d.teacher.predict(x, verbose=0), d.student.predict(x, verbose=0)
    for got, temperature in zip(history.history["distillation_loss"], [4.0, 3.0, 2.0, 1.0]):
        assert got == pytest.approx(np_kl(t, s, temperature), rel=1e-4)
    assert len(traces) == 1


def test_alpha_schedule_per_step_without_retracing(data):
    x, y = data
    d = _frozen_distiller(x, y)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)  # trace before counting
    traces = _count_traces(d)
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(round(d.alpha, 6))

    schedule = kd.callbacks.AlphaSchedule(lambda step: 0.1 * (step % 10), per="step")
    history = d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[schedule, Watch()])
    assert seen == [round(0.1 * (i % 10), 6) for i in range(4, 12)]
    assert traces == []  # alpha was a variable all along: no new trace
    # One batch an epoch: total = alpha * distill + (1 - alpha) * hard exactly,
    # with that step's alpha.
    seen.clear()
    history = d.fit(x, y, epochs=3, batch_size=len(x), verbose=0,
                    callbacks=[schedule, Watch()])
    h = history.history
    assert seen == [0.2, 0.3, 0.4]  # steps 12, 13, 14 of the optimizer
    for i, alpha in enumerate(seen):
        assert h["loss"][i] == pytest.approx(
            alpha * h["distillation_loss"][i] + (1 - alpha) * h["hard_loss"][i], rel=1e-5)


def test_linear_and_cosine_helpers():
    assert [kd.callbacks.linear(1.0, 0.0, 4)(t) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    f = kd.callbacks.cosine(8.0, 2.0, 10)
    assert f(0) == pytest.approx(8.0) and f(5) == pytest.approx(5.0) and f(10) == pytest.approx(2.0)
    assert f(20) == pytest.approx(2.0)


def test_schedules_reject_bad_values(data):
    x, y = data
    d = _frozen_distiller(x, y)
    with pytest.raises(ValueError, match="`alpha`"):
        d.fit(x, y, epochs=1, verbose=0,
              callbacks=[kd.callbacks.AlphaSchedule(lambda e: 2.0)])
    with pytest.raises(ValueError, match="`temperature`"):
        d.fit(x, y, epochs=1, verbose=0,
              callbacks=[kd.callbacks.TemperatureSchedule(lambda e: -1.0)])
    with pytest.raises(ValueError, match="`per`"):
        kd.callbacks.AlphaSchedule(lambda e: 0.5, per="batch")
    with pytest.raises(TypeError, match="`schedule`"):
        kd.callbacks.TemperatureSchedule(4.0)
