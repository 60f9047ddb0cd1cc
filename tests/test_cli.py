import contextlib
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_litert
from keras_kd import cli, data
from keras_kd.cli import demo as demo_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo") / "not-yet-made"
    argv = (
        "demo --teacher-epochs 10 --epochs 4 --students 2 --verbose 0 --out-dir"
    ).split()
    argv.append(str(out_dir))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = cli.run_demo(cli._build_parser().parse_args(argv))
    return result, out_dir, printed.getvalue()


def _accuracy_and_agreement(logits, y, teacher_pred):
    pred = np.argmax(logits, -1)
    return np.mean(pred == y), np.mean(pred == teacher_pred)


def test_demo_reports_the_accuracy_and_agreement_of_what_it_trained(demo):
    result, out_dir, _ = demo
    rows = {r["model"]: r for r in result["rows"]}
    models = result["models"]
    # The demo's test set, as kd.data defines it, loaded independently.
    _, (x_test, y_test) = data.load_digits(seed=0)

    def keras_logits(model):  # a direct call, not the demo's `predict`
        return np.asarray(model(x_test, training=False))

    teacher_pred = keras_logits(models["teacher"]).argmax(-1)
    for label, key in (
        ("teacher (CNN)", "teacher"),
        ("student, from scratch", "scratch"),
        ("student, distilled", "student"),
    ):
        accuracy, agreement = _accuracy_and_agreement(
            keras_logits(models[key]), y_test, teacher_pred
        )
        assert rows[label]["accuracy"] == pytest.approx(accuracy), label
        assert rows[label]["agreement"] == pytest.approx(agreement), label
        assert rows[label]["params"] == models[key].count_params(), label
    for quantization in ("float32", "int8"):
        row = rows[f"distilled, .tflite {quantization}"]
        path = out_dir / f"student_{quantization}.tflite"
        assert path.stat().st_size == row["size_bytes"] > 0
        assert row["latency_ms"] > 0
        accuracy, agreement = _accuracy_and_agreement(
            run_litert(path, x_test)[0], y_test, teacher_pred
        )
        assert row["accuracy"] == pytest.approx(accuracy), quantization
        assert row["agreement"] == pytest.approx(agreement), quantization


def test_demo_trains_students_that_learn_from_labels_and_teacher(demo):
    result, _, _ = demo
    rows = {r["model"]: r for r in result["rows"]}
    # 10 classes: chance is 10%; a few epochs of a working training are far above.
    for label in ("teacher (CNN)", "student, from scratch", "student, distilled"):
        assert rows[label]["accuracy"] > 0.5, label
    # The same student from the same initial weights, trained with the teacher's
    # soft targets, agrees with the teacher more than the one trained without.
    assert (
        rows["student, distilled"]["agreement"]
        > rows["student, from scratch"]["agreement"] + 0.03
    )
    assert (
        rows["student, from scratch"]["params"] == rows["student, distilled"]["params"]
    )
    assert rows["teacher (CNN)"]["params"] > 10 * rows["student, distilled"]["params"]
    # the float32 file predicts what the Keras student predicts
    assert (
        rows["distilled, .tflite float32"]["accuracy"]
        == rows["student, distilled"]["accuracy"]
    )
    assert (
        rows["distilled, .tflite int8"]["size_bytes"]
        < rows["distilled, .tflite float32"]["size_bytes"]
    )


def test_demo_splits_labelled_and_unlabelled_images(demo):
    result, _, out = demo
    (x_train, _), _ = data.load_digits(seed=0)
    assert result["labelled"] == 300
    assert result["labelled"] + result["unlabelled"] == len(x_train)
    assert "300 labelled and 1047 unlabelled" in out


def test_demo_reports_every_student_seed_and_the_wins(demo):
    result, _, out = demo
    rows = {r["model"]: r for r in result["rows"]}
    seeds = result["seeds"]
    assert [s["seed"] for s in seeds] == [1, 2]  # --seed 0, --students 2
    # the rows are the first seed's students
    assert seeds[0]["scratch"] == pytest.approx(
        rows["student, from scratch"]["accuracy"]
    )
    assert seeds[0]["distilled"] == pytest.approx(
        rows["student, distilled"]["accuracy"]
    )
    gains = [100 * (s["distilled"] - s["scratch"]) for s in seeds]
    assert result["wins"] == sum(g > 0 for g in gains)
    assert result["mean_gain"] == pytest.approx(np.mean(gains))
    assert f"in {result['wins']} of 2, by {np.mean(gains):+.2f} points" in out
    for s in seeds:
        assert f"student seed {s['seed']}: from scratch {s['scratch']:.2%}" in out


