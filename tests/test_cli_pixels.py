"""`keras-kd` feeds each model the pixel range it expects, and checks the teacher.

The data is written here twice, as a directory of 8x8 grayscale PNG images
(three classes, `train/` and `test/`) and as a tiny tfds data set prepared
from the same pixels (`KerasKdCliBands`, below); neither uses the shared
datasets. A teacher that starts with `Rescaling(1/255)` is trained on the
raw 0-255 pixels, the keras.io convention.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_litert
from keras_kd import cli
from keras_kd.backend import keras
from keras_kd.cli import _checks, _pixels

tfds = pytest.importorskip("tensorflow_datasets")

CLASSES = ("circle", "line", "square")  # folder names, sorted: labels 0, 1, 2
TFDS_NAME = "keras_kd_cli_bands"


def band_images(seed, per_class):
    """8x8 uint8 images whose class is the row holding a bright band."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for label in range(len(CLASSES)):
        for _ in range(per_class):
            image = rng.integers(0, 60, size=(8, 8)).astype(np.uint8)
            image[1 + 2 * label : 3 + 2 * label] = 230
            x.append(image)
            y.append(label)
    return np.stack(x), np.array(y)


SPLITS = {"train": band_images(0, 8), "test": band_images(1, 4)}


class KerasKdCliBands(tfds.core.GeneratorBasedBuilder):
    """The band images as a tfds image-classification set (train 24, test 12)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(name) for name in SPLITS}

    def _generate_examples(self, split):
        for i, (image, label) in enumerate(zip(*SPLITS[split])):
            yield i, {"image": image[..., None], "label": int(label)}


def write_images(directory, x, y):
    for i, (image, label) in enumerate(zip(x, y)):
        folder = directory / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:03d}.png")


def raw(split):
    """Independent reference input: the pixels as stored, float32 0-255."""
    return SPLITS[split][0][..., None].astype("float32")


def model(name, rescaling=False, hidden=0):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs) if rescaling else inputs
    x = keras.layers.Flatten()(x)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x), name=name)


def trained(name, x, y, rescaling):
    keras.utils.set_random_seed(0)
    teacher = model(name, rescaling, hidden=16)
    teacher.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(x, y, epochs=30, verbose=0)
    return teacher


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_pixels")
    for split, (x, y) in SPLITS.items():
        write_images(root / "images" / split, x, y)
    KerasKdCliBands(data_dir=str(root / "tfds")).download_and_prepare()
    y = SPLITS["train"][1]
    models = {
        # trained on raw pixels: it scales them itself
        "rescaling_teacher": trained("rt", raw("train"), y, rescaling=True),
        "plain_teacher": trained("pt", raw("train") / 255.0, y, rescaling=False),
        # trained with each label moved to the next class
        "shifted_teacher": trained("st", raw("train") / 255.0, (y + 1) % 3, False),
        "plain_student": model("ps"),
        "rescaling_student": model("rs", rescaling=True),
    }
    paths = {"root": root, "images": root / "images", "tfds": root / "tfds"}
    for name, m in models.items():
        paths[name] = root / f"{name}.keras"
        m.save(paths[name])
    return paths


def data_args(files, source):
    if source == "images":
        return ["--data", files["images"]]
    return ["--data", TFDS_NAME, "--data-dir", files["tfds"]]


def accuracy(m, x, split):
    return np.mean(np.argmax(np.asarray(m(x)), -1) == SPLITS[split][1])


def load(path):
    return keras.models.load_model(path, compile=False)


def main(argv):
    return cli.main([str(a) for a in argv])


def error_line(argv, capsys):
    """Runs `cli.main(argv)` expecting exit code 2; returns stderr's one line."""
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- choosing the range ------------------------------------------------------


