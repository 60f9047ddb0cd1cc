"""Tests of examples/transfer_set.py on scikit-learn's bundled 8x8 digits."""

import math

import numpy as np
import pytest

from conftest import load_example, with_options
from keras_kd import data

pytest.importorskip("sklearn")


_TINY = (
    "--dataset digits --seeds 1 --labels 100 --teacher-epochs 50 "
    "--label-epochs 50 --transfer-epochs 3 --teacher-filters 16 "
    "--teacher-hidden 64 --student-hidden 32 --jitter 1 --batch-size 32 "
    "--learning-rate 0.01"
).split()

_STUDENTS = ("scratch", "jittered", "distilled", "transfer", "consistent")


@pytest.fixture(scope="module")
def example():
    return load_example("transfer_set")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--data-dir", "--validation", "--teacher-labels"):
        assert flag in out
    assert "--no-consistent" in out


def test_split_keeps_a_balanced_labelled_set_and_drops_the_rest(example):
    (x, y), _ = data.load_digits()
    (x_lab, y_lab), x_unl, index = example.split_labels(x, y, 105, seed=4)
    counts = np.bincount(y_lab, minlength=10)
    # 105 = 10 * 10 + 5: classes 0-4 get one more.
    np.testing.assert_array_equal(counts, [11] * 5 + [10] * 5)
    np.testing.assert_array_equal(x_lab, x[index])
    np.testing.assert_array_equal(y_lab, y[index])
    assert len(set(index.tolist())) == 105
    rest = np.setdiff1d(np.arange(len(y)), index)
    np.testing.assert_array_equal(x_unl, x[rest])  # original order, no labels
    assert len(x_lab) + len(x_unl) == len(x)
    again = example.split_labels(x, y, 105, seed=4)[2]
    np.testing.assert_array_equal(again, index)
    other = example.split_labels(x, y, 105, seed=5)[2]
    assert set(other.tolist()) != set(index.tolist())


@pytest.mark.parametrize("labels", [9, 1347, 2000])
def test_split_rejects_impossible_label_counts(example, labels):
    (x, y), _ = data.load_digits()
    with pytest.raises(ValueError, match=f"labels={labels}"):
        example.split_labels(x, y, labels)


def test_results_cover_every_run_of_every_seed(results):
    assert results["dataset"] == "digits"
    assert results["split"] == "test"
    assert results["seeds"] == [1]
    (x_train, _), (_, y_test) = data.load_digits()
    assert results["n_eval"] == len(y_test)
    assert results["n_labelled"] == 100
    assert results["n_unlabelled"] == len(x_train) - 100
    # The teacher learns from the labelled images only.
    assert results["teacher_train_size"] == 100
    assert results["config"]["teacher_labels"] == "labelled"
    (run,) = results["per_seed"]
    assert run["seed"] == 1
    assert set(run["accuracy"]) == {"teacher", *_STUDENTS}
    assert set(run["agreement"]) == set(_STUDENTS)
    assert set(run["train_time_s"]) == {"teacher", *_STUDENTS}
    assert sum(run["train_time_s"].values()) <= run["wall_time_s"]
    assert run["wall_time_s"] <= results["wall_time_s"]
    # kd.data.mix: 8 labelled and 24 unlabelled images a batch; an epoch is
    # one pass over the larger of the two.
    assert results["transfer_steps_per_epoch"] == max(
        math.ceil(100 / 8), math.ceil((len(x_train) - 100) / 24)
    )
    assert results["params"]["teacher"] == run["models"]["teacher"].count_params()
    assert results["params"]["student"] == 64 * 32 + 32 + 32 * 10 + 10


def test_accuracies_and_agreements_are_recomputed_from_the_models(results):
    (_, _), (x_test, y_test) = data.load_digits()
    (run,) = results["per_seed"]
    predicted = {
        name: np.argmax(model.predict(x_test, verbose=0), -1)
        for name, model in run["models"].items()
    }
    for name, p in predicted.items():
        assert run["accuracy"][name] == pytest.approx(np.mean(p == y_test))
        assert results["mean_accuracy"][name] == run["accuracy"][name]
        # 10 classes: chance is about 10%; every model learns.
        assert run["accuracy"][name] > 0.5
    for name in _STUDENTS:
        expected = np.mean(predicted[name] == predicted["teacher"])
        assert run["agreement"][name] == pytest.approx(expected)
    # The transfer set gives the student many more images to match the
    # teacher on than the labelled set alone.
    assert run["agreement"]["transfer"] > run["agreement"]["scratch"]


