"""Tests of examples/hinton_mnist.py on scikit-learn's bundled 8x8 digits."""

import numpy as np
import pytest

from conftest import load_example, with_options
from keras_kd import data

pytest.importorskip("sklearn")


_TINY = (
    "--dataset digits --seeds 3 --teacher-epochs 8 --student-epochs 8 "
    "--consistent-epochs 8 --teacher-hidden 64 --student-hidden 16 "
    "--dropout 0.1 --input-dropout 0.0 --jitter 1 --temperature 4 --alpha 0.7 "
    "--learning-rate 0.003 --batch-size 32"
).split()

_STUDENTS = ("scratch", "distilled", "jittered", "consistent")


def _assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def _differ(a, b):
    return any(
        not np.array_equal(wa, wb) for wa, wb in zip(a.get_weights(), b.get_weights())
    )


@pytest.fixture(scope="module")
def example():
    return load_example("hinton_mnist")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--data-dir", "--dataset", "--consistent-epochs"):
        assert flag in out
    assert "--mixup ALPHA" in out


def test_results_have_one_entry_per_seed(results):
    assert results["dataset"] == "digits"
    assert results["split"] == "test"
    assert results["seeds"] == [3]
    assert [run["seed"] for run in results["per_seed"]] == [3]
    assert results["config"]["student_hidden"] == 16
    assert results["config"]["temperature"] == 4.0
    assert results["config"]["consistent_epochs"] == 8
    assert results["config"]["mixup"] is None
    assert results["wall_time_s"] > 0
    run = results["per_seed"][0]
    assert run["wall_time_s"] <= results["wall_time_s"]
    assert set(run["train_time_s"]) == {"teacher", *_STUDENTS}
    assert sum(run["train_time_s"].values()) <= run["wall_time_s"]


def test_errors_are_counts_of_the_test_set(results):
    n = results["n_eval"]
    (_, _), (x_test, y_test) = data.load_digits()
    assert n == len(y_test)  # kd.data's digits test split
    for run in results["per_seed"]:
        assert set(run["errors"]) == {"teacher", *_STUDENTS}
        for name, errors in run["errors"].items():
            assert isinstance(errors, int)
            # Recounted from the returned model's predictions.
            logits = run["models"][name].predict(x_test, verbose=0)
            assert errors == int(np.sum(np.argmax(logits, -1) != y_test))
            # 10 classes: chance makes about 0.9 * n errors; all five learn.
            assert errors < n / 2


def test_students_share_architecture_and_initial_weights(results):
    run = results["per_seed"][0]
    initial = run["initial_weights"]
    for name in _STUDENTS:
        model = run["models"][name]
        shapes = [w.shape for w in model.get_weights()]
        assert shapes == [w.shape for w in initial]
        # Trained: no student still holds the shared initial weights.
        assert any(
            not np.array_equal(w, i) for w, i in zip(model.get_weights(), initial)
        )
    assert (
        run["models"]["teacher"].count_params()
        > run["models"]["scratch"].count_params()
    )


def test_mean_and_gaps_follow_from_the_per_seed_errors(results):
    run = results["per_seed"][0]
    errors = run["errors"]
    for name in ("teacher", *_STUDENTS):
        assert results["mean_errors"][name] == pytest.approx(errors[name])
    t, s = errors["teacher"], errors["scratch"]
    for name in ("distilled", "jittered", "consistent"):
        if s > t:
            expected = (s - errors[name]) / (s - t)
            assert run["gaps"][name] == pytest.approx(expected)
            assert results["gaps"][name] == pytest.approx(expected)
        else:
            assert run["gaps"][name] is None
            assert results["gaps"][name] is None
    assert run["gap_closed"] == run["gaps"]["distilled"]
    assert results["gap_closed"] == results["gaps"]["distilled"]