def test_auto_range_is_0_255_for_a_model_that_scales_its_own_inputs():
    plain, rescaling = model("p"), model("r", rescaling=True)
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Normalization()])
    inputs = keras.Input((8, 8, 1))
    nested = keras.Model(inputs, keras.layers.Flatten()(inner(inputs)))
    assert _pixels.resolve(None, "teacher", rescaling)[0] == "0-255"
    assert _pixels.resolve(None, "teacher", nested)[0] == "0-255"  # at any depth
    assert _pixels.resolve(None, "teacher", plain) == (
        "0-1",
        "auto: no Rescaling or Normalization layer",
    )


def test_pixel_range_option_sets_every_model_or_one():
    rescaling, plain = model("r", rescaling=True), model("p")
    everyone = [(None, "0-1")]
    assert _pixels.resolve(everyone, "teacher", rescaling) == (
        "0-1",
        "set by --pixel-range",
    )
    one = [(None, "0-255"), ("student", "0-1"), ("teacher", "auto")]
    assert _pixels.resolve(one, "student", rescaling)[0] == "0-1"
    assert _pixels.resolve(one, "teacher", plain)[0] == "0-1"  # its own: auto
    assert _pixels.resolve(one, "baseline", plain)[0] == "0-255"
    # the last value given wins
    assert _pixels.resolve([(None, "0-1"), (None, "0-255")], "x", plain)[0] == "0-255"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["distill", "--pixel-range", "0-100"], "argument --pixel-range: expected "
         "a RANGE, one of auto, 0-255, 0-1 or MODEL=RANGE with MODEL one of "
         "teacher|student; got 0-100"),
        (["distill", "--pixel-range", "baseline=0-1"], "got baseline=0-1"),
        (["report", "--pixel-range", "tflite=0-1"], "MODEL one of "
         "teacher|student|baseline; got tflite=0-1"),
        (["export", "m.keras", "m.tflite", "--pixel-range", "model=0-1"],
         "expected a RANGE, one of auto, 0-255, 0-1; got model=0-1"),
    ],
)  # fmt: skip
def test_pixel_range_option_refuses_other_values(argv, words, capsys):
    line = error_line(argv, capsys)
    assert line.startswith(f"keras-kd {argv[0]}: error: ") and words in line


@pytest.mark.parametrize("source", ["images", "tfds"])
@pytest.mark.parametrize("pixel_range, scale", [("0-255", 1.0), ("0-1", 255.0)])
def test_images_arrive_in_the_chosen_range(files, source, pixel_range, scale):
    from keras_kd.cli import _data

    data = files["images"] if source == "images" else TFDS_NAME
    ds, names = _data.load_data(
        str(data), str(files["tfds"]), "test", model("m"), 5, pixel_range=pixel_range
    )
    batches = list(ds)
    x = np.concatenate([np.asarray(b[0]) for b in batches])
    y = np.concatenate([np.asarray(b[1]) for b in batches])
    assert names == list(CLASSES)
    assert x.dtype == np.float32 and x.max() <= 255.0 / scale
    expected = {
        (label, image.tobytes()) for image, label in zip(raw("test"), SPLITS["test"][1])
    }
    got = {(label, image.tobytes()) for image, label in zip(x * scale, y)}
    assert got == expected


# --- distill -------------------------------------------------------------------


def distill_argv(files, source, teacher, student, out, *extra):
    return [
        "distill", "--teacher", files[teacher], "--student", files[student],
        *data_args(files, source), "--epochs", "2", "--batch-size", "64",
        "--learning-rate", "0.01", "--output", out, "--quiet", *extra,
    ]  # fmt: skip


