import os
import shutil
import subprocess
import sys

import pytest

from keras_kd import cli


def test_demo_trains_three_models_exports_and_prints_the_table(capsys, tmp_path):
    result = cli.run_demo(
        cli._build_parser().parse_args(
            ["demo", "--teacher-epochs", "1", "--epochs", "1", "--verbose", "0",
             "--out-dir", str(tmp_path)]
        )
    )
    out = capsys.readouterr().out
    assert "scikit-learn digits" in out
    for label in ("teacher (CNN)", "student, from scratch", "student, distilled"):
        assert label in out
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["teacher (CNN)"]["agreement"] == 1.0
    assert rows["student, from scratch"]["params"] == rows["student, distilled"]["params"]
    assert rows["teacher (CNN)"]["params"] > 10 * rows["student, distilled"]["params"]
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0
    for quantization in ("float32", "int8"):
        row = rows[f"distilled, .tflite {quantization}"]
        path = tmp_path / f"student_{quantization}.tflite"
        assert path.stat().st_size == row["size_bytes"] > 0
        assert row["latency_ms"] > 0
    # the float32 file predicts what the Keras student predicts
    assert rows["distilled, .tflite float32"]["accuracy"] == rows["student, distilled"]["accuracy"]
    assert (rows["distilled, .tflite int8"]["size_bytes"]
            < rows["distilled, .tflite float32"]["size_bytes"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--alpha", "1.5"], "--alpha must be between 0 and 1"),
        (["demo", "--temperature", "0"], "--temperature must be greater than 0"),
        (["demo", "--epochs", "0"], "expected a positive integer"),
    ],
)
def test_demo_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed():
    beside_python = os.path.join(os.path.dirname(sys.executable), "keras-kd")
    exe = shutil.which("keras-kd") or (beside_python if os.path.exists(beside_python) else None)
    if exe is None:
        pytest.skip("keras-kd is not installed as a console script (pip install -e .)")
    result = subprocess.run([exe, "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--dataset" in result.stdout
