"""Tests of examples/privileged_information.py on scikit-learn's 8x8 digits."""

import numpy as np
import pytest

from conftest import load_example, with_options
from keras_kd import data

pytest.importorskip("sklearn")

_BASE = (
    "--dataset digits --seeds 3 --teacher-epochs 15 --teacher-filters 8 "
    "--teacher-hidden 32 --student-hidden 32 --student-epochs 15 "
    "--batch-size 64 --learning-rate 0.01 --capture-seed 7"
).split()


def _tiny(temperatures="1 4", alphas="0.5 0.9"):
    """The tiny run's arguments, with these lists of temperatures and alphas."""
    return (
        _BASE
        + ["--temperatures", *temperatures.split()]
        + [
            "--alphas",
            *alphas.split(),
        ]
    )


_TINY = _tiny()
_CANDIDATES = ["T=1 a=0.5", "T=1 a=0.9", "T=4 a=0.5", "T=4 a=0.9"]
_DISTILLED = ("privileged", "same_view")


@pytest.fixture(scope="module")
def example():
    return load_example("privileged_information")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


def _reference_views(capture_seed, factor=2, noise=0.2, validation=300):
    """The three splits' views, rebuilt from `kd.data` with plain numpy."""
    (x_train, y_train), test = data.load_digits()
    splits = {
        "train": (x_train[:-validation], y_train[:-validation]),
        "validation": (x_train[-validation:], y_train[-validation:]),
        "test": test,
    }
    rng = np.random.default_rng(capture_seed)
    out = {}
    for name, (x, y) in splits.items():  # the noise is drawn in this order
        image = x[..., 0].astype(np.float64)
        n, h, w = image.shape
        low = np.zeros((n, h // factor, w // factor))
        for i in range(h // factor):
            for j in range(w // factor):
                block = image[
                    :, factor * i : factor * (i + 1), factor * j : factor * (j + 1)
                ]
                low[:, i, j] = block.sum(axis=(1, 2)) / factor**2
        low = np.clip(low + rng.normal(0.0, noise, size=low.shape), 0, 1)
        profiles = np.concatenate(
            [image.sum(axis=2) / w, image.sum(axis=1) / h], axis=1
        )
        out[name] = ({"scan": x, "profiles": profiles, "phone": low[..., None]}, y)
    return out


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--data-dir", "--factor", "--noise", "--temperatures"):
        assert flag in out
    assert "--no-same-view" in out


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(alphas="1.5"), "--alphas"),
        (dict(temperatures="0"), "--temperatures"),
        (dict(noise="-0.1"), "--noise"),
        (dict(factor="0"), "--factor"),
        (dict(student_epochs="0"), "--student-epochs"),
        (dict(dataset="cifar10"), "--dataset"),
    ],
)
def test_bad_arguments_are_refused(example, capsys, bad, message):
    with pytest.raises(SystemExit) as exit_info:
        example.main(with_options(_TINY, **bad))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_temperature_given_twice_is_refused(example, capsys):
    with pytest.raises(SystemExit):
        example.main(_tiny(temperatures="2 2"))
    assert "each weight once" in capsys.readouterr().err


def test_a_factor_that_does_not_divide_the_images_is_refused(example):
    with pytest.raises(ValueError, match="factor=3"):
        example.main(with_options(_TINY, factor=3))


def test_views_match_a_plain_numpy_reference(example):
    args = example.parse_args(_TINY)
    views = example.load_data(args)
    reference = _reference_views(7)
    for split in ("train", "validation", "test"):
        (x, y), (ref_x, ref_y) = views[split], reference[split]
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_array_equal(x["scan"], ref_x["scan"])
        np.testing.assert_allclose(x["profiles"], ref_x["profiles"], atol=1e-6)
        np.testing.assert_allclose(x["phone"], ref_x["phone"], atol=1e-6)
    assert views["num_classes"] == 10
    # The phone really is worse: coarser, and noisy (not a copy of the scan).
    phone = views["train"][0]["phone"]
    assert phone.shape[1:] == (4, 4, 1)
    clean = example.phone_view(views["train"][0]["scan"], 2, 0.0, None)
    assert 0.1 < np.std(phone - clean) < 0.2


def test_results_cover_every_model_of_every_seed(results):
    assert results["dataset"] == "digits" and results["split"] == "test"
    assert results["seeds"] == [3]
    assert (results["n_train"], results["n_validation"], results["n_eval"]) == (
        1047,
        300,
        450,
    )
    assert results["scan_shape"] == (8, 8, 1)
    assert results["profile_size"] == 16
    assert results["phone_shape"] == (4, 4, 1)
    (run,) = results["per_seed"]
    models = {"teacher", "same_view_teacher", "scratch", *_DISTILLED}
    assert set(run["accuracy"]) == set(run["models"]) == models
    assert results["mean_accuracy"] == run["accuracy"]
    assert set(run["train_time_s"]) == {
        "teacher",
        "same_view_teacher",
        "scratch",
        *(f"{s} {c}" for s in _DISTILLED for c in _CANDIDATES),
    }
    assert sum(run["train_time_s"].values()) <= run["wall_time_s"]
    for name in _DISTILLED:
        assert results["gain_over_scratch"][name] == pytest.approx(
            run["accuracy"][name] - run["accuracy"]["scratch"]
        )
        assert results["wins_over_scratch"][name] == int(
            run["accuracy"][name] > run["accuracy"]["scratch"]
        )
    assert results["params"]["student"] == 16 * 32 + 32 + 32 * 10 + 10
    assert results["params"]["teacher"] == run["models"]["teacher"].count_params()


def test_accuracies_are_recomputed_from_the_models(results):
    (run,) = results["per_seed"]
    x, y = _reference_views(7)["test"]
    for name, model in run["models"].items():
        if name == "teacher":
            inputs = {"scan": x["scan"], "profiles": x["profiles"]}
        else:
            inputs = x["phone"]
        predicted = np.argmax(model.predict(inputs, verbose=0), axis=-1)
        assert run["accuracy"][name] == pytest.approx(np.mean(predicted == y))
        assert run["accuracy"][name] > 0.3, name  # chance: 10%
    # The rig's teacher sees far more than the phone.
    assert run["accuracy"]["teacher"] > run["accuracy"]["same_view_teacher"] + 0.1


def test_the_students_read_only_the_phone_view(results):
    (run,) = results["per_seed"]
    teacher = run["models"]["teacher"]
    assert sorted(t.name for t in teacher.inputs) == ["profiles", "scan"]
    for name in ("scratch", "same_view_teacher", *_DISTILLED):
        (model_input,) = run["models"][name].inputs
        assert tuple(model_input.shape) == (None, 4, 4, 1), name
    # Same architecture and initial weights for every student.
    for name in _DISTILLED:
        for a, b in zip(
            run["models"][name].get_weights(), run["models"]["scratch"].get_weights()
        ):
            assert a.shape == b.shape
    assert [w.shape for w in run["initial_weights"]] == [
        w.shape for w in run["models"]["scratch"].get_weights()
    ]


def test_each_distilled_student_is_chosen_on_validation(results):
    (run,) = results["per_seed"]
    x, y = _reference_views(7)["validation"]
    for name in _DISTILLED:
        scores = run["validation_accuracy"][name]
        assert list(scores) == _CANDIDATES
        best = max(scores.values())
        label = next(c for c, score in scores.items() if score == best)
        chosen = run["chosen"][name]
        assert label == f"T={chosen['temperature']:g} a={chosen['alpha']:g}"
        # The reported student is the chosen one: its validation accuracy.
        model = run["models"][name]
        predicted = np.argmax(model.predict(x["phone"], verbose=0), axis=-1)
        assert np.mean(predicted == y) == pytest.approx(best)
        assert results["mean_validation"][name] == scores


def test_without_the_same_view_control(example):
    out = example.main(_tiny(temperatures="2", alphas="0.5") + ["--no-same-view"])
    (run,) = out["per_seed"]
    assert set(run["accuracy"]) == {"teacher", "scratch", "privileged"}
    assert list(run["validation_accuracy"]["privileged"]) == ["T=2 a=0.5"]
    assert set(out["gain_over_scratch"]) == {"privileged"}