def test_no_label_outside_the_labelled_set_reaches_training(example, results):
    # Corrupt every label of the transfer set right after the split: with
    # the teacher on the labelled images, nothing trained may change.
    real_split = example.split_labels

    def split_then_corrupt(x, y, labels, seed=0):
        out = real_split(x, y, labels, seed)
        unlabelled = np.setdiff1d(np.arange(len(y)), out[2])
        y[unlabelled] = (y[unlabelled] + 1) % 10  # in place: main's y_pool
        return out

    example.split_labels = split_then_corrupt
    try:
        corrupted = example.main(_TINY)
    finally:
        example.split_labels = real_split
    (run,) = results["per_seed"]
    (other,) = corrupted["per_seed"]
    assert other["accuracy"] == run["accuracy"]
    for name, model in run["models"].items():
        for a, b in zip(model.get_weights(), other["models"][name].get_weights()):
            np.testing.assert_array_equal(a, b)


def test_students_start_from_the_same_weights(example, capsys):
    # No student epochs: every student ends where it started.
    args = with_options(
        _TINY,
        "--no-consistent",
        teacher_labels="all",
        teacher_epochs=1,
        label_epochs=0,
        transfer_epochs=0,
    )
    out = example.main(args)
    (run,) = out["per_seed"]
    assert "consistent" not in run["accuracy"]
    students = [name for name in _STUDENTS if name != "consistent"]
    assert set(run["accuracy"]) == {"teacher", *students}
    for name in students:
        weights = run["models"][name].get_weights()
        for a, b in zip(weights, run["initial_weights"], strict=True):
            np.testing.assert_array_equal(a, b)
    # The other scenario: the teacher trained on every training label.
    (x_train, _), _ = data.load_digits()
    assert out["teacher_train_size"] == len(x_train)
    printed = capsys.readouterr().out
    assert f"all {len(x_train):,} training labels" in printed


def test_without_jitter_the_paired_runs_are_identical(example):
    # No jitter: "jittered" is trained exactly as "scratch", and "consistent"
    # as "transfer" (same initial weights, same batches of kd.data.mix).
    args = with_options(
        _TINY, jitter=0, teacher_epochs=5, label_epochs=2, transfer_epochs=1
    )
    (run,) = example.main(args)["per_seed"]
    students = run["models"]
    for a, b in (("jittered", "scratch"), ("consistent", "transfer")):
        for wa, wb in zip(
            students[a].get_weights(), students[b].get_weights(), strict=True
        ):
            np.testing.assert_array_equal(wa, wb)
    initial = run["initial_weights"]
    assert not np.array_equal(students["transfer"].get_weights()[0], initial[0])


def test_printed_table_lists_every_run(example, results, capsys):
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    assert "digits test accuracy (%) on 450 images (seeds 1)" in lines
    header = next(line for line in lines if line.split()[:2] == ["teacher", "scratch"])
    assert header.split() == ["teacher", *_STUDENTS]
    (run,) = results["per_seed"]
    seed_row = next(line for line in lines if line.startswith("seed 1"))
    expected = [f"{100 * run['accuracy'][n]:.2f}" for n in ("teacher", *_STUDENTS)]
    assert seed_row.split()[2:] == expected
    mean_row = next(line for line in lines if line.startswith("mean"))
    assert mean_row.split()[1:] == expected
    agrees = next(line for line in lines if line.startswith("agrees "))
    assert agrees.split()[1:] == [f"{100 * run['agreement'][n]:.2f}" for n in _STUDENTS]
    assert any("trained on the 100 labelled images only" in line for line in lines)
    assert any("MLP 64-32-10" in line for line in lines)
    for name in _STUDENTS:
        assert any(line.startswith(f"  {name}: ") for line in lines)


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
        (["--teacher-labels", "some"], "invalid choice: 'some'"),
        (["--transfer-epochs", "-1"], "--transfer-epochs: must be >= 0"),
        (["--teacher-epochs", "0"], "--teacher-epochs: must be >= 1"),
    ],
)
def test_bad_arguments_are_rejected(example, capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        example.main(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
