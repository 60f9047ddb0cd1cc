"""Tests for `keras_kd.tune`: the search, its baseline floor and its checks.

The data are rigged so that the right answer is known without the search:
labels are `argmax(x @ W)`, and the teacher is a linear layer with weights
`10 * W` (always right) or with its classes rotated (always wrong).
"""

import dataclasses
import inspect
import sys

import numpy as np
import pytest

from _tune_rig import N_IN, N_OUT, hard_loss, mapping, split, student_fn
from keras_kd.backend import keras, tf

keras_tuner = pytest.importorskip("keras_tuner")

from keras_kd.tune import TuneBudget, TuneResult, tune  # noqa: E402

SEED = 3
LR = 0.05


def _linear_teacher(rotate=0):
    """Right on every input (rotate=0), or wrong on every input."""
    teacher = keras.Sequential([keras.Input((N_IN,)), keras.layers.Dense(N_OUT)])
    w = np.roll(mapping(), rotate, axis=1) * 10.0
    teacher.set_weights([w, np.zeros(N_OUT, "float32")])
    return teacher


def _accuracy(model, x, y):
    return float((model.predict(x, verbose=0).argmax(-1) == y).mean())


SPACE = {
    "objective": ["kl", "dist"],
    "temperature": [1.0, 4.0],
    "alpha": [0.9, 1.0],
    "mixup": [False, True],
}


def _run(teacher, train, val, **kwargs):
    settings = dict(
        loss=hard_loss(),
        optimizer=keras.optimizers.Adam(LR),
        max_epochs=3,
        factor=3,
        search_space=SPACE,
        batch_size=64,
        seed=SEED,
    )
    if "budget" in kwargs:  # the budget in one argument, not the keywords
        del settings["max_epochs"], settings["factor"]
    settings.update(kwargs)
    return tune(teacher, student_fn, train, val, **settings)


@pytest.fixture(scope="module")
def good_teacher_run():
    """A perfect teacher; training labels shuffled, so that labels alone
    teach nothing and distillation must win."""
    keras.utils.set_random_seed(0)
    x, y = split(256, 1)
    y_shuffled = np.random.default_rng(2).permutation(y)
    val = split(128, 3)
    teacher = _linear_teacher()
    result = _run(teacher, (x, y_shuffled), val)
    # The teacher is frozen: bit-identical after the search.
    np.testing.assert_array_equal(teacher.get_weights()[0], mapping() * 10.0)
    return result, val


def test_baseline_is_a_trial_trained_for_max_epochs(good_teacher_run):
    result, _ = good_teacher_run
    baseline = result.trials[0]
    assert baseline["is_baseline"] and baseline["trial_id"] == "baseline"
    assert baseline["alpha"] == 0.0 and baseline["objective"] is None
    assert baseline["epochs"] == 3 and baseline["initial_epoch"] == 0
    assert [t["is_baseline"] for t in result.trials].count(True) == 1
    assert result.baseline_score == baseline["score"]


def test_distillation_wins_with_a_perfect_teacher(good_teacher_run):
    result, (xv, yv) = good_teacher_run
    assert isinstance(result, TuneResult)
    assert not result.config["is_baseline"]
    # The returned trial is the validation-best one ...
    assert result.best_score == max(t["score"] for t in result.trials)
    # ... its score is the returned student's, recomputed here ...
    assert _accuracy(result.student, xv, yv) == pytest.approx(result.best_score)
    # ... and the rig makes it clearly better than labels alone.
    assert result.best_score >= result.baseline_score + 0.2
    assert result.config["alpha"] in (0.9, 1.0)


def test_hyperband_promotes_trials_with_more_epochs(good_teacher_run):
    result, _ = good_teacher_run
    distilled = result.trials[1:]
    # max_epochs=3, factor=3: a bracket of 3 one-epoch trials whose best goes
    # on to 3 epochs, and a bracket of 2 three-epoch trials.
    assert sorted(t["epochs"] for t in distilled) == [1, 1, 1, 3, 3, 3]
    promoted = [t for t in distilled if t["initial_epoch"] > 0]
    assert len(promoted) == 1
    keys = ("objective", "temperature", "alpha", "mixup")
    parents = [
        t
        for t in distilled
        if t["epochs"] == promoted[0]["initial_epoch"]
        and all(t[k] == promoted[0][k] for k in keys)
    ]
    assert parents, "a promoted trial continues an earlier one-epoch trial"
    best_first_round = max(
        (t for t in distilled if t["epochs"] == 1), key=lambda t: t["score"]
    )
    assert all(best_first_round[k] == promoted[0][k] for k in keys)


