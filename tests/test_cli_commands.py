"""`keras-kd distill`, `export` and `report` on tiny images written here.

Each command runs once as a subprocess (the real console path: exit code,
stdout, stderr) and otherwise in-process through `cli.main(argv)`, which is
cheaper. The data is a directory of 8x8 grayscale PNG images, three classes,
with `train/` and `test/` splits.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_kd as kd
from conftest import run_litert
from keras_kd import cli
from keras_kd.backend import keras

CLASSES = ("circle", "line", "square")  # folder names, sorted: labels 0, 1, 2


def _images(rng, per_class):
    """8x8 uint8 images whose class is the row holding a bright band."""
    x, y = [], []
    for label in range(len(CLASSES)):
        for _ in range(per_class):
            image = rng.integers(0, 60, size=(8, 8)).astype(np.uint8)
            image[1 + 2 * label : 3 + 2 * label] = 230
            x.append(image)
            y.append(label)
    return np.stack(x), np.array(y)


def _write(directory, x, y):
    for i, (image, label) in enumerate(zip(x, y)):
        folder = directory / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:03d}.png")


def _model(hidden, name, n_out=3, lam=False):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    if lam:
        x = keras.layers.Lambda(lambda t: t * 1.0)(x)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(n_out)(x), name=name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    train, test = _images(rng, 8), _images(rng, 4)
    _write(root / "images" / "train", *train)
    _write(root / "images" / "test", *test)
    keras.utils.set_random_seed(0)
    teacher = _model(16, "teacher")
    teacher.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(train[0][..., None] / 255.0, train[1], epochs=30, verbose=0)
    paths = {"root": root, "images": root / "images"}
    for name, model in (
        ("teacher", teacher),
        ("student", _model(0, "student")),
        ("baseline", _model(0, "baseline")),
        ("five", _model(0, "five", n_out=5)),
        ("two", _model(0, "two", n_out=2)),
        ("lambda", _model(0, "lambda", lam=True)),
    ):
        paths[name] = root / f"{name}.keras"
        model.save(paths[name])
    paths["junk"] = root / "junk.keras"
    paths["junk"].write_bytes(b"not a zip file")
    paths["text"] = root / "notes.txt"
    paths["text"].write_text("hello")
    paths["train"], paths["test"] = train, test
    return paths


def _x(split):
    """Independent reference input: the written pixels, scaled to [0, 1]."""
    return (split[0][..., None] / 255.0).astype("float32")


def _run(*argv):
    return subprocess.run(
        [sys.executable, "-m", "keras_kd.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error(argv, capsys):
    """Runs `cli.main(argv)` expecting exit code 2; returns stderr's lines."""
    with pytest.raises(SystemExit) as excinfo:
        cli.main([str(a) for a in argv])
    assert excinfo.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- the commands as subprocesses ------------------------------------------


def test_distill_command_trains_saves_and_exports(files, tmp_path):
    out = tmp_path / "distilled.keras"
    result = _run(
        "distill", "--teacher", files["teacher"], "--student", files["student"],
        "--data", files["images"], "--epochs", 3, "--batch-size", 8,
        "--learning-rate", 0.05, "--output", out, "--export", "dynamic",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Epoch 1/3" in result.stdout  # Keras progress by default
    assert f"Saved the student to {out}" in result.stdout
    tflite = tmp_path / "distilled_dynamic.tflite"
    assert f"{tflite}: dynamic" in result.stdout  # the export report
    student = keras.models.load_model(out, compile=False)
    x = _x(files["test"])
    # it learnt from the teacher's images: far above chance (1/3)
    accuracy = np.mean(np.argmax(student.predict(x, verbose=0), -1) == files["test"][1])
    assert accuracy > 0.6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    np.testing.assert_allclose(
        run_litert(tflite, x)[0], student.predict(x, verbose=0), atol=0.05
    )


def test_export_command_writes_a_verified_int8_file(files, tmp_path):
    out = tmp_path / "teacher.tflite"
    result = _run(
        "export", files["teacher"], out, "--quantization", "int8",
        "--data", files["images"], "--split", "train",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"{out}: int8, {out.stat().st_size:,} bytes")
    teacher = keras.models.load_model(files["teacher"], compile=False)
    x = _x(files["test"])
    agree = np.argmax(run_litert(out, x)[0], -1) == np.argmax(teacher(x), -1)
    assert agree.mean() >= 0.9


def test_report_command_writes_the_files_and_true_figures(files, tmp_path):
    tflite = tmp_path / "student.tflite"
    student = keras.models.load_model(files["student"], compile=False)
    kd.export.to_tflite(student, tflite)
    out = tmp_path / "report"
    result = _run(
        "report", "--teacher", files["teacher"], "--student", files["student"],
        "--tflite", tflite, "--baseline", files["baseline"],
        "--data", files["images"], "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Report files in {out}" in result.stdout
    for name in ("report.json", "report.md", "report.html", "reliability.png"):
        assert (out / name).stat().st_size > 0, name
    figures = json.loads((out / "report.json").read_text())["models"]
    assert set(figures) >= {"teacher", "student", "baseline", "tflite"}
    x, y = _x(files["test"]), files["test"][1]  # --split test by default
    teacher = keras.models.load_model(files["teacher"], compile=False)
    for name, model in (("teacher", teacher), ("student", student)):
        accuracy = np.mean(np.argmax(np.asarray(model(x)), -1) == y)
        assert figures[name]["accuracy"] == pytest.approx(accuracy), name
    assert figures["tflite"]["size_bytes"] == tflite.stat().st_size


def test_a_mistake_exits_2_with_one_line_and_no_traceback(files, tmp_path):
    result = _run("export", files["lambda"], tmp_path / "m.tflite")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.tflite").exists()
    # TensorFlow's start-up lines may come first; the error is one line, last.
    lines = result.stderr.strip().splitlines()
    assert (
        [line for line in lines if "error:" in line]
        == lines[-1:]
        == [
            f"keras-kd export: error: MODEL {files['lambda']}: the model has a Lambda "
            "layer, whose loading runs Python code from the file; pass --unsafe if "
            "you trust it (Keras's safe_mode=False)"
        ]
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        # A missing file, and a bad argument (argparse's own error path).
        (["report", "--teacher", "{root}/missing.keras", "--student", "{student}",
          "--data", "{images}", "--out", "{root}/r"],
         "keras-kd report: error: --teacher {root}/missing.keras: no such file"),
        (["distill", "--teacher", "{teacher}", "--student", "{student}", "--data",
          "{images}", "--output", "{root}/s.keras", "--alpha", "1.5"],
         "keras-kd distill: error: argument --alpha: expected a number between 0 "
         "and 1, got 1.5"),
    ],
)  # fmt: skip
def test_a_missing_file_or_bad_argument_exits_2_in_a_subprocess(files, argv, words):
    result = _run(*[a.format(**files) for a in argv])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if "error:" in line] == lines[-1:]
    assert lines[-1].startswith(words.format(**files))


