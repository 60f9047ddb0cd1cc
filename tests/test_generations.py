"""The plain-Python generation plan of SelfDistillation, without Keras.

References are computed independently: the generation of an epoch from
integer division, the best generation from sorted lists, directions from
what Keras's own callbacks do.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from keras_kd.callbacks.generations import GenerationPlan, monitor_mode, per_generation

_GENERATIONS_PY = (
    Path(__file__).resolve().parents[1] / "keras_kd" / "callbacks" / "generations.py"
)


def _check(value, argument):
    if not 0 <= value <= 1:
        raise ValueError(f"bad {argument}")
    return float(value)


def test_the_plan_needs_neither_tensorflow_nor_keras():
    # Load the file on its own, as a module outside the package: importing it
    # must not import TensorFlow or Keras (keras_kd/__init__ would).
    path = str(_GENERATIONS_PY)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('plan', {path!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "plan = module.GenerationPlan(3, 2)\n"
        "assert plan.generation_of_epoch(5) == 3\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'numpy') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("generations, per", [(1, 1), (3, 2), (4, 3), (2, 5)])
def test_generation_of_each_epoch(generations, per):
    plan = GenerationPlan(generations, per)
    epochs = range(generations * per + 3)  # past the end: the last generation
    expected = [min(e // per + 1, generations) for e in epochs]
    assert [plan.generation_of_epoch(e) for e in epochs] == expected
    for g in range(1, generations + 1):
        assert plan.first_epoch(g) == (g - 1) * per
        assert plan.last_epoch(g) == g * per - 1
    assert [plan.is_last(g) for g in range(1, generations + 1)] == [False] * (
        generations - 1
    ) + [True]


def test_ending_early_moves_the_later_generations_forward():
    plan = GenerationPlan(3, 4)  # planned: 0-3, 4-7, 8-11
    assert plan.end_early(1, 1) == 2
    expected = [1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert [plan.generation_of_epoch(e) for e in range(10)] == expected
    assert (plan.first_epoch(1), plan.last_epoch(1)) == (0, 3)  # its own plan kept
    assert (plan.first_epoch(2), plan.last_epoch(2)) == (2, 5)
    assert plan.end_early(2, 2) == 3
    assert (plan.first_epoch(3), plan.last_epoch(3)) == (3, 6)
    assert plan.end_early(3, 6) == 0  # ending on time moves nothing


def test_teachers_of_each_generation():
    single, ensemble = GenerationPlan(4, 1), GenerationPlan(4, 1, ensemble=True)
    assert [single.teachers(g) for g in range(1, 5)] == [[], [1], [2], [3]]
    assert [ensemble.teachers(g) for g in range(1, 5)] == [[], [1], [1, 2], [1, 2, 3]]


def test_settings_per_generation():
    assert per_generation(None, 3, "alpha", _check) == [None, None, None]
    assert per_generation(0.5, 3, "alpha", _check) == [0.5, 0.5, 0.5]
    assert per_generation([None, 0.2, 1], 3, "alpha", _check) == [None, 0.2, 1.0]
    with pytest.raises(ValueError, match=r"one value per generation \(3\)"):
        per_generation([0.1, 0.2], 3, "alpha", _check)
    with pytest.raises(ValueError, match=r"alpha\[1\]"):  # the entry is named
        per_generation([0.1, 2.0, 0.3], 3, "alpha", _check)
    plan = GenerationPlan(2, 1, alphas=[None, 0.3], temperatures=[4.0, 2.0])
    assert [plan.alpha(1), plan.alpha(2)] == [None, 0.3]
    assert [plan.temperature(1), plan.temperature(2)] == [4.0, 2.0]
    with pytest.raises(ValueError, match="one entry per generation"):
        GenerationPlan(3, 1, alphas=[0.5])


@pytest.mark.parametrize(
    "monitor, expected",
    [
        ("loss", "min"),
        ("val_loss", "min"),
        ("distillation_loss", "min"),
        ("val_hard_loss", "min"),
        ("val_mean_squared_error", "min"),
        ("accuracy", "max"),
        ("val_accuracy", "max"),
        ("val_sparse_categorical_accuracy", "max"),
        ("auc", "max"),
    ],
)
def test_auto_mode_knows_losses_and_keras_metrics(monitor, expected):
    assert monitor_mode(monitor) == expected


@pytest.mark.parametrize("monitor", ["score", "val_f1", "val_my_metric", "val_"])
def test_auto_mode_refuses_to_guess(monitor):
    with pytest.raises(ValueError, match="mode='max'") as info:
        monitor_mode(monitor)
    assert repr(monitor) in str(info.value)
    assert monitor_mode(monitor, "max") == "max"
    assert monitor_mode(monitor, "min") == "min"


def test_monitor_and_mode_are_checked():
    with pytest.raises(ValueError, match="`mode`"):
        monitor_mode("val_loss", "best")
    with pytest.raises(TypeError, match="`monitor`"):
        monitor_mode(3)
    with pytest.raises(ValueError, match="mode='max'"):
        GenerationPlan(2, 1, monitor="score")
    assert GenerationPlan(2, 1, monitor=None).mode is None  # nothing to resolve


def _plan_with(values, mode, monitor="score"):
    plan = GenerationPlan(len(values), 2, monitor=monitor, mode=mode)
    for g, value in enumerate(values, start=1):
        plan.record(g, 2 * g - 1, {monitor: value, "loss": 1.0})
    return plan


@pytest.mark.parametrize(
    "values", [[0.2, 0.9, 0.5], [0.7, 0.1, 0.4, 0.3], [0.5], [3.0, 1.0, 2.0]]
)
def test_best_generation_by_min_and_max(values):
    assert _plan_with(values, "max").best_generation() == values.index(max(values)) + 1
    assert _plan_with(values, "min").best_generation() == values.index(min(values)) + 1


def test_best_generation_ties_go_to_the_earliest_and_nan_never_wins():
    assert _plan_with([0.5, 0.9, 0.9], "max").best_generation() == 2
    assert _plan_with([0.4, 0.4, 0.9], "min").best_generation() == 1
    nan = float("nan")
    assert _plan_with([nan, 0.3, 0.2], "max").best_generation() == 2
    assert _plan_with([0.3, nan, 0.2], "min").best_generation() == 3


def test_a_missing_monitor_is_an_error_when_recorded():
    plan = GenerationPlan(2, 1, monitor="val_loss")
    with pytest.raises(ValueError, match="val_loss") as info:
        plan.record(1, 0, {"loss": 0.5, "accuracy": 0.8})
    message = str(info.value)
    assert "['accuracy', 'loss']" in message and "validation_data" in message
    assert plan.results == []  # nothing recorded
    unmonitored = GenerationPlan(2, 1)
    unmonitored.record(1, 0, {"loss": 0.5})  # no monitor: nothing is required
    with pytest.raises(ValueError, match="no `monitor`"):
        unmonitored.best_generation()


def test_results_and_state_survive_a_json_round_trip():
    plan = GenerationPlan(3, 4, monitor="val_loss")
    plan.end_early(1, 2)
    plan.record(1, 2, {"val_loss": 0.75, "loss": 0.5})
    assert plan.results == [
        {
            "generation": 1,
            "first_epoch": 0,
            "last_epoch": 2,
            "metrics": {"val_loss": 0.75, "loss": 0.5},
        }
    ]
    assert plan.is_finished(1) and not plan.is_finished(2)
    state = json.loads(json.dumps(plan.state()))
    assert state["starts"] == [0, 3, 7] and state["finished"] == [1]

    resumed = GenerationPlan(3, 4, monitor="val_loss")
    resumed.restore(state)
    assert [resumed.generation_of_epoch(e) for e in range(8)] == [1] * 3 + [2] * 4 + [3]
    assert resumed.results == plan.results
    assert resumed.finished == [1]
    with pytest.raises(ValueError, match="same `generations`"):
        GenerationPlan(2, 4).restore(state)


def test_recording_a_generation_twice_keeps_one_result():
    plan = GenerationPlan(2, 1)
    plan.record(2, 1, {"loss": 2.0})
    plan.record(1, 0, {"loss": 1.0})
    plan.record(2, 1, {"loss": 3.0})
    assert [(r["generation"], r["metrics"]["loss"]) for r in plan.results] == [
        (1, 1.0),
        (2, 3.0),
    ]
