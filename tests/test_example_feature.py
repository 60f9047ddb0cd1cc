"""Tests of examples/feature_distillation.py on scikit-learn's bundled 8x8 digits."""

import numpy as np
import pytest

from conftest import load_example, with_options
from keras_kd import data
from keras_kd.backend import keras

pytest.importorskip("sklearn")

# A 16-32-64 teacher and a 4-8-16 student; the taps read block 2 (4x4 maps
# on digits): 32 teacher channels against 8.
_BASE = (
    "--dataset digits --seeds 3 --teacher-widths 16 32 64 --student-widths 4 8 16 "
    "--teacher-epochs 15 --student-epochs 8 --learning-rate 0.01 --batch-size 64"
).split()
_TINY = [*_BASE, "--hint-weight", "1", "--at-weight", "50"]

_STUDENTS = ("scratch", "logits", "hint", "attention")


def _assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def _differ(a, b):
    return any(
        not np.array_equal(wa, wb) for wa, wb in zip(a.get_weights(), b.get_weights())
    )


def _block(model, name, x):
    """The output of `model`'s layer `name` on `x`, as numpy."""
    view = keras.Model(model.inputs, model.get_layer(name).output)
    return np.asarray(view.predict(x, verbose=0), np.float64)


def np_attention_distance(teacher_feature, student_feature):
    """Reference, Zagoruyko & Komodakis 2017: each map's attention
    `mean_c A**2` per position, L2-normalised; the mean over positions and
    samples of the squared difference."""

    def attention(a):
        q = (a**2).mean(axis=-1).reshape(len(a), -1)
        return q / np.linalg.norm(q, axis=-1, keepdims=True)

    return float(
        np.mean((attention(student_feature) - attention(teacher_feature)) ** 2)
    )


@pytest.fixture(scope="module")
def example():
    return load_example("feature_distillation")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--data-dir", "--dataset", "--validation", "--at-weight"):
        assert flag in out


def test_results_cover_every_student(results):
    assert results["dataset"] == "digits" and results["split"] == "test"
    assert results["seeds"] == [3]
    assert (results["n_train"], results["n_eval"]) == (1347, 450)
    (run,) = results["per_seed"]
    assert set(run["accuracy"]) == {"teacher", *_STUDENTS}
    assert set(run["train_time_s"]) == {"teacher", *_STUDENTS}
    assert sum(run["train_time_s"].values()) <= run["wall_time_s"]
    assert results["headers"] == {"logits": "logits", "hint": "hint", "attention": "AT"}
    assert results["taps"]["teacher"]["layer"] == "t_block2"
    assert results["taps"]["student"]["layer"] == "s_block2"
    assert results["taps"]["teacher"]["shape"] == (4, 4, 32)
    assert results["taps"]["student"]["shape"] == (4, 4, 8)
    assert results["config"]["at_weight"] == [50.0]


def test_accuracies_are_recomputed_from_the_models(results):
    (_, _), (x_test, y_test) = data.load_digits()
    (run,) = results["per_seed"]
    for name, model in run["models"].items():
        predicted = np.argmax(model.predict(x_test, verbose=0), -1)
        assert run["accuracy"][name] == pytest.approx(np.mean(predicted == y_test))
        assert results["mean_accuracy"][name] == run["accuracy"][name]
        assert run["accuracy"][name] > 0.3  # chance: 0.1
    scratch = run["accuracy"]["scratch"]
    for name in ("logits", "hint", "attention"):
        gain = results["gain_over_scratch"][name]
        assert gain == pytest.approx(run["accuracy"][name] - scratch)
        assert results["wins_over_scratch"][name] == int(gain > 0)


def test_students_share_architecture_and_initial_weights(results):
    (run,) = results["per_seed"]
    initial = run["initial_weights"]
    for name in _STUDENTS:
        model = run["models"][name]
        assert [w.shape for w in model.get_weights()] == [w.shape for w in initial]
        # Trained: no student still holds the shared initial weights.
        assert any(
            not np.array_equal(w, i) for w, i in zip(model.get_weights(), initial)
        )
    teacher = run["models"]["teacher"]
    assert teacher.count_params() > run["models"]["scratch"].count_params()