# --- in process ------------------------------------------------------------


@pytest.mark.parametrize(
    "objective, loss",
    [
        ("kl", lambda: kd.losses.KLDivergence(2.0)),
        ("standardized_kl", lambda: kd.losses.KLDivergence(2.0, standardize=True)),
        ("soft_ce", lambda: kd.losses.SoftTargetCrossEntropy(2.0)),
        ("dist", lambda: kd.losses.DIST(2.0)),
        ("dkd", lambda: kd.losses.DecoupledKD(2.0)),
    ],
)
def test_distill_trains_as_the_library_does(files, tmp_path, objective, loss):
    # One batch holding every training image: the CLI's shuffling cannot
    # change the step, so its student must equal a Distiller run written here.
    out = tmp_path / "s.keras"
    argv = [
        "distill", "--teacher", files["teacher"], "--student", files["student"],
        "--data", files["images"], "--objective", objective, "--temperature",
        "2", "--alpha", "0.3", "--epochs", "2", "--batch-size", "64",
        "--learning-rate", "0.01", "--output", out, "--quiet",
    ]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    got = keras.models.load_model(out, compile=False)

    teacher = keras.models.load_model(files["teacher"], compile=False)
    student = keras.models.load_model(files["student"], compile=False)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss=loss(),
        alpha=0.3,
    )
    distiller.fit(_x(files["train"]), files["train"][1], batch_size=64, epochs=2,
                  shuffle=False, verbose=0)  # fmt: skip
    for a, b in zip(got.get_weights(), student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_distill_validates_on_a_split_and_refuses_a_missing_one(
    files, tmp_path, capsys
):
    out = tmp_path / "s.keras"
    base = [
        "distill", "--teacher", files["teacher"], "--student", files["student"],
        "--data", files["images"], "--epochs", "1", "--output", out, "--verbose", "2",
    ]  # fmt: skip
    assert cli.main([str(a) for a in base + ["--validation-split", "test"]]) == 0
    assert "val_accuracy" in capsys.readouterr().out
    line = _error(base + ["--validation-split", "valid"], capsys)
    assert "--validation-split valid: no directory" in line


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5")
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_files_load_in_both_formats(tmp_path, suffix):
    from keras_kd.cli import _io

    model = _model(4, "m")
    path = tmp_path / f"m{suffix}"
    model.save(path)
    loaded = _io.load_model(path, "--student")
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5")
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_models_need_unsafe_in_both_formats(tmp_path, suffix, capsys):
    path = tmp_path / f"lam{suffix}"
    _model(0, "lam", lam=True).save(path)
    out = tmp_path / "lam.tflite"
    line = _error(["export", path, out], capsys)
    assert "Lambda layer" in line and "--unsafe" in line
    assert not out.exists()
    assert cli.main(["export", str(path), str(out), "--unsafe"]) == 0
    assert out.stat().st_size > 0


def _distill(files, tmp_path, **changes):
    argv = {
        "--teacher": files["teacher"],
        "--student": files["student"],
        "--data": files["images"],
        "--output": tmp_path / "out.keras",
        "--epochs": 1,
    }
    argv.update(changes)
    return ["distill"] + [str(v) for item in argv.items() for v in item]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"--teacher": "missing.keras"}, "--teacher missing.keras: no such file"),
        ({"--teacher": "{root}"}, "is a directory; expected a .keras model file"),
        ({"--student": "{text}"}, "expected a .keras model file (or .h5), got a .txt"),
        ({"--student": "{junk}"}, "not a Keras model file"),
        ({"--student": "{lambda}"}, "the model has a Lambda layer"),
        ({"--student": "{five}"}, "--teacher outputs 3 classes and --student 5"),
        ({"--output": "{root}/no/dir/s.keras"}, "/no/dir does not exist"),
        ({"--output": "{root}/s.tflite"}, "--output {root}/s.tflite: expected"),
        ({"--data": "{root}/nothing"}, "no such directory, and not a tfds name"),
        ({"--data": "{text}"}, "is a file; expected a directory of images"),
        ({"--data": "{root}"}, "no images"),
        ({"--data": "mnist", "--data-dir": "{root}"}, "nothing is downloaded"),
        ({"--objective": "mse"}, "argument --objective: invalid choice: 'mse'"),
        ({"--temperature": "0"}, "expected a number greater than 0, got 0"),
        ({"--alpha": "1.5"}, "expected a number between 0 and 1, got 1.5"),
        ({"--epochs": "0"}, "expected a positive integer, got 0"),
        ({"--export": "int4"}, "argument --export: invalid choice: 'int4'"),
        ({"--labels": "{text}"}, "--labels and --normalization: need --export"),
        ({"--export": "dynamic", "--normalization": "0,255"},
         "--normalization: needs --labels"),
        ({"--export": "dynamic", "--labels": "{root}/no.txt"},
         "--labels {root}/no.txt: no such file"),
        ({"--normalization": "0,-1"}, "expected MEAN,STD, two numbers with STD > 0"),
    ],
)
def test_distill_refuses_mistakes_before_training(
    files, tmp_path, capsys, change, words
):
    change = {k: v.format(**files) for k, v in change.items()}
    line = _error(_distill(files, tmp_path, **change), capsys)
    assert line.startswith("keras-kd distill: error: ")
    assert words.format(**files) in line
    assert not (tmp_path / "out.keras").exists()


