"""Tests for `keras_kd.chain.distill_chain` (teacher assistants).

Rigged data: inputs `x`, the teacher right on `argmax(x @ W)`; the labels
follow another mapping `argmax(x @ W2)`. A stage trained with `alpha=0`
learns the labels' mapping, one with `alpha=1` its own teacher's, which
tells, from the last student, which model taught it.
"""

import numpy as np
import pytest

from keras_kd.backend import keras, tf
from keras_kd.chain import ChainResult, distill_chain

N_IN, N_OUT = 8, 3
LR = 0.05


def _mapping(seed):
    return np.random.default_rng(seed).normal(size=(N_IN, N_OUT)).astype("float32")


def _inputs(n, seed):
    return np.random.default_rng(seed).normal(size=(n, N_IN)).astype("float32")


def _classes(x, seed):
    return (x @ _mapping(seed)).argmax(-1).astype("int64")


def _teacher():
    teacher = keras.Sequential(
        [keras.Input((N_IN,)), keras.layers.Dense(N_OUT)], name="teacher"
    )
    teacher.set_weights([_mapping(7) * 10.0, np.zeros(N_OUT, "float32")])
    return teacher


def _mlp(hidden, name):
    return keras.Sequential(
        [
            keras.Input((N_IN,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(N_OUT),
        ],
        name=name,
    )


def _hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _agreement(a, b, x):
    pa = a.predict(x, verbose=0).argmax(-1)
    pb = b.predict(x, verbose=0).argmax(-1)
    return float((pa == pb).mean())


class _Recorder(keras.callbacks.Callback):
    """Records, per stage, the Distiller's teacher, student, optimizer and
    alpha, and the teacher's weights when the stage begins and ends."""

    def __init__(self):
        super().__init__()
        self.stages = []

    def on_train_begin(self, logs=None):
        d = self.model
        self.stages.append(
            {
                "teacher": d.teacher,
                "student": d.student,
                "optimizer": d.optimizer,
                "alpha": d.alpha,
                "teacher_begin": [w.copy() for w in d.teacher.get_weights()],
                "student_begin": [w.copy() for w in d.student.get_weights()],
            }
        )

    def on_train_end(self, logs=None):
        self.stages[-1]["teacher_end"] = self.model.teacher.get_weights()


@pytest.fixture(scope="module")
def chain_run():
    keras.utils.set_random_seed(0)
    x = _inputs(512, 1)
    y = _classes(x, 11)  # the labels' mapping, not the teacher's
    xv = _inputs(256, 2)
    teacher = _teacher()
    assistant, student = _mlp(32, "assistant"), _mlp(16, "student")
    recorder = _Recorder()
    result = distill_chain(
        [teacher, assistant, student],
        (x, y),
        validation_data=(xv, _classes(xv, 11)),
        epochs=[12, 15],
        loss=_hard_loss(),
        alpha=[0.0, 1.0],
        optimizer=keras.optimizers.Adam(LR),  # an instance: copied per stage
        batch_size=64,
        callbacks=[recorder],
        seed=0,
    )
    return result, recorder, (teacher, assistant, student), xv


def test_stages_run_in_order_each_teacher_the_previous_stage(chain_run):
    result, recorder, (teacher, assistant, student), _ = chain_run
    assert isinstance(result, ChainResult)
    assert [s.index for s in result.stages] == [1, 2]
    assert [(s.teacher, s.student) for s in result.stages] == [
        (teacher, assistant),
        (assistant, student),
    ]
    assert [r["teacher"] for r in recorder.stages] == [teacher, assistant]
    assert result.models == [teacher, assistant, student]
    assert result.student is student
    # Stage 2 began from the assistant stage 1 had trained ...
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(recorder.stages[0]["student_begin"], assistant.get_weights())
    ]
    assert all(changed)
    for a, b in zip(recorder.stages[1]["teacher_begin"], assistant.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_each_teacher_is_frozen_bit_identical(chain_run):
    _, recorder, (teacher, assistant, student), _ = chain_run
    for stage in recorder.stages:
        for a, b in zip(stage["teacher_begin"], stage["teacher_end"]):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(teacher.get_weights()[0], _mapping(7) * 10.0)
    assert not teacher.trainable and not assistant.trainable
    assert student.trainable  # the last model is left trainable


def test_each_stage_learns_from_its_own_teacher(chain_run):
    """Stage 1 (alpha=0) learns the labels' mapping, not the teacher's;
    stage 2 (alpha=1) learns the assistant, so it agrees with the labels'
    mapping too, which only the assistant could have taught it."""
    _, _, (teacher, assistant, student), xv = chain_run
    yv = _classes(xv, 11)
    assistant_acc = float((assistant.predict(xv, verbose=0).argmax(-1) == yv).mean())
    assert assistant_acc >= 0.85
    assert _agreement(student, assistant, xv) >= 0.85
    assert _agreement(student, assistant, xv) > _agreement(student, teacher, xv) + 0.3


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_per_stage_epochs_alpha_and_validation_metrics(chain_run):
    """Each stage trains its own epochs with its own alpha, and its metrics
    are its model evaluated on the validation data, recomputed in numpy."""
    result, recorder, (_, assistant, student), xv = chain_run
    yv = _classes(xv, 11)
    assert [len(s.history.history["loss"]) for s in result.stages] == [12, 15]
    assert [r["alpha"] for r in recorder.stages] == [0.0, 1.0]
    for stage, model in zip(result.stages, (assistant, student)):
        assert "val_accuracy" in stage.history.history
        logits = model.predict(xv, verbose=0)  # unchanged since its stage
        accuracy = float((logits.argmax(-1) == yv).mean())
        hard = float(-_log_softmax(logits)[np.arange(len(yv)), yv].mean())
        assert stage.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert stage.metrics["hard_loss"] == pytest.approx(hard, rel=1e-4)
    # loss = alpha * distillation + (1 - alpha) * hard, with each stage's alpha
    first, second = (s.metrics for s in result.stages)
    assert first["loss"] == pytest.approx(first["hard_loss"], rel=1e-5)
    assert second["loss"] == pytest.approx(second["distillation_loss"], rel=1e-5)
    # ... which the two terms, far apart here, tell
    assert first["distillation_loss"] != pytest.approx(first["loss"], rel=0.2)
    assert second["hard_loss"] != pytest.approx(second["loss"], rel=0.2)
    lines = result.table().splitlines()
    assert len(lines) == 3 and "accuracy" in lines[0]
    assert lines[1].split()[:3] == ["1", "teacher", "assistant"]
    assert f"{first['accuracy']:.4f}" in lines[1]


def test_each_stage_gets_a_fresh_optimizer(chain_run):
    _, recorder, _, _ = chain_run
    first, second = (r["optimizer"] for r in recorder.stages)
    assert first is not second
    for optimizer in (first, second):
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert float(optimizer.learning_rate.numpy()) == pytest.approx(LR)


def test_datasets_defaults_and_one_value_for_every_stage(capsys):
    x = _inputs(64, 1)
    ds = tf.data.Dataset.from_tensor_slices((x, _classes(x, 11))).batch(32)
    models = [_teacher(), _mlp(8, "a1"), _mlp(8, "a2"), _mlp(4, "s")]
    recorder = _Recorder()
    result = distill_chain(
        models,
        ds,
        epochs=2,
        loss=_hard_loss(),
        alpha=0.5,
        callbacks=[recorder],
        verbose=1,
    )
    printed = capsys.readouterr().out
    assert "stage 3 (a2 -> s)" in printed
    assert [len(s.history.history["loss"]) for s in result.stages] == [2, 2, 2]
    assert [r["alpha"] for r in recorder.stages] == [0.5, 0.5, 0.5]
    assert [r["student"] for r in recorder.stages] == models[1:]
    # Without validation data the metrics are the last epoch's logs.
    for stage in result.stages:
        assert stage.metrics["loss"] == stage.history.history["loss"][-1]


def test_optimizer_factory_returning_one_instance_is_refused():
    x = _inputs(32, 1)
    shared = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="same optimizer twice"):
        distill_chain(
            [_teacher(), _mlp(4, "a"), _mlp(4, "s")],
            (x, _classes(x, 11)),
            loss=_hard_loss(),
            optimizer=lambda: shared,
        )


def _linear_student():
    student = keras.Sequential(
        [keras.Input((N_IN,)), keras.layers.Dense(N_OUT)], name="linear"
    )
    student.set_weights([_mapping(5), np.linspace(-0.1, 0.1, N_OUT, dtype="float32")])
    return student


def _sgd_step(student, x, y, learning_rate):
    """One full-batch SGD step on the cross-entropy, in numpy."""
    kernel, bias = student.get_weights()
    probs = np.exp(_log_softmax(x @ kernel + bias))
    error = (probs - np.eye(N_OUT)[y]) / len(y)
    return [kernel - learning_rate * x.T @ error, bias - learning_rate * error.sum(0)]


SGD_0_1 = keras.optimizers.SGD(0.1)


@pytest.mark.parametrize(
    "optimizer, learning_rate",
    [
        (keras.optimizers.serialize(keras.optimizers.SGD(0.1)), 0.1),
        (lambda: keras.optimizers.SGD(0.1), 0.1),
        (SGD_0_1, 0.1),
        ("sgd", 0.01),  # Keras's default learning rate
    ],
    ids=["config", "factory", "instance", "name"],
)
def test_each_optimizer_form_trains_with_its_settings(optimizer, learning_rate):
    """One stage, alpha=0, one full batch: the student takes exactly one
    SGD step on the labels with the given learning rate."""
    x = _inputs(32, 1)
    y = _classes(x, 11)
    student = _linear_student()
    expected = _sgd_step(student, x, y, learning_rate)
    distill_chain(
        [_teacher(), student],
        (x, y),
        loss=_hard_loss(),
        alpha=0.0,
        optimizer=optimizer,
        batch_size=len(x),
    )
    for got, want in zip(student.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(SGD_0_1.iterations.numpy()) == 0  # an instance is copied, unused


X = _inputs(16, 1)
DATA = (X, _classes(X, 11))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"models": "abc"}, TypeError, "`models`"),
        ({"models": [None]}, ValueError, "at least two"),
        ({"models": [1, 2]}, TypeError, r"models\[0\]"),
        ({"epochs": [1, 2, 3]}, ValueError, "one value per stage"),
        ({"epochs": 0}, ValueError, "`epochs`"),
        ({"epochs": [1, 1.5]}, TypeError, r"epochs\[1\]"),
        ({"alpha": 1.5}, ValueError, "`alpha`"),
        ({"alpha": [0.5, "x"]}, TypeError, r"alpha\[1\]"),
        ({"optimizer": 3}, TypeError, "`optimizer`"),
        ({"optimizer": "no_such_optimizer"}, ValueError, "`optimizer`"),
        ({"train_data": X}, TypeError, "`train_data`"),
        ({"train_data": (X, DATA[1][:3])}, ValueError, "`train_data`"),
        ({"validation_data": [X]}, TypeError, "`validation_data`"),
        ({"metrics": 3}, TypeError, "`metrics`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"seed": -1}, ValueError, "`seed`"),
    ],
)
def test_bad_arguments_are_refused_before_training(kwargs, error, match):
    arguments = dict(
        models=[_teacher(), _mlp(4, "a"), _mlp(4, "s")],
        train_data=DATA,
        loss=_hard_loss(),
    )
    arguments.update(kwargs)
    models = arguments.pop("models")
    before = [m.get_weights() for m in models if isinstance(m, keras.Model)]
    with pytest.raises(error, match=match):
        distill_chain(models, **arguments)
    after = [m.get_weights() for m in models if isinstance(m, keras.Model)]
    for a, b in zip(before, after):
        for wa, wb in zip(a, b):
            np.testing.assert_array_equal(wa, wb)


def test_the_same_model_twice_is_refused():
    model = _mlp(4, "a")
    with pytest.raises(ValueError, match="distinct models"):
        distill_chain([_teacher(), model, model], DATA, loss=_hard_loss())