def test_hint_adapter_is_a_projection_outside_the_student(results):
    (run,) = results["per_seed"]
    (adapter,) = run["adapters"]["hint"]
    # FitNets' regressor: a 1x1 convolution from the student's 8 channels to
    # the teacher's 32.
    kernel = adapter.get_weights()[0]
    assert kernel.shape == (1, 1, 8, 32)
    student = run["models"]["hint"]
    student_variables = {id(v) for v in student.weights}
    assert not any(id(v) in student_variables for v in adapter.weights)
    assert len(student.get_weights()) == len(run["initial_weights"])
    assert adapter not in student.layers
    # Attention transfer compares channel-free maps: no adapter; KD on the
    # logits alone has none either.
    assert run["adapters"]["attention"] == []
    assert run["adapters"]["logits"] == []


def test_attention_transfer_brings_the_attention_maps_closer(results):
    # The student taught with attention transfer must have attention maps at
    # the tapped block clearly closer to the teacher's than the students
    # trained without it (measured on the test images by an independent numpy
    # reference; about half their distance over seeds 0-3 of these settings).
    (run,) = results["per_seed"]
    (_, _), (x_test, _) = data.load_digits()
    teacher = _block(run["models"]["teacher"], "t_block2", x_test)
    distance = {
        name: np_attention_distance(
            teacher, _block(run["models"][name], "s_block2", x_test)
        )
        for name in ("scratch", "logits", "attention")
    }
    closest_without = min(distance["scratch"], distance["logits"])
    assert distance["attention"] < 0.8 * closest_without, distance


def test_students_differ_only_by_their_terms(example):
    # With alpha=0 and a feature weight of 0 a distiller trains on the hard
    # labels alone: from the same initial weights and batches, each such
    # student must end bit-identical to the scratch student. A hint weight
    # of 5 must change the training.
    args = with_options(_BASE, alpha=0.0, teacher_epochs=2, student_epochs=3)
    args += ["--hint-weight", "0", "5", "--at-weight", "0"]
    run = example.main(args)["per_seed"][0]
    students = run["models"]
    assert set(students) == {
        *("teacher", "scratch", "logits", "attention"),
        *("hint_w0", "hint_w5"),
    }
    for name in ("logits", "hint_w0", "attention"):
        _assert_same_weights(students[name], students["scratch"])
    assert _differ(students["hint_w5"], students["scratch"])
    assert len(run["adapters"]["hint_w0"]) == len(run["adapters"]["hint_w5"]) == 1


def test_printed_table_shows_the_accuracies(example, results, capsys):
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith("digits test accuracy (%) on 450 images") for line in lines
    )
    header = next(line for line in lines if "scratch" in line and "AT" in line)
    assert header.split() == ["teacher", "scratch", "logits", "hint", "AT"]
    (run,) = results["per_seed"]
    acc = run["accuracy"]
    order = ("teacher", *_STUDENTS)
    seed_row = next(line for line in lines if line.startswith("seed 3"))
    assert seed_row.split()[2:] == [f"{100 * acc[k]:.2f}" for k in order]
    mean_row = next(line for line in lines if line.startswith("mean"))
    assert mean_row.split()[1:] == [f"{100 * acc[k]:.2f}" for k in order]
    gains = results["gain_over_scratch"]
    gain_row = next(line for line in lines if line.startswith("vs scr."))
    assert gain_row.split()[2:] == [
        f"{100 * gains[k]:+.2f}" for k in ("logits", "hint", "attention")
    ]
    assert any("t_block2 (4, 4, 32) <- s_block2 (4, 4, 8)" in line for line in lines)
    assert any(line.startswith("wall time:") for line in lines)


def test_validation_split_is_carved_from_the_training_set(example):
    (x_train, y_train), (x_test, _) = data.load_digits()
    (x_fit, y_fit), (x_eval, _) = example.load_data("digits")
    np.testing.assert_array_equal(x_fit, x_train)
    np.testing.assert_array_equal(x_eval, x_test)
    (x_fit, y_fit), (x_val, y_val) = example.load_data("digits", validation=True)
    assert len(x_val) == 300 and len(x_fit) + len(x_val) == len(x_train)
    np.testing.assert_array_equal(np.concatenate([x_fit, x_val]), x_train)
    np.testing.assert_array_equal(np.concatenate([y_fit, y_val]), y_train)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["--student-widths", "4", "8"], "must give as many blocks"),
        (["--tap-block", "4"], "the networks have 3 blocks, got 4"),
        (["--alpha", "1.5"], "--alpha: must be in [0, 1], got 1.5"),
        (["--at-weight", "-1"], "--at-weight: must be >= 0, got -1"),
        (["--hint-weight", "1", "1"], "--hint-weight: each weight once, got 1 1"),
        (["--student-epochs", "0"], "--student-epochs: must be > 0, got 0"),
    ],
)
def test_bad_arguments_are_rejected(example, capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        example.main(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