def reference_distill(teacher, student, teacher_x, student_x, y):
    """A Distiller written here, on one batch holding every training image.

    Each model reads its own copy of the images (the Distiller's
    `teacher_inputs` / `student_inputs`), made here in numpy.
    """
    import keras_kd as kd

    distiller = kd.Distiller(
        teacher=teacher,
        student=student,
        teacher_inputs="teacher",
        student_inputs="student",
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = {"teacher": teacher_x, "student": student_x}
    distiller.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    return student


@pytest.mark.parametrize("source", ["images", "tfds"])
def test_distill_feeds_a_rescaling_teacher_raw_pixels(files, tmp_path, source, capsys):
    out = tmp_path / "s.keras"
    argv = distill_argv(files, source, "rescaling_teacher", "plain_student", out)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "Pixel range: teacher 0-255 (auto: it has a Rescaling or Normalization "
        "layer), student 0-1 (auto: no Rescaling or Normalization layer)."
    ) in printed
    teacher = load(files["rescaling_teacher"])
    expected = accuracy(teacher, raw("train"), "train")
    assert f"The teacher scores {expected:.1%} on the first 24 images" in printed
    # The reference feeds the teacher the raw pixels it was trained on and
    # the student the same divided by 255.
    x = raw("train")
    student = reference_distill(
        teacher,
        load(files["plain_student"]),
        x,
        x / np.float32(255),
        SPLITS["train"][1],
    )
    got = load(out)
    for a, b in zip(got.get_weights(), student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert accuracy(got, raw("test") / 255.0, "test") > 0.6  # it learnt


def test_distill_feeds_a_rescaling_student_raw_pixels(files, tmp_path):
    out = tmp_path / "s.keras"
    argv = distill_argv(files, "images", "plain_teacher", "rescaling_student", out)
    assert main(argv) == 0
    teacher = load(files["plain_teacher"])
    x = raw("train")
    student = reference_distill(
        teacher,
        load(files["rescaling_student"]),
        x / np.float32(255),
        x,
        SPLITS["train"][1],
    )
    got = load(out)
    # the saved student is the student: no layer added in front of it
    assert [type(layer).__name__ for layer in got.layers] == [
        type(layer).__name__ for layer in student.layers
    ]
    for a, b in zip(got.get_weights(), student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("source", ["images", "tfds"])
def test_distill_stops_when_the_teacher_is_at_chance(files, tmp_path, source, capsys):
    out = tmp_path / "s.keras"
    argv = distill_argv(
        files, source, "rescaling_teacher", "plain_student", out,
        "--pixel-range", "0-1",
    )  # fmt: skip
    line = error_line(argv, capsys)
    teacher = load(files["rescaling_teacher"])
    too_dark = accuracy(teacher, raw("train") / 255.0, "train")
    assert line.startswith(
        f"keras-kd distill: error: the teacher scores {too_dark:.1%} on the "
        f"first 24 images of --data "
    )
    assert "no better than chance with 3 classes (33.3%)" in line
    assert (
        "fed 0-1 pixels, set by --pixel-range; try --pixel-range teacher=0-255" in line
    )
    assert "labels in another order" in line
    assert not out.exists()


def test_distill_stops_when_the_labels_are_in_another_order(files, tmp_path, capsys):
    out = tmp_path / "s.keras"
    argv = distill_argv(files, "images", "shifted_teacher", "plain_student", out)
    line = error_line(argv, capsys)
    assert "the teacher scores 0.0% on the first 24 images" in line
    assert "data's classes in label order: circle, line, square" in line
    assert not out.exists()


def test_distill_at_chance_exits_2_with_one_line_as_a_process(files, tmp_path):
    out = tmp_path / "s.keras"
    argv = distill_argv(
        files, "tfds", "rescaling_teacher", "plain_student", out,
        "--pixel-range", "teacher=0-1",
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if "error:" in line] == lines[-1:]
    assert lines[-1].startswith("keras-kd distill: error: the teacher scores")
    assert "no better than chance" in lines[-1]
    assert not out.exists()


# --- report and export -------------------------------------------------------


def report_argv(files, source, out, *extra):
    return [
        "report", "--teacher", files["rescaling_teacher"], "--student",
        files["plain_student"], "--baseline", files["rescaling_student"],
        *data_args(files, source), "--out", out, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("source", ["images", "tfds"])
def test_report_feeds_each_model_its_range(files, tmp_path, source, capsys):
    out = tmp_path / "report"
    assert main(report_argv(files, source, out)) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    saved = json.loads((out / "report.json").read_text())
    figures = saved["models"]
    x = raw("test")
    expected = {
        "teacher": accuracy(load(files["rescaling_teacher"]), x, "test"),
        "student": accuracy(load(files["plain_student"]), x / 255.0, "test"),
        "baseline": accuracy(load(files["rescaling_student"]), x, "test"),
    }
    assert expected["teacher"] > 0.9
    for name, value in expected.items():
        assert figures[name]["accuracy"] == pytest.approx(value), name
    assert not any("chance" in note for note in saved["notes"])
    # The teacher and the baseline ran behind a Rescaling layer (the data is
    # in the student's range); their sizes are their own files', not the
    # wrapper's.
    for name, file in (
        ("teacher", "rescaling_teacher"),
        ("baseline", "rescaling_student"),
    ):
        path = tmp_path / f"{name}.keras"
        load(files[file]).save(path)
        assert figures[name]["size_bytes"] == path.stat().st_size, name


@pytest.mark.parametrize("source", ["images", "tfds"])
def test_report_flags_a_teacher_at_chance(files, tmp_path, source, capsys):
    out = tmp_path / "report"
    argv = report_argv(files, source, out, "--pixel-range", "teacher=0-1")
    assert main(argv) == 0  # a report still: the flag is a note, not an abort
    captured = capsys.readouterr()
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith("keras-kd report: warning: the teacher scores")
    assert "no better than chance with 3 classes" in warning
    assert "try --pixel-range teacher=0-255" in warning
    note = warning.removeprefix("keras-kd report: warning: ")
    assert json.loads((out / "report.json").read_text())["notes"] == [note]
    assert f"note: {note}" in captured.out
    assert note in (out / "report.md").read_text()


def test_export_calibrates_a_rescaling_model_on_raw_pixels(files, tmp_path, capsys):
    out = tmp_path / "teacher.tflite"
    argv = [
        "export", files["rescaling_teacher"], out, "--quantization", "int8",
        *data_args(files, "images"), "--split", "train",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "Pixel range: calibration images 0-255 (auto: it has a Rescaling" in (
        capsys.readouterr().out
    )
    teacher = load(files["rescaling_teacher"])
    x = raw("test")
    # int8 calibrated on [0, 1] images would clip these raw pixels
    agree = np.argmax(run_litert(out, x)[0], -1) == np.argmax(teacher(x), -1)
    assert agree.mean() >= 0.9


# --- the chance rule -----------------------------------------------------------


def test_binomial_tail_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for correct, n, p in [(8, 24, 1 / 3), (80, 512, 0.1), (0, 9, 0.5), (300, 512, 0.5)]:
        expected = stats.binom.sf(correct - 1, n, p)
        assert _checks.binomial_tail(correct, n, p) == pytest.approx(expected, rel=1e-9)


def test_at_chance_needs_the_score_guessing_reaches_once_in_a_thousand():
    def threshold(n, k):
        return next(c for c in range(n + 1) if not _checks.at_chance(c, n, k))

    # the figures the module's docstring gives
    assert threshold(512, 10) / 512 == pytest.approx(0.145, abs=0.0005)
    assert threshold(512, 2) / 512 == pytest.approx(0.57, abs=0.001)
    for n, k in [(512, 10), (24, 3), (512, 2)]:
        c = threshold(n, k)
        assert _checks.binomial_tail(c, n, 1 / k) < 1e-3
        assert _checks.binomial_tail(c - 1, n, 1 / k) >= 1e-3
    # a weak teacher (35.8%, CIFAR-10's in the issue) is far above chance
    assert not _checks.at_chance(round(0.358 * 512), 512, 10)
    assert _checks.at_chance(0, 24, 3)  # below chance counts as at chance
    assert not _checks.at_chance(0, 24, 1)  # one class: nothing to check