def test_demo_prints_the_data_and_a_row_per_model(demo):
    result, _, out = demo
    assert "scikit-learn digits" in out and "450 test images" in out
    lines = out.splitlines()
    for row in result["rows"]:
        line = next(line for line in lines if line.startswith(row["model"]))
        assert f"{row['params']:,}" in line
        assert f"{row['accuracy']:.2%}" in line and f"{row['agreement']:.2%}" in line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--alpha", "1.5"], "expected a number between 0 and 1, got 1.5"),
        (["demo", "--temperature", "0"], "expected a number greater than 0, got 0"),
        (["demo", "--epochs", "0"], "expected a positive integer"),
        (["demo", "--labels", "0"], "expected a positive integer"),
        (
            ["demo", "--labels", "some"],
            "expected a positive integer or 'all', got some",
        ),
        (["demo", "--unlabelled-fraction", "1"], "strictly between 0 and 1, got 1"),
        (["demo", "--teacher-jitter", "-1"], "expected 0 or more, got -1"),
        (["demo", "--verbose", "3"], "argument --verbose: invalid choice: 3"),
        (["demo", "--labels", "5000"], "--labels 5000: more than the 1347"),
    ],
)
def test_demo_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(argv)
    assert excinfo.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # one line, no usage block
    assert line.startswith("keras-kd demo: error: ") and message in line


def test_console_script_is_installed():
    beside_python = os.path.join(os.path.dirname(sys.executable), "keras-kd")
    exe = shutil.which("keras-kd") or (
        beside_python if os.path.exists(beside_python) else None
    )
    if exe is None:
        pytest.skip("keras-kd is not installed as a console script (pip install -e .)")
    result = subprocess.run([exe, "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--dataset" in result.stdout


def test_demo_validation_reports_on_held_out_training_images_not_the_test_set():
    args = cli._build_parser().parse_args(["demo", "--validation"])
    x_tr, y_tr, x_eval, y_eval, _, source = demo_cli._load(args)
    (x_train, y_train), (x_test, _) = data.load_digits(seed=0)
    np.testing.assert_array_equal(x_eval, x_train[-300:])
    np.testing.assert_array_equal(y_eval, y_train[-300:])
    np.testing.assert_array_equal(x_tr, x_train[:-300])
    assert len(x_tr) + len(x_eval) == len(x_train)
    # no test image is among the images it reports on
    flat_test = {row.tobytes() for row in x_test}
    assert not any(row.tobytes() in flat_test for row in x_eval)
    assert "validation split" in source


def test_demo_writes_the_report_of_what_it_trained(demo):
    result, out_dir, out = demo
    rows = {r["model"]: r for r in result["rows"]}
    figures = result["report"].to_dict()["models"]
    for name, label in (
        ("teacher", "teacher (CNN)"),
        ("student", "student, distilled"),
        ("baseline", "student, from scratch"),
        ("tflite", "distilled, .tflite int8"),
    ):
        assert figures[name]["accuracy"] == pytest.approx(rows[label]["accuracy"])
    for name in ("report.json", "report.md", "report.html", "reliability.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert out.splitlines()[-1].startswith(f"Report files in {out_dir}: report.json")


def test_demo_default_output_is_short(tmp_path):
    # Default verbosity and the default 3 student seeds (one line each); only
    # the epochs are cut, which changes no line count.
    # The installed `keras-kd` script (pip install -e . puts it next to
    # python), as a user runs it.
    command = os.path.join(os.path.dirname(sys.executable), "keras-kd")
    assert os.path.isfile(command), f"{command} is missing: pip install -e ."
    result = subprocess.run(
        [command, "demo", "--teacher-epochs", "1", "--epochs", "1",
         "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert len(lines) <= 30, "\n".join(lines)
    # TensorFlow's C++ start-up lines are kept out (keras_kd/__init__.py).
    assert "absl::InitializeLog" not in result.stderr
    assert "oneDNN" not in result.stderr
    assert "Epoch 1/1" not in result.stdout  # no progress bars by default
    assert "XNNPACK" not in result.stderr  # the interpreter's native log line
    assert "Traceback" not in result.stderr
    assert sum(line.startswith("  student seed") for line in lines) == 3
