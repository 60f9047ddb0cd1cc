"""The deployment examples run end to end on tiny data (scikit-learn digits)."""

import importlib.util
import os

import numpy as np
import pytest

from conftest import keras3_only, legacy_only, run_litert
from keras_kd import data

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", os.path.join(EXAMPLES, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["deploy_tflite", "qat_distillation"])
def test_examples_answer_help(name, capsys):
    with pytest.raises(SystemExit) as excinfo:
        _load(name).main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "--dataset" in out and "--data-dir" in out
    if name == "qat_distillation":
        assert "TF_USE_LEGACY_KERAS=1" in " ".join(out.split())


def test_deploy_tflite_exports_every_mode_on_digits(tmp_path, capsys):
    argv = (
        "--dataset digits --teacher-epochs 2 --student-epochs 2 --batch-size 64 "
        "--learning-rate 0.01 --calibration-samples 64 --latency-runs 3"
    ).split()
    results = _load("deploy_tflite").main(argv + ["--out-dir", str(tmp_path)])
    # The test set is the one kd.data defines, loaded here independently.
    _, (x_test, y_test) = data.load_digits()
    assert results["n_test"] == len(y_test)
    # 10 classes: chance is 10%; two epochs of a working training are far above.
    assert results["teacher_accuracy"] > 0.75
    assert results["student_accuracy"] > 0.75
    modes = results["modes"]
    assert list(modes) == ["float32", "float16", "dynamic", "int8", "int8_io"]
    for name, row in modes.items():
        assert os.path.isfile(row["path"]), name
        assert row["latency_ms"] > 0
        # The reported accuracy is that of the saved file's predictions.
        pred = run_litert(row["path"], x_test)[0].argmax(-1)
        assert row["accuracy"] == pytest.approx(np.mean(pred == y_test)), name
        assert row["accuracy_drop_points"] == pytest.approx(
            100 * (results["student_accuracy"] - row["accuracy"])
        )
        # A file that disagrees with the student on a share d of the images
        # cannot differ from its accuracy by more than d.
        drop = abs(results["student_accuracy"] - row["accuracy"])
        assert drop <= 1.0 - row["top1_agreement"] + 1e-9, name
    assert modes["float32"]["max_abs_diff"] <= 1e-5
    assert modes["float32"]["top1_agreement"] == 1.0
    assert modes["float32"]["accuracy"] == pytest.approx(results["student_accuracy"])
    for name in ("dynamic", "int8", "int8_io"):
        assert modes[name]["size_ratio"] < 0.45, name
        assert modes[name]["top1_agreement"] >= 0.9, name
    out = capsys.readouterr().out
    assert "int8_io" in out and "x fp32" in out


@keras3_only
def test_qat_example_explains_it_needs_tf_keras(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        _load("qat_distillation").main(
            ["--dataset", "digits", "--out-dir", str(tmp_path)]
        )
    assert excinfo.value.code == 2
    assert "TF_USE_LEGACY_KERAS=1" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@legacy_only
def test_qat_example_compares_ptq_qat_and_pruning_on_digits(tmp_path, capsys):
    argv = (
        "--dataset digits --teacher-epochs 2 --student-epochs 2 --batch-size 64 "
        "--learning-rate 0.01 --calibration-samples 64 --sparsities 0.5 0.8"
    ).split()
    results = _load("qat_distillation").main(argv + ["--out-dir", str(tmp_path)])
    _, (x_test, y_test) = data.load_digits()
    assert results["n_test"] == len(y_test)
    assert results["teacher_accuracy"] > 0.75
    assert results["student_accuracy"] > 0.75
    int8 = results["int8"]
    assert set(int8) == {"float32", "ptq", "ptq_same_epochs", "qat"}
    for key in ("ptq", "ptq_same_epochs", "qat"):
        assert int8[key]["quantization"] == "int8"
        assert int8[key]["size_bytes"] < 0.5 * int8["float32"]["size_bytes"]
        assert os.path.isfile(int8[key]["path"])
    rows = list(int8.values()) + [
        row[q] for row in results["pruning"].values() for q in ("float32", "int8")
    ]
    for row in rows:
        pred = run_litert(row["path"], x_test)[0].argmax(-1)
        assert row["accuracy"] == pytest.approx(np.mean(pred == y_test)), row["path"]
        assert row["accuracy"] > 0.6, row["path"]
    assert int8["float32"]["accuracy"] == pytest.approx(results["student_accuracy"])
    assert set(results["pruning"]) == {"50%", "80%"}
    for row in results["pruning"].values():
        assert row["sparsity"] == pytest.approx(row["target_sparsity"], abs=0.02)
        assert row["float32"]["gzipped_bytes"] < int8["float32"]["gzipped_bytes"]
    assert "QAT" in capsys.readouterr().out
