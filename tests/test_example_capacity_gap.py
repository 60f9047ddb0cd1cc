"""Tests of examples/capacity_gap.py on scikit-learn's bundled 8x8 digits."""

import importlib.util

import numpy as np
import pytest

from conftest import load_example, with_options
from keras_kd import data, models

pytest.importorskip("sklearn")

_HAS_TUNER = importlib.util.find_spec("keras_tuner") is not None

# A 2x256 teacher (85,002 parameters) and an 8-unit student (610: 0.72%).
_TINY = (
    "--dataset digits --seeds 2 --teacher-hidden 256 256 --student-hidden 8 "
    "--assistant-hidden 32 --teacher-epochs 15 --student-epochs 6 "
    "--temperatures 1 4 --learning-rate 0.01 --batch-size 64"
).split()

_DISTILLED = ("kd_t1", "kd_t4", "dist", "std_kl", "dkd")


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


@pytest.fixture(scope="module")
def example():
    return load_example("capacity_gap")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY if _HAS_TUNER else [*_TINY, "--no-tune"])


needs_tuner = pytest.mark.skipif(not _HAS_TUNER, reason="needs keras-tuner")


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--data-dir", "--validation", "--no-tune", "--alpha"):
        assert flag in out


def test_splits_hold_out_the_tuning_images(example):
    (x_train, y_train), (x_test, y_test) = data.load_digits()
    (x_fit, y_fit), (x_hold, y_hold), (x_eval, y_eval) = example.load_data("digits")
    assert len(x_hold) == 200 and len(x_fit) + len(x_hold) == len(x_train)
    np.testing.assert_array_equal(np.concatenate([x_fit, x_hold]), x_train)
    np.testing.assert_array_equal(np.concatenate([y_fit, y_hold]), y_train)
    np.testing.assert_array_equal(x_eval, x_test)
    # --validation: the evaluation images come out of the training set.
    fit, hold, (x_val, y_val) = example.load_data("digits", validation=True)
    assert len(x_val) == 300 and len(hold[0]) == 200
    assert len(fit[0]) + 200 + 300 == len(x_train)
    np.testing.assert_array_equal(x_val, x_train[-300:])


def test_parameter_ratio_is_checked(example):
    teacher = models.mlp((8, 8, 1), 10, (256, 256))
    small = models.mlp((8, 8, 1), 10, (8,))
    assert example.parameter_ratio(small, teacher) == pytest.approx(610 / 85_002)
    big = models.mlp((8, 8, 1), 10, (16,))  # 1,210 parameters: 1.4%
    with pytest.raises(ValueError, match=r"1,210 parameters, 1\.42% of"):
        example.parameter_ratio(big, teacher)


def test_a_student_over_one_percent_is_refused_before_training(example, capsys):
    with pytest.raises(ValueError, match="at most 1%"):
        example.main(with_options(_TINY, "--no-tune", student_hidden=16))
    assert "accuracy" not in capsys.readouterr().out  # nothing was trained


def test_results_cover_every_run(results):
    assert results["dataset"] == "digits" and results["split"] == "test"
    assert results["seeds"] == [2]
    assert (results["n_fit"], results["n_holdout"], results["n_eval"]) == (
        1147,
        200,
        450,
    )
    (run,) = results["per_seed"]
    runs = ["teacher", "scratch", *_DISTILLED, "chain", "assistant"]
    if _HAS_TUNER:
        runs.append("tune")
    assert set(run["accuracy"]) == set(runs)
    assert set(run["train_time_s"]) == set(runs) - {"assistant"}
    assert results["params"] == {
        "teacher": 85_002,
        "student": 610,
        "assistant": 64 * 32 + 32 + 330,
    }
    assert results["ratio"] == run["ratio"] == pytest.approx(610 / 85_002)
    assert results["ratio"] <= 0.01
    assert results["headers"] == {
        "kd_t1": "T=1",
        "kd_t4": "T=4",
        "dist": "DIST",
        "std_kl": "stdKL",
        "dkd": "DKD",
    }


def test_accuracies_are_recomputed_from_the_models(results):
    (_, _), (x_test, y_test) = data.load_digits()
    (run,) = results["per_seed"]
    for name, model in run["models"].items():
        assert run["accuracy"][name] == pytest.approx(_accuracy(model, x_test, y_test))
        assert results["mean_accuracy"][name] == run["accuracy"][name]
        assert run["accuracy"][name] > 0.2  # chance: 0.1
    assert run["accuracy"]["teacher"] > 0.8
    scratch = run["accuracy"]["scratch"]
    for name, gain in results["gain_over_scratch"].items():
        assert gain == pytest.approx(run["accuracy"][name] - scratch)
        assert results["wins_over_scratch"][name] == int(
            run["accuracy"][name] > scratch
        )


