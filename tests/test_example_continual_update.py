"""Tests of examples/continual_update.py on scikit-learn's bundled digits."""

import numpy as np
import pytest

from conftest import load_example
from keras_kd import data

pytest.importorskip("sklearn")

_TINY = "--seeds 0 --hidden 16 --old-epochs 4 --epochs 2 --exemplars 3".split()


@pytest.fixture(scope="module")
def example():
    return load_example("continual_update")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


def test_help_and_bad_arguments(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--exemplars", "--alpha", "--temperature", "--dataset"):
        assert flag in out
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--alpha", "1.0"])
    assert exit_info.value.code == 2


def test_every_method_is_measured_on_old_new_and_all_classes(example, results):
    (run,) = results["per_seed"]
    _, (x_test, y_test) = data.load_digits()
    n_old, n_new = int(np.sum(y_test < 5)), int(np.sum(y_test >= 5))
    assert set(run["classes"]["accuracy"]) == set(example.CLASS_METHODS)
    for method, figures in run["classes"]["accuracy"].items():
        # "all" is the old and new classes' accuracies weighted by their counts.
        weighted = (n_old * figures["old"] + n_new * figures["new"]) / len(y_test)
        assert figures["all"] == pytest.approx(weighted), method
        assert 0.0 <= figures["old_task_aware"] <= 1.0
    assert set(run["domains"]["accuracy"]) == set(example.DOMAIN_METHODS)
    assert results["means"]["classes"]["lwf"]["all"] == pytest.approx(
        run["classes"]["accuracy"]["lwf"]["all"]
    )


def test_the_lwf_student_exports_like_any_student(results):
    (run,) = results["per_seed"]
    tflite = run["classes"]["tflite"]
    assert tflite["top1_agreement"] >= 0.99
    lwf = run["classes"]["accuracy"]["lwf"]["all"]
    assert abs(tflite["accuracy"] - lwf) <= 1 - tflite["top1_agreement"] + 1e-9


def test_the_new_domain_is_a_shifted_dimmer_view(example):
    rng = np.random.default_rng(0)
    x = np.zeros((2, 8, 8, 1), "float32")
    x[:, 3, 3] = 1.0
    seen = example._second_camera(x, rng, noise=0.0)
    assert seen[0, 3, 4, 0] == pytest.approx(0.7) and seen[0, 3, 3, 0] == 0.0
