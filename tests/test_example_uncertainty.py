"""Tests of examples/uncertainty.py on tiny arguments (scikit-learn's digits)."""

import numpy as np
import pytest

from conftest import load_example

pytest.importorskip("sklearn")

_TINY = (
    "--seeds 5 --teacher-epochs 3 --student-epochs 2 --teacher-filters 4 "
    "--student-hidden 8 --calibration-size 200 --batch-size 128"
).split()

_RUNS = ("teacher", "scratch", "kl_t1", "kl_t4", "kl_t4_a09", "dist_t4", "kl_t4_mixup")


@pytest.fixture(scope="module")
def example():
    return load_example("uncertainty")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--calibration-size", "--mixup", "--student-hidden"):
        assert flag in out


def test_ood_inputs_are_rotated_test_images_and_noise(example):
    fit, calibration, (x_test, y_test), ood = example.load_data(200)
    assert len(fit[0]) == 1347 - 200 and len(calibration[0]) == 200
    np.testing.assert_array_equal(
        ood["rotated"][3, :, :, 0], np.rot90(x_test[3, :, :, 0])
    )
    assert ood["noise"].shape == x_test.shape
    assert 0.0 <= ood["noise"].min() and ood["noise"].max() <= 1.0


def test_every_run_is_measured(results):
    (run,) = results["per_seed"]
    assert set(run["figures"]) == set(_RUNS) == set(run["models"])
    assert results["sizes"] == {
        "fit": 1147,
        "calibration": 200,
        "test": 450,
        "rotated": 450,
        "noise": 450,
    }
    for figures in run["figures"].values():
        assert 0.0 <= figures["ece"] <= 1.0 and 0.0 <= figures["ece_cal"] <= 1.0
        assert 0.0 <= figures["auroc"] <= 1.0 and figures["temperature"] > 0
    assert run["accuracy"] == {n: f["accuracy"] for n, f in run["figures"].items()}


def test_figures_are_recomputed_from_the_models(example, results):
    import keras_kd as kd

    _, calibration, (x_test, y_test), ood = example.load_data(200)
    (run,) = results["per_seed"]
    student = run["models"]["kl_t4"]
    figures = run["figures"]["kl_t4"]
    p = kd.report.to_probabilities(student.predict(x_test, verbose=0))
    assert figures["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == y_test))
    assert figures["ece"] == pytest.approx(
        kd.report.expected_calibration_error(p, y_test), abs=1e-6
    )
    calibrated = kd.calibrate(student, calibration)
    assert figures["temperature"] == pytest.approx(calibrated.temperature, rel=1e-6)
    p_cal = calibrated.model.predict(x_test, verbose=0)
    np.testing.assert_array_equal(p_cal.argmax(-1), p.argmax(-1))  # same answers
    assert figures["ece_cal"] == pytest.approx(
        kd.report.expected_calibration_error(p_cal, y_test), abs=1e-6
    )
    rotated = kd.report.predictive_entropy(
        kd.report.to_probabilities(student.predict(ood["rotated"], verbose=0))
    )
    assert figures["auroc_rotated"] == pytest.approx(
        kd.report.auroc(kd.report.predictive_entropy(p), rotated), abs=1e-6
    )
    # The report of the example's `kd.report.compare` call agrees with the
    # example's own figures on the OOD union.
    report = run["report"]
    assert report.ood["models"]["student"]["auroc"] == pytest.approx(
        figures["auroc"], abs=1e-6
    )
    assert report.ood["models"]["teacher"]["entropy_ood"] == pytest.approx(
        run["figures"]["teacher"]["entropy_ood"], abs=1e-6
    )


def test_bar_is_applied_to_each_student(example, results):
    (run,) = results["per_seed"]
    teacher = run["figures"]["teacher"]
    for name in _RUNS[1:]:
        student = run["figures"][name]
        expected = (
            student["ece_cal"] <= teacher["ece"] + example.ECE_MARGIN
            and student["auroc_cal"] >= teacher["auroc"] - example.AUROC_MARGIN
        )
        bar = results["bar"][name]
        assert bar["seeds"] == int(expected) and bar["mean"] == expected
        assert bar["more_confident_ood"] == int(
            student["entropy_ood"] < teacher["entropy_ood"]
        )


def test_printed_tables_list_every_run(example, results, capsys):
    example.print_results(results)
    out = capsys.readouterr().out
    for label in example.headers().values():
        assert any(line.startswith(label) for line in out.splitlines())
    assert "The bar:" in out and "wall time:" in out
    mean = results["mean"]["kl_t4"]
    row = next(line for line in out.splitlines() if line.startswith("KL T=4"))
    assert f"{mean['ece_cal']:.4f}" in row


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mixup", "0"], "--mixup: must be > 0"),
        (["--student-epochs", "0"], "--student-epochs: must be >= 1"),
    ],
)
def test_bad_arguments_are_rejected(example, capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        example.main(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