def test_chain_goes_through_the_assistant(results):
    (run,) = results["per_seed"]
    chain = run["chain"]
    teacher, assistant, student = chain.models
    assert teacher is run["models"]["teacher"]
    assert assistant is run["models"]["assistant"]
    assert student is run["models"]["chain"]
    assert [stage.index for stage in chain.stages] == [1, 2]
    assert chain.stages[1].teacher is assistant
    assert not assistant.trainable  # frozen as stage 2's teacher
    assert teacher.count_params() > assistant.count_params() > student.count_params()


@needs_tuner
def test_tune_returns_its_validation_best_and_starts_where_scratch_does(
    example, results
):
    _, (x_hold, y_hold), _ = example.load_data("digits")
    (run,) = results["per_seed"]
    tune = run["tune"]
    trials = tune["trials"]
    assert trials[0]["is_baseline"] and trials[0]["alpha"] == 0.0
    assert len(trials) > 1
    (selected,) = [t for t in trials if t["selected"]]
    assert tune["config"]["trial_id"] == selected["trial_id"]
    # The best-scoring trial among those that beat the baseline beyond their
    # margin (the paired test), else the baseline.
    cleared = [t for t in trials[1:] if t["significant"]]
    if cleared:
        assert selected["score"] == max(t["score"] for t in cleared)
        assert selected["score"] - tune["baseline_score"] > selected["margin"]
    else:
        assert selected["is_baseline"]
    assert selected["score"] >= tune["baseline_score"]
    # The baseline trial is the scratch student's training (same initial
    # weights, optimizer, batches and epochs): its held-out accuracy is the
    # scratch student's.
    scratch = run["models"]["scratch"]
    assert tune["baseline_score"] == pytest.approx(
        _accuracy(scratch, x_hold, y_hold), abs=1e-6
    )
    # What is reported is the returned student's accuracy.
    assert run["models"]["tune"] is not scratch


def test_with_alpha_zero_every_distilled_student_is_the_scratch_one(example):
    # alpha=0: the distillation term weighs nothing, so every run, the
    # chain's last stage included, trains like the scratch student, from
    # the same initial weights on the same batches.
    out = example.main(with_options(_TINY, "--no-tune", alpha=0.0, teacher_epochs=2))
    (run,) = out["per_seed"]
    scratch = run["models"]["scratch"].get_weights()
    for name in (*_DISTILLED, "chain"):
        for a, b in zip(run["models"][name].get_weights(), scratch, strict=True):
            np.testing.assert_array_equal(a, b)
        assert out["gain_over_scratch"][name] == 0.0
        assert out["wins_over_scratch"][name] == 0


def test_printed_table_lists_every_run(example, results, capsys):
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    assert any("digits test accuracy (%) on 450 images (seeds 2)" in li for li in lines)
    assert any("610 parameters = 0.72% of the teacher's" in li for li in lines)
    cols = example.columns(results)
    header = next(li for li in lines if li.split()[:2] == ["teacher", "TA"])
    assert header.split() == [h for _, h in cols]
    (run,) = results["per_seed"]
    expected = [f"{100 * run['accuracy'][k]:.2f}" for k, _ in cols]
    seed_row = next(li for li in lines if li.startswith("seed 2"))
    assert seed_row.split()[2:] == expected
    mean_row = next(li for li in lines if li.startswith("mean"))
    assert mean_row.split()[1:] == expected
    wins = next(li for li in lines if li.startswith("wins"))
    assert len(wins.split()) == 1 + len(cols) - 3  # not teacher, TA, scratch
    if _HAS_TUNER:
        tune_line = next(li for li in lines if li.startswith("tune, seed 2:"))
        assert f"{len(run['tune']['trials'])} trials" in tune_line
    assert any(line.startswith("wall time:") for line in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["--alpha", "1.5"], "--alpha: must be in [0, 1]"),
        (["--tune-factor", "1"], "--tune-factor: must be >= 2"),
        (["--student-epochs", "0"], "--student-epochs: must be >= 1"),
    ],
)
def test_bad_arguments_are_rejected(example, capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        example.main(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
