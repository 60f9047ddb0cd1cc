"""Tests for keras_kd/export/_metadata.py: the standard TFLite metadata of an
image classifier (`to_tflite(labels=..., normalization=...)`), read back by
`read_metadata`, and the errors for what it cannot describe.

That MediaPipe's `ImageClassifier` reads it is tests/test_export_mediapipe.py.
"""

import io
import zipfile

import numpy as np
import pytest

from conftest import run_litert
from keras_kd import export
from keras_kd.backend import keras
from keras_kd.export import _metadata

LABELS = ["red", "green", "blue"]


def _image_model(channels=3, classes=3, name="colours"):
    return keras.Sequential(
        [
            keras.Input((8, 8, channels)),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes),
        ],
        name=name,
    )


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return _image_model()


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, size=(32, 8, 8, 3)).astype("float32")


def _export(model, path, x, **kwargs):
    kwargs.setdefault("latency_runs", 0)
    return export.to_tflite(model, path, representative_data=x, **kwargs)


def test_labels_and_normalization_are_written_as_the_schema_says(model, x, tmp_path):
    path = tmp_path / "m.tflite"
    report = _export(
        model, path, x, labels=LABELS, normalization=(127.5, 127.5),
        metadata={"notes": "kept"},
    )  # fmt: skip
    assert report.mediapipe_ready and report.top1_agreement == 1.0
    assert not report.notes
    entries = export.read_metadata(path)
    assert entries["notes"] == b"kept"  # custom entries still there
    standard = entries["TFLITE_METADATA"]
    assert standard["name"] == "colours"
    assert standard["min_parser_version"] == "1.0.0"
    assert standard["labels"] == LABELS
    (image,) = standard["inputs"]
    assert image["color_space"] == "RGB"
    assert image["mean"] == [127.5] * 3 and image["std"] == [127.5] * 3
    # The stats are the range of (pixel - mean) / std for pixels in [0, 255].
    np.testing.assert_allclose(image["min"], [-1.0] * 3)
    np.testing.assert_allclose(image["max"], [1.0] * 3)
    (scores,) = standard["outputs"]
    assert scores["associated_files"] == [
        {"name": "labels.txt", "type": "TENSOR_AXIS_LABELS"}
    ]
    # The label file is zipped after the flatbuffer, as the populator does.
    content = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.read("labels.txt") == b"red\ngreen\nblue\n"
        assert archive.getinfo("labels.txt").compress_type == zipfile.ZIP_STORED
    expected = np.asarray(model(x))
    np.testing.assert_allclose(run_litert(path, x)[0], expected, atol=1e-5)
    accuracy = export.evaluate_tflite(path, (x, expected.argmax(-1)))
    assert accuracy == 1.0