def test_table_lists_every_trial(good_teacher_run):
    result, _ = good_teacher_run
    lines = result.table().splitlines()
    assert len(lines) == 1 + len(result.trials)
    assert "val_accuracy" in lines[0]
    for line, trial in zip(lines[1:], result.trials):
        assert line.split()[0] == trial["trial_id"]
        assert f"{trial['score']:.4f}" in line
    assert sum("<- returned" in line for line in lines) == 1
    assert "(labels only)" in lines[1]
    assert str(result) == result.table()
    assert {t["objective"] for t in result.trials[1:]} <= {"kl", "dist"}


def test_baseline_is_returned_when_the_teacher_is_wrong(capsys):
    """A teacher wrong on every input, clean labels: any distilled trial
    (alpha >= 0.9) learns the wrong classes, so the baseline must win; it is
    the student trained on the labels alone, as plain Keras trains it."""
    x, y = split(256, 1)
    xv, yv = split(128, 3)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(64)
    result = _run(_linear_teacher(rotate=1), train, val, max_trials=2, verbose=1)
    printed = capsys.readouterr().out.splitlines()
    ids = [t["trial_id"] for t in result.trials]
    assert [line.split()[2] for line in printed] == ids
    assert result.config["is_baseline"]
    assert len(result.trials) == 3
    assert all(t["score"] < result.baseline_score for t in result.trials[1:])
    assert _accuracy(result.student, xv, yv) == pytest.approx(result.baseline_score)

    keras.utils.set_random_seed(SEED)
    scratch = student_fn()
    scratch.compile(optimizer=keras.optimizers.Adam(LR), loss=hard_loss())
    keras.utils.set_random_seed(SEED)
    scratch.fit(train, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(scratch.get_weights(), result.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_seeded_search_is_reproducible_with_the_budget_in_either_form():
    """The same seeded search twice, its budget given once as keywords and
    once as a `TuneBudget`: the same trials, scores and student."""
    x, y = split(128, 1)
    val = split(64, 3)
    runs = [
        _run(_linear_teacher(), (x, y), val, max_trials=3, max_epochs=2),
        _run(_linear_teacher(), (x, y), val, budget=TuneBudget(2, max_trials=3)),
    ]
    keys = ("trial_id", "objective", "temperature", "alpha", "mixup", "epochs")
    first, second = ([tuple(t[k] for k in keys) for t in r.trials] for r in runs)
    assert first == second
    # the budget was read: the baseline trains max_epochs=2, not _run's 3
    assert [t["epochs"] for t in runs[1].trials][:1] == [2]
    assert max(t["epochs"] for t in runs[1].trials) == 2
    np.testing.assert_allclose(
        [t["score"] for t in runs[0].trials],
        [t["score"] for t in runs[1].trials],
        atol=1e-6,
    )
    for a, b in zip(runs[0].student.get_weights(), runs[1].student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_budget_defaults_are_tunes_defaults():
    defaults = inspect.signature(tune).parameters
    for field in dataclasses.fields(TuneBudget):
        assert getattr(TuneBudget(), field.name) == defaults[field.name].default


def test_student_fn_with_hyperparameters():
    def student_with_hp(hp):
        units = hp.Choice("units", [4, 16])
        return keras.Sequential(
            [keras.Input((N_IN,)), keras.layers.Dense(units), keras.layers.Dense(3)]
        )

    x, y = split(64, 1)
    result = tune(
        _linear_teacher(),
        student_with_hp,
        (x, y),
        split(32, 3),
        loss=hard_loss(),
        max_epochs=1,
        search_space={"objective": "dkd", "temperature": 2.0, "alpha": 0.5},
        seed=0,
    )
    assert result.trials[0]["hyperparameters"] == {"units": 4}  # the default
    for trial in result.trials[1:]:
        assert trial["hyperparameters"]["units"] in (4, 16)
        assert trial["objective"] == "dkd" and trial["temperature"] == 2.0


def test_monitor_min_on_the_hard_loss():
    """Mode min with the strict rule (`margin=0.0`): the lowest loss wins.
    (The default paired margin is tested in test_tune_selection.py.)"""
    x, y = split(64, 1)
    result = _run(
        _linear_teacher(),
        (x, y),
        split(32, 3),
        monitor="val_hard_loss",
        mode="min",
        max_epochs=1,
        max_trials=2,
        margin=0.0,
    )
    assert result.selection == "fixed"
    assert result.best_score == min(t["score"] for t in result.trials)
    assert "val_hard_loss" in result.table().splitlines()[0]


# ---------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------

DATA = split(32, 1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"teacher": "teacher"}, TypeError, "`teacher`"),
        ({"student_fn": student_fn()}, TypeError, "`student_fn`"),
        ({"validation_data": None}, ValueError, "`validation_data`"),
        ({"train_data": np.zeros((4, 8))}, TypeError, "`train_data`"),
        ({"monitor": "val_loss"}, ValueError, "val_hard_loss"),
        ({"monitor": "accuracy"}, ValueError, "`monitor`"),
        ({"mode": "auto"}, ValueError, "`mode`"),
        ({"max_epochs": 0}, ValueError, "`max_epochs`"),
        ({"factor": 1}, ValueError, "`factor`"),
        ({"max_trials": 2.5}, TypeError, "`max_trials`"),
        ({"seed": "0"}, TypeError, "`seed`"),
        ({"optimizer": 3}, TypeError, "`optimizer`"),
        ({"optimizer": "no_such_optimizer"}, ValueError, "`optimizer`"),
        ({"metrics": 3}, TypeError, "`metrics`"),
        ({"search_space": [1]}, TypeError, "`search_space`"),
        ({"search_space": {"beta": [1]}}, ValueError, "unknown keys"),
        ({"search_space": {"objective": ["mse"]}}, ValueError, "objective"),
        ({"search_space": {"alpha": [0.0, 0.5]}}, ValueError, "baseline"),
        ({"search_space": {"alpha": [1.5]}}, ValueError, "alpha"),
        ({"search_space": {"temperature": [0]}}, ValueError, "temperature"),
        ({"search_space": {"mixup": ["yes"]}}, TypeError, "mixup"),
        ({"mixup_alpha": 0}, ValueError, "`mixup_alpha`"),
        ({"budget": {"max_epochs": 3}}, TypeError, "`budget`.*TuneBudget"),
        (
            {"budget": TuneBudget(max_epochs=3), "max_trials": 2},
            ValueError,
            r"budget is given twice.*max_trials=2",
        ),
    ],
)
def test_bad_arguments_are_refused_before_training(kwargs, error, match):
    arguments = dict(
        teacher=_linear_teacher(),
        student_fn=student_fn,
        train_data=DATA,
        validation_data=DATA,
        loss=hard_loss(),
    )
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        tune(**arguments)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_epochs": 0}, ValueError, r"`max_epochs`.*Received: max_epochs=0"),
        ({"factor": 1}, ValueError, r"`factor`.*Received: factor=1"),
        ({"hyperband_iterations": 0}, ValueError, "`hyperband_iterations`"),
        ({"max_trials": 2.5}, TypeError, r"`max_trials`.*max_trials=2\.5"),
    ],
)
def test_bad_budget_is_refused_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        TuneBudget(**kwargs)


