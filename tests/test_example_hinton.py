"""Tests of examples/hinton_mnist.py on scikit-learn's bundled 8x8 digits."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from keras_kd import data

pytest.importorskip("sklearn")

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hinton_mnist.py"

_TINY = (
    "--dataset digits --seeds 3 --teacher-epochs 8 --student-epochs 8 "
    "--teacher-hidden 64 --student-hidden 16 --dropout 0.1 --input-dropout 0.0 "
    "--jitter 1 --temperature 4 --alpha 0.7 --learning-rate 0.003 --batch-size 32"
).split()


def _load_example():
    spec = importlib.util.spec_from_file_location("hinton_mnist", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load_example()


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--seeds" in out and "--data-dir" in out and "--dataset" in out


def test_results_have_one_entry_per_seed(results):
    assert results["dataset"] == "digits"
    assert results["split"] == "test"
    assert results["seeds"] == [3]
    assert [run["seed"] for run in results["per_seed"]] == [3]
    assert results["config"]["student_hidden"] == 16
    assert results["config"]["temperature"] == 4.0
    assert results["wall_time_s"] > 0
    assert results["per_seed"][0]["wall_time_s"] <= results["wall_time_s"]


def test_errors_are_counts_of_the_test_set(results):
    n = results["n_eval"]
    assert n == len(data.load_digits()[1][1])  # kd.data's digits test split
    for run in results["per_seed"]:
        assert set(run["errors"]) == {"teacher", "scratch", "distilled"}
        for errors in run["errors"].values():
            assert isinstance(errors, int)
            assert 0 <= errors <= n
            # 10 classes: chance makes about 0.9 * n errors; all three learn.
            assert errors < n / 2


def test_mean_and_gap_follow_from_the_per_seed_errors(results):
    run = results["per_seed"][0]
    errors = run["errors"]
    for name in ("teacher", "scratch", "distilled"):
        assert results["mean_errors"][name] == pytest.approx(errors[name])
    t, s, d = errors["teacher"], errors["scratch"], errors["distilled"]
    if s > t:
        expected = (s - d) / (s - t)
        assert run["gap_closed"] == pytest.approx(expected)
        assert results["gap_closed"] == pytest.approx(expected)
    else:
        assert run["gap_closed"] is None
        assert results["gap_closed"] is None


def test_students_differ_only_by_the_distillation_term(example):
    # With alpha=0 the distiller trains on the hard labels alone: from the
    # same initial weights and batches it must match the scratch student.
    args = [a if a != "0.7" else "0.0" for a in _TINY]
    assert "--alpha" in args and args[args.index("--alpha") + 1] == "0.0"
    run = example.main(args)["per_seed"][0]
    assert run["errors"]["distilled"] == run["errors"]["scratch"]


def test_printed_table_shows_the_errors(example, results, capsys):
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    n = len(data.load_digits()[1][1])
    assert f"digits test errors out of {n} (seeds 3)" in lines
    errors = results["per_seed"][0]["errors"]
    seed_row = next(line for line in lines if line.startswith("seed 3"))
    assert seed_row.split()[2:5] == [
        str(errors["teacher"]),
        str(errors["scratch"]),
        str(errors["distilled"]),
    ]
    paper_row = next(line for line in lines if line.startswith("paper"))
    assert paper_row.split()[1:] == ["67", "146", "74", "91%"]
    assert any(line.startswith("wall time:") for line in lines)


def test_gap_closed_matches_the_paper(example):
    # Hinton et al. 2015: teacher 67, scratch 146, distilled 74 errors.
    assert example.gap_closed(67, 146, 74) == pytest.approx(72 / 79)
    assert example.gap_closed(100, 200, 200) == 0.0
    assert example.gap_closed(100, 200, 100) == 1.0
    assert example.gap_closed(150, 150, 140) is None  # no gap to close
    assert example.gap_closed(160, 150, 140) is None


def test_errors_are_counted_on_the_test_set_kd_data_defines(example):
    train, (x_eval, y_eval) = example.evaluation_data("digits")
    (x_train, y_train), (x_test, y_test) = data.load_digits()
    np.testing.assert_array_equal(x_eval, x_test)
    np.testing.assert_array_equal(y_eval, y_test)
    np.testing.assert_array_equal(train[0], x_train)
    np.testing.assert_array_equal(train[1], y_train)


def test_validation_split_is_carved_from_the_training_set(example):
    (x_train, y_train), _ = data.load_digits()
    (x_fit, y_fit), (x_val, y_val) = example.evaluation_data("digits", validation=True)
    assert len(x_val) == 300 and len(x_fit) + len(x_val) == len(x_train)
    np.testing.assert_array_equal(np.concatenate([x_fit, x_val]), x_train)
    np.testing.assert_array_equal(np.concatenate([y_fit, y_val]), y_train)


def test_unknown_dataset_is_rejected(example, capsys):
    with pytest.raises(SystemExit) as excinfo:
        example.main(["--dataset", "cifar10"])
    assert excinfo.value.code == 2
    assert "invalid choice: 'cifar10'" in capsys.readouterr().err