def test_per_channel_normalization_and_a_labels_file(model, x, tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("red\ngreen\nblue\n")
    path = tmp_path / "m.tflite"
    mean, std = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
    _export(model, path, x, labels=labels_file, normalization=(mean, std))
    standard = export.read_metadata(path)["TFLITE_METADATA"]
    (image,) = standard["inputs"]
    assert image["mean"] == mean and image["std"] == std
    np.testing.assert_allclose(
        image["min"], [-m / s for m, s in zip(mean, std)], rtol=1e-6
    )
    np.testing.assert_allclose(
        image["max"], [(255 - m) / s for m, s in zip(mean, std)], rtol=1e-6
    )
    assert standard["labels"] == LABELS


@pytest.mark.parametrize("quantization", [None, "float16", "dynamic", "int8"])
def test_every_float_io_mode_gets_the_metadata(model, x, tmp_path, quantization):
    path = tmp_path / "m.tflite"
    report = _export(
        model, path, x, quantization=quantization, labels=LABELS,
        normalization=(127.5, 127.5),
    )  # fmt: skip
    assert report.mediapipe_ready and report.top1_agreement >= 0.9
    assert export.read_metadata(path)["TFLITE_METADATA"]["labels"] == LABELS


def test_int8_io_gets_the_metadata_without_stats_and_a_note(model, x, tmp_path):
    path = tmp_path / "m.tflite"
    report = _export(
        model, path, x, quantization="int8_io", labels=LABELS,
        normalization=(127.5, 127.5),
    )  # fmt: skip
    assert not report.mediapipe_ready
    assert any("int8_io" in n and "uint8 or float32" in n for n in report.notes)
    standard = export.read_metadata(path)["TFLITE_METADATA"]
    assert standard["labels"] == LABELS
    assert standard["inputs"][0]["min"] is None  # the tensor's scale says it


def test_without_labels_the_file_exports_with_a_note(model, x, tmp_path):
    report = _export(model, tmp_path / "plain.tflite", x)
    assert not report.mediapipe_ready
    assert any("MediaPipe" in n and "will not load" in n for n in report.notes)
    assert "TFLITE_METADATA" not in export.read_metadata(tmp_path / "plain.tflite")
    # Normalization alone: MediaPipe loads it and names no classes.
    path = tmp_path / "unnamed.tflite"
    report = _export(model, path, x, normalization=(0, 255))
    assert report.mediapipe_ready
    assert any("no labels" in note for note in report.notes)
    standard = export.read_metadata(path)["TFLITE_METADATA"]
    assert standard["labels"] is None and standard["outputs"][0]["labels"] is None


def test_a_non_image_model_gets_no_phone_note(tmp_path):
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    report = export.to_tflite(model, tmp_path / "m.tflite", verify=False)
    assert report.notes == [] and not report.mediapipe_ready


def test_grayscale_models_are_described_but_not_mediapipe_ready(x, tmp_path):
    model = _image_model(channels=1)
    path = tmp_path / "m.tflite"
    report = _export(model, path, x[..., :1], labels=LABELS, normalization=(0.0, 255.0))
    assert not report.mediapipe_ready
    assert any("RGB models only" in note for note in report.notes)
    (image,) = export.read_metadata(path)["TFLITE_METADATA"]["inputs"]
    assert image["color_space"] == "GRAYSCALE" and image["std"] == [255.0]


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"labels": ["a", "b"]}, ValueError, r"must name each of the model's 3"),
        ({"labels": LABELS + ["x"]}, ValueError, r"Received 4 labels"),
        ({"labels": "missing.txt"}, ValueError, r"`labels` names a file that"),
        ({"labels": 3}, TypeError, r"`labels` must be a list of class names"),
        ({"labels": ["a", 2, "c"]}, ValueError, r"`labels` must hold non-empty"),
        ({"labels": ["a", "b\nc", "d"]}, ValueError, r"without line breaks"),
        ({"labels": ["a"]}, ValueError, r"at least 2 classes"),
        ({"labels": LABELS, "normalization": None}, ValueError,
         r"`normalization` is required with `labels`"),
        ({"normalization": (127.5,)}, ValueError, r"`normalization` must be a pair"),
        ({"normalization": (1, 2, 3)}, ValueError, r"`normalization` must be a pair"),
        ({"normalization": "127.5,127.5"}, ValueError, r"must be a pair"),
        ({"normalization": (0, 0)}, ValueError, r"`normalization` must be in \(0.0"),
        ({"normalization": (0, -1)}, ValueError, r"`normalization` must be in"),
        ({"normalization": ([1, 2], 1)}, ValueError,
         r"one per channel \(3\)\. Received a part of 2 values"),
        ({"normalization": (float("inf"), 1)}, ValueError, r"finite numbers"),
        ({"normalization": ("a", 1)}, TypeError, r"`normalization` must be a number"),
        ({"metadata": {"TFLITE_METADATA": b""}}, ValueError, r"reserves"),
    ],
)  # fmt: skip
def test_bad_metadata_arguments_are_refused(model, x, tmp_path, kwargs, error, words):
    kwargs = {"labels": None, "normalization": (127.5, 127.5), **kwargs}
    path = tmp_path / "m.tflite"
    with pytest.raises(error, match=words):
        _export(model, path, x, **kwargs)
    assert not path.exists()


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)]),
         r"model's inputs have shapes \[\(None, 10\)\]"),
        (lambda: _image_model(channels=2), r"3 \(RGB\) or 1 \(grayscale\)"),
        (lambda: keras.Sequential(
            [keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)]),
         r"an output of shape \(1, 8, 8, 3\)"),
    ],
)  # fmt: skip
def test_a_model_that_is_no_image_classifier_is_refused(tmp_path, make, words):
    model = make()
    shape = (4,) + tuple(model.inputs[0].shape[1:])
    x = np.zeros(shape, "float32")
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"Argument `labels` describes an image"):
        _export(model, path, x, labels=LABELS, normalization=(0, 1))
    with pytest.raises(ValueError, match=words):
        _export(model, path, x, labels=LABELS, normalization=(0, 1))
    assert not path.exists()


def test_the_flatbuffer_round_trips_without_a_model():
    info = _metadata.ImageClassifierMetadata(
        name="m", description="d", channels=3, mean=(1.0, 2.0, 3.0),
        std=(4.0, 5.0, 6.0), labels=("a", "b"),
    )  # fmt: skip
    buffer = _metadata.build(info)
    assert buffer[4:8] == b"M001"
    content = _metadata.append_files(b"\x00" * 64, {"labels.txt": b"a\nb\n"})
    parsed = _metadata.parse(buffer, content)
    assert parsed["labels"] == ["a", "b"] and parsed["author"] == "keras-kd"
    assert parsed["inputs"][0]["mean"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="not a metadata flatbuffer"):
        _metadata.parse(b"\x00" * 16)