def test_student_fn_returning_the_same_model_is_refused():
    model = student_fn()
    with pytest.raises(ValueError, match="new model each call"):
        tune(_linear_teacher(), lambda: model, DATA, DATA, loss=hard_loss())


def test_monitor_that_is_not_logged_names_what_is():
    with pytest.raises(ValueError, match="val_accuracy"):
        tune(
            _linear_teacher(),
            student_fn,
            DATA,
            DATA,
            loss=hard_loss(),
            monitor="val_auc",
            max_epochs=1,
        )


def test_existing_project_needs_overwrite(tmp_path):
    (tmp_path / "keras_kd_tune").mkdir()
    with pytest.raises(ValueError, match="overwrite=True"):
        tune(
            _linear_teacher(),
            student_fn,
            DATA,
            DATA,
            loss=hard_loss(),
            directory=str(tmp_path),
        )


def test_missing_keras_tuner_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)
    with pytest.raises(ImportError, match=r"keras-kd\[tune\]"):
        tune(_linear_teacher(), student_fn, DATA, DATA, loss=hard_loss())


def test_the_generative_objectives_are_searchable_by_name():
    x, y = split(64, 1)
    result = tune(
        _linear_teacher(),
        lambda: keras.Sequential([keras.Input((N_IN,)), keras.layers.Dense(3)]),
        (x, y),
        split(32, 3),
        loss=hard_loss(),
        max_epochs=1,
        search_space={"objective": ["jsd", "skew_reverse_kl"], "temperature": 1.0},
        max_trials=2,
        seed=0,
    )
    searched = {t["objective"] for t in result.trials[1:]}
    assert searched and searched <= {"jsd", "skew_reverse_kl"}
