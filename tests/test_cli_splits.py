"""`--split` takes tfds's slicing syntax, for tfds sets and image directories.

The data are the band images of `test_cli_pixels` (train 24, test 12), as
an image directory and as a tiny tfds set; the selections are checked
against the pixels written, by count and by content.
"""

import json

import numpy as np
import pytest

from keras_kd import cli
from keras_kd.cli import _data
from test_cli_pixels import (
    SPLITS,
    TFDS_NAME,
    KerasKdCliBands,
    error_line,
    model,
    raw,
    write_images,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_splits")
    for split, (x, y) in SPLITS.items():
        write_images(root / "images" / split, x, y)
    # the training images alone, class sub-directories directly in DIR
    write_images(root / "flat", *SPLITS["train"])
    KerasKdCliBands(data_dir=str(root / "tfds")).download_and_prepare()
    student = root / "student.keras"
    model("student").save(student)
    teacher = root / "teacher.keras"
    _trained_teacher().save(teacher)
    return {"root": root, "student": student, "teacher": teacher}


def _trained_teacher():
    from keras_kd.backend import keras

    keras.utils.set_random_seed(0)
    teacher = model("teacher", hidden=16)
    teacher.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(raw("train") / 255.0, SPLITS["train"][1], epochs=30, verbose=0)
    return teacher


def _source(files, source):
    if source == "images":
        return str(files["root"] / "images"), None
    return TFDS_NAME, str(files["root"] / "tfds")


def _load(files, source, split, **kwargs):
    """`(examples, labels)`: each example as (label, pixel bytes), in order."""
    data, data_dir = _source(files, source)
    ds, _ = _data.load_data(
        data, data_dir, split, model("m"), 7, pixel_range="0-255", **kwargs
    )
    batches = list(ds)  # one pass: a shuffled dataset reshuffles on the next
    x = np.concatenate([np.asarray(b[0]) for b in batches]).astype(np.uint8)
    y = np.concatenate([np.asarray(b[1]) for b in batches])
    return [(int(label), image.tobytes()) for image, label in zip(x, y)], y


def _written(split):
    x, y = SPLITS[split]
    return [(int(label), image[..., None].tobytes()) for image, label in zip(x, y)]


@pytest.mark.parametrize("source", ["images", "tfds"])
@pytest.mark.parametrize(
    "split, count",
    [
        ("train[:50%]", 12),
        ("train[:10%]", 2),  # 2.4 rounded to the closest example, as tfds does
        ("train[:10]", 10),
        ("test[25%:]", 9),
        ("test[-3:]", 3),
        ("train+test", 36),
        ("train[:25%]+test[:50%]", 12),
    ],
)
def test_a_split_slice_selects_what_tfds_would(files, source, split, count):
    examples, _ = _load(files, source, split)
    assert len(examples) == count
    everything = _written("train") + _written("test")
    assert len(set(examples)) == count and set(examples) <= set(everything)
    if "+" not in split:
        assert set(examples) <= set(_written(split.split("[")[0]))


@pytest.mark.parametrize("source", ["images", "tfds"])
def test_complementary_slices_are_disjoint_and_cover_the_split(files, source):
    first, y = _load(files, source, "train[:75%]")
    rest, _ = _load(files, source, "train[75%:]")
    assert not set(first) & set(rest)
    assert sorted(first + rest) == sorted(_written("train"))
    # a slice mixes the classes (an image directory lists them class by class)
    assert len(set(y.tolist())) == 3
    # and the same slice is the same images in every command, whatever --seed
    again, _ = _load(files, source, "train[:75%]", shuffle=True, seed=5)
    assert sorted(again) == sorted(first)


def test_a_directory_without_split_sub_directories_is_sliced_itself(files):
    data = str(files["root"] / "flat")
    ds, names = _data.load_data(data, None, "train[:50%]", model("m"), 64)
    assert names == ["circle", "line", "square"]
    assert sum(len(b[1]) for b in ds) == 12


@pytest.mark.parametrize("source", ["images", "tfds"])
def test_report_on_a_slice_counts_its_images(files, source, tmp_path):
    data, data_dir = _source(files, source)
    out = tmp_path / "report"
    argv = [
        "report", "--teacher", files["teacher"], "--student", files["student"],
        "--data", data, "--split", "test[:50%]", "--out", out,
    ] + (["--data-dir", data_dir] if data_dir else [])  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    assert json.loads((out / "report.json").read_text())["num_samples"] == 6


def test_distill_validates_on_a_slice_of_a_flat_directory(files, tmp_path, capsys):
    out = tmp_path / "s.keras"
    argv = [
        "distill", "--teacher", files["teacher"], "--student", files["student"],
        "--data", files["root"] / "flat", "--split", "train[:75%]",
        "--validation-split", "train[75%:]", "--epochs", "1", "--output", out,
        "--verbose", "2",
    ]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "The teacher scores 100.0% on the first 18 images" in printed
    assert "val_accuracy" in printed


@pytest.mark.parametrize(
    "source, option, split, words",
    [
        ("images", "--split", "train[:10", "--split train[:10: not a split "
         "(Unrecognized split format: 'train[:10'); expected a name, a slice or "
         "a union in tfds's syntax"),
        ("images", "--split", "train[30:]", "--split train[30:]: Requested "
         "slice [30:24] incompatible with 24 examples"),
        ("images", "--split", "train[5:5]", "--split train[5:5]: selects no images"),
        ("images", "--validation-split", "valid[:50%]",
         "--validation-split valid[:50%]: no directory"),
        ("tfds", "--split", "valid", "no split 'valid'; it has ['test', 'train']"),
        ("tfds", "--split", "train[:10", "--split train[:10: Unrecognized split "
         "format"),
        ("tfds", "--split", "valid[:10%]", "--split valid[:10%]: Unknown split "
         "'valid'"),
        ("tfds", "--split", "train[30:]", "incompatible with 24 examples"),
    ],
)  # fmt: skip
def test_a_bad_split_exits_2_with_one_line(
    files, tmp_path, capsys, source, option, split, words
):
    data, data_dir = _source(files, source)
    argv = [
        "distill", "--teacher", files["teacher"], "--student", files["student"],
        "--data", data, "--output", tmp_path / "s.keras", option, split,
    ] + (["--data-dir", data_dir] if data_dir else [])  # fmt: skip
    line = error_line(argv, capsys)
    assert line.startswith("keras-kd distill: error: ") and words in line, line
    assert not (tmp_path / "s.keras").exists()


def test_help_gives_the_split_syntax(capsys):
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "train[:80%], test[10%:], train[:1000], train+test" in help_text
