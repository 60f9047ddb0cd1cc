"""AlphaSchedule and TemperatureSchedule: values seen inside the train step.

With a learning rate of 0 the models never move, so each epoch's logged
losses are recomputed in numpy at the scheduled value.
"""

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp, np_kl, two_output_model
from keras_kd.backend import keras


def _count_traces(distiller):
    traces = []
    original = distiller.train_step

    def counting(data):
        traces.append(1)
        return original(data)

    distiller.train_step = counting
    return traces


def _frozen_distiller(alpha=0.5, temperature=2.0):
    d = kd.Distiller(teacher=make_mlp(16, name="teacher"), student=make_mlp(4))
    # lr=0: weights never move, so the loss changes only with the schedule
    d.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(temperature),
        alpha=alpha,
    )
    return d


def test_temperature_schedule_changes_the_loss_without_retracing(data):
    x, y = data
    d = _frozen_distiller()
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)  # traced with a constant T
    traces = _count_traces(d)
    schedule = kd.callbacks.TemperatureSchedule(kd.callbacks.linear(4.0, 1.0, 3))
    history = d.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[schedule])
    assert history.history["temperature"] == [4.0, 3.0, 2.0, 1.0]
    t, s = d.teacher.predict(x, verbose=0), d.student.predict(x, verbose=0)
    for got, temperature in zip(history.history["distillation_loss"], [4, 3, 2, 1]):
        assert got == pytest.approx(np_kl(t, s, temperature), rel=1e-4)
    # One trace: the function is rebuilt once, when the temperature moves
    # into a variable, and never again as the temperature changes.
    assert len(traces) == 1


def test_temperature_schedule_drives_only_the_given_loss(data):
    x, y = data
    y2 = (y + 1) % 5
    teacher, student = two_output_model(16, "teacher"), two_output_model(4, "student")
    driven, other = kd.losses.KLDivergence(2.0), kd.losses.KLDivergence(3.0)
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=[hard_loss(), hard_loss()],
        distillation_loss=[driven, other],
    )
    schedule = kd.callbacks.TemperatureSchedule(
        kd.callbacks.linear(6.0, 1.5, 2), loss=driven
    )
    history = d.fit(
        x, (y, y2), epochs=3, batch_size=len(x), verbose=0, callbacks=[schedule]
    )
    (t_a, t_b), (s_a, s_b) = (
        teacher.predict(x, verbose=0),
        student.predict(x, verbose=0),
    )
    scheduled = [6.0, 3.75, 1.5]
    assert history.history["temperature"] == scheduled
    for got, temperature in zip(history.history["distillation_loss"], scheduled):
        # output a at the scheduled temperature, output b still at 3
        expected = np_kl(t_a, s_a, temperature) + np_kl(t_b, s_b, 3.0)
        assert got == pytest.approx(expected, rel=1e-4)
    assert driven.temperature == 1.5
    assert other.temperature == 3.0 and not other.temperature_is_variable


def test_temperature_schedule_loss_must_have_a_temperature():
    with pytest.raises(TypeError, match="`loss`"):
        kd.callbacks.TemperatureSchedule(
            lambda e: 2.0, loss=keras.losses.MeanSquaredError()
        )


def test_alpha_schedule_per_step_without_retracing(data):
    x, y = data
    d = _frozen_distiller()
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)  # trace before counting
    traces = _count_traces(d)
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(round(d.alpha, 6))

    schedule = kd.callbacks.AlphaSchedule(lambda step: 0.1 * (step % 10), per="step")
    d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[schedule, Watch()])
    assert seen == [round(0.1 * (i % 10), 6) for i in range(4, 12)]
    assert traces == []  # alpha was a variable all along: no new trace
    # One batch an epoch: total = alpha * distill + (1 - alpha) * hard, with
    # that step's alpha, each term recomputed in numpy.
    seen.clear()
    history = d.fit(
        x, y, epochs=3, batch_size=len(x), verbose=0, callbacks=[schedule, Watch()]
    )
    h = history.history
    assert seen == [0.2, 0.3, 0.4]  # steps 12, 13, 14 of the optimizer
    t, s = d.teacher.predict(x, verbose=0), d.student.predict(x, verbose=0)
    shifted = s - s.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    hard = -log_p[np.arange(len(y)), y].mean()
    distill = np_kl(t, s, 2.0)
    for i, alpha in enumerate(seen):
        expected = alpha * distill + (1 - alpha) * hard
        assert h["loss"][i] == pytest.approx(expected, rel=1e-4)


def test_linear_and_cosine_helpers():
    linear = kd.callbacks.linear(1.0, 0.0, 4)
    assert [linear(t) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    f = kd.callbacks.cosine(8.0, 2.0, 10)
    assert f(0) == pytest.approx(8.0) and f(5) == pytest.approx(5.0)
    assert f(10) == pytest.approx(2.0) and f(20) == pytest.approx(2.0)
    assert f(2) == pytest.approx(2.0 + 6.0 * (1 + np.cos(np.pi * 0.2)) / 2)
    for make in (kd.callbacks.linear, kd.callbacks.cosine):
        with pytest.raises(ValueError, match="`duration`"):
            make(1.0, 0.0, 0)
        with pytest.raises(TypeError, match="`duration`"):
            make(1.0, 0.0, 2.5)


def test_schedules_reject_bad_values(data):
    x, y = data
    d = _frozen_distiller()
    with pytest.raises(ValueError, match="`alpha`"):
        d.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[kd.callbacks.AlphaSchedule(lambda e: 2.0)],
        )
    with pytest.raises(ValueError, match="`temperature`"):
        d.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[kd.callbacks.TemperatureSchedule(lambda e: -1.0)],
        )
    with pytest.raises(ValueError, match="`per`"):
        kd.callbacks.AlphaSchedule(lambda e: 0.5, per="batch")
    with pytest.raises(TypeError, match="`schedule`"):
        kd.callbacks.TemperatureSchedule(4.0)