def test_students_differ_only_by_the_distillation_term(example):
    # With alpha=0 a distiller trains on the hard labels alone: from the
    # same initial weights, batches, shifts and mixtures, each distilled
    # student must end bit-identical to its control.
    run = example.main(with_options(_TINY, alpha=0.0, mixup=0.4))["per_seed"][0]
    students = run["models"]
    _assert_same_weights(students["distilled"], students["scratch"])
    _assert_same_weights(students["consistent"], students["jittered"])
    assert run["errors"]["consistent"] == run["errors"]["jittered"]
    # The augmentation did change the training.
    assert _differ(students["jittered"], students["scratch"])


def test_without_jitter_the_control_is_the_scratch_student(example):
    # No jitter, no mixup and as many epochs: the control is trained exactly
    # as the scratch student, through `kd.Distiller(teacher=None)`.
    args = with_options(
        _TINY, jitter=0, teacher_epochs=2, student_epochs=3, consistent_epochs=3
    )
    run = example.main(args)["per_seed"][0]
    _assert_same_weights(run["models"]["jittered"], run["models"]["scratch"])
    assert run["errors"]["jittered"] == run["errors"]["scratch"]
    assert _differ(run["models"]["consistent"], run["models"]["jittered"])


def test_printed_table_shows_the_errors(example, results, capsys):
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    n = len(data.load_digits()[1][1])
    assert f"digits test errors out of {n} (seeds 3)" in lines
    header = next(line for line in lines if "teacher" in line and "gap" in line)
    assert header.split() == [
        *("teacher", "scratch", "distilled", "gap", "closed"),
        *("jittered", "gap", "consistent", "gap"),
    ]
    run = results["per_seed"][0]
    errors, gaps = run["errors"], run["gaps"]
    seed_row = next(line for line in lines if line.startswith("seed 3"))
    percent = example._percent
    assert seed_row.split()[2:] == [
        str(errors["teacher"]),
        str(errors["scratch"]),
        str(errors["distilled"]),
        percent(gaps["distilled"]),
        str(errors["jittered"]),
        percent(gaps["jittered"]),
        str(errors["consistent"]),
        percent(gaps["consistent"]),
    ]
    mean_row = next(line for line in lines if line.startswith("mean"))
    assert mean_row.split()[1] == f"{errors['teacher']:.1f}"
    paper_row = next(line for line in lines if line.startswith("paper"))
    assert paper_row.split()[1:] == ["67", "146", "74", "91%"]
    assert any("1-pixel jitter" in line and "8 epochs" in line for line in lines)
    assert any(line.startswith("wall time:") for line in lines)


def test_table_without_the_consistent_runs_keeps_the_2015_columns(example, capsys):
    # `--consistent-epochs 0`: the table of the 2015 runs alone (no training
    # needed to print it).
    errors = {"teacher": 80, "scratch": 140, "distilled": 101}
    gaps = {"distilled": example.gap_closed(80, 140, 101)}
    run = {"seed": 0, "errors": errors, "gaps": gaps}
    results = {
        "dataset": "mnist",
        "split": "test",
        "n_eval": 10_000,
        "seeds": [0],
        "per_seed": [run],
        "mean_errors": {k: float(v) for k, v in errors.items()},
        "gaps": gaps,
        "paper_errors": dict(example.PAPER_ERRORS),
        "wall_time_s": 1.0,
        "config": {"jitter": 2, "mixup": None, "consistent_epochs": 0},
    }
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    assert "mnist test errors out of 10,000 (seeds 0)" in lines
    header = next(line for line in lines if "teacher" in line)
    assert header.split() == ["teacher", "scratch", "distilled", "gap", "closed"]
    seed_row = next(line for line in lines if line.startswith("seed 0"))
    assert seed_row.split() == ["seed", "0", "80", "140", "101", "65%"]
    mean_row = next(line for line in lines if line.startswith("mean"))
    assert mean_row.split() == ["mean", "80.0", "140.0", "101.0", "65%"]
    assert not any("jittered" in line for line in lines)


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["--consistent-epochs", "-1"], "--consistent-epochs: must be >= 0"),
        (["--mixup", "0"], "--mixup: must be > 0"),
    ],
)
def test_bad_arguments_are_rejected(example, capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        example.main(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
