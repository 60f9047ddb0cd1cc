"""The issue-3 examples run end to end on scikit-learn's digits."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_self_distillation_example_reports_every_generation(capsys):
    out = _load("self_distillation").main(
        ["--dataset", "digits", "--seeds", "0", "--generations", "3", "--epochs", "2",
         "--hidden", "16", "--batch-size", "64"])
    accs = out["accuracy"][0]
    assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)
    assert accs[0] > 0.3  # generation 1 learnt something from the labels
    assert "generation 3 vs 1" in capsys.readouterr().out


def test_online_distillation_example_reports_peers_and_students(capsys):
    out = _load("online_distillation").main(
        ["--dataset", "digits", "--seeds", "0", "--epochs", "2", "--peer-hidden", "16",
         "--teacher-hidden", "32", "--student-hidden", "8", "--batch-size", "64"])
    r = out["results"][0]
    assert len(r["mutual"]) == 2 and len(r["independent"]) == 2
    for value in r["mutual"] + r["independent"] + [r["online_student"], r["student_alone"]]:
        assert 0.0 <= value <= 1.0
    assert "Deep Mutual Learning" in capsys.readouterr().out