def test_data_with_more_classes_than_the_student_is_refused(files, tmp_path, capsys):
    change = {"--teacher": str(files["two"]), "--student": str(files["two"])}
    line = _error(_distill(files, tmp_path, **change), capsys)
    assert "3 classes, but --student outputs 2" in line


def test_export_and_report_refuse_mistakes(files, tmp_path, capsys):
    line = _error(["export", files["teacher"], tmp_path / "no" / "t.tflite"], capsys)
    assert "OUTPUT" in line and "does not exist" in line
    line = _error(["export", files["teacher"], tmp_path / "t.tflite",
                   "--quantization", "int8"], capsys)  # fmt: skip
    assert "--quantization int8: needs --data to calibrate on" in line
    report = ["report", "--teacher", files["teacher"], "--student",
              files["student"], "--data", files["images"]]  # fmt: skip
    line = _error(report + ["--out", tmp_path / "no" / "such" / "dir"], capsys)
    assert "--out" in line and "parent directory" in line
    line = _error(report + ["--out", tmp_path / "r", "--tflite", "x.tflite"], capsys)
    assert "--tflite x.tflite: no such file" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["distill", "export", "report", "demo"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main([command, "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: keras-kd {command}")
    assert {"distill": "--objective", "export": "--quantization",
            "report": "--baseline", "demo": "--verbose"}[command] in out  # fmt: skip


def test_export_writes_the_metadata_a_phone_app_reads(files, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "t.tflite"
    argv = ["export", files["teacher"], out, "--labels", labels]
    assert cli.main([str(a) for a in argv]) == 0
    # The teacher takes [0, 1] inputs (no Rescaling layer): pixel / 255.
    assert "input = (pixel - 0) / 255" in capsys.readouterr().out
    standard = kd.export.read_metadata(out)["TFLITE_METADATA"]
    assert standard["labels"] == list(CLASSES)
    (image,) = standard["inputs"]
    assert image["color_space"] == "GRAYSCALE"
    assert (image["mean"], image["std"]) == ([0.0], [255.0])
    argv += ["--normalization", "127.5,127.5"]
    assert cli.main([str(a) for a in argv]) == 0
    (image,) = kd.export.read_metadata(out)["TFLITE_METADATA"]["inputs"]
    assert (image["mean"], image["std"]) == ([127.5], [127.5])
    labels.write_text("circle\nline\n")
    line = _error(argv, capsys)
    assert "the export failed: Argument `labels` must name each of the " in line
    assert "model's 3 classes. Received 2 labels" in line
