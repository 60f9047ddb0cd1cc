"""A phone API reads what `to_tflite(labels=..., normalization=...)` writes:
MediaPipe Tasks' `ImageClassifier` (the API Android and iOS apps call) loads
the exported file as it is and classifies held-out images as Keras does.

Needs the `phone` extra (`pip install keras-kd[phone]`: mediapipe>=1.2.3);
skipped without it. CI's `phone` section installs it and checks that it
imports, so these tests run there rather than skip.
"""

import numpy as np
import pytest

from keras_kd import export
from keras_kd.backend import keras

mp = pytest.importorskip("mediapipe")
vision = pytest.importorskip("mediapipe.tasks.python.vision")

LABELS = [f"digit {i}" for i in range(10)]
MEAN, STD = 127.5, 127.5


def _colour_digits(seed=0):
    """scikit-learn's 8x8 digits (they ship with it) as 16x16 RGB uint8
    images, each drawn in a random ink colour on a random paper colour."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    ink = digits.images / 16.0  # (n, 8, 8) in [0, 1]
    ink = ink.repeat(2, axis=1).repeat(2, axis=2)[..., None]
    n = len(ink)
    paper = rng.integers(0, 256, size=(n, 1, 1, 3))
    colour = (paper + rng.choice([-1, 1], size=(n, 1, 1, 3)) * 128) % 256
    images = paper * (1 - ink) + colour * ink + rng.normal(0, 6, ink.shape[:3] + (3,))
    return np.clip(images, 0, 255).astype(np.uint8), digits.target


@pytest.fixture(scope="module")
def trained():
    images, labels = _colour_digits()
    x = ((images.astype("float32") - MEAN) / STD).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ],
        name="colour_digits",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    held_out = slice(1500, None)  # 297 images the model never sees
    model.fit(x[:1500], labels[:1500], epochs=20, batch_size=32, verbose=0)
    return model, x, images[held_out], x[held_out], labels[held_out]


def _mediapipe_top1(path, images):
    options = vision.ImageClassifierOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(path)), max_results=1
    )
    indices, names = [], []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            picture = mp.Image(image_format=mp.ImageFormat.SRGB, data=image)
            (top,) = classifier.classify(picture).classifications[0].categories
            indices.append(top.index)
            names.append(top.category_name)
    return np.array(indices), names


@pytest.mark.parametrize("quantization", [None, "int8"])
def test_mediapipe_classifies_held_out_images_as_keras_does(
    trained, tmp_path, quantization
):
    model, x, images, x_held_out, y_held_out = trained
    keras_top1 = np.asarray(model(x_held_out)).argmax(-1)
    assert np.mean(keras_top1 == y_held_out) > 0.5  # a model that learned
    path = tmp_path / "student.tflite"
    report = export.to_tflite(
        model,
        path,
        quantization=quantization,
        representative_data=x[:1000],
        verify_data=x_held_out,
        num_calibration_samples=1000,
        labels=LABELS,
        normalization=(MEAN, STD),
        latency_runs=0,
    )
    assert report.mediapipe_ready
    indices, names = _mediapipe_top1(path, images)
    assert len(indices) >= 100
    agreement = np.mean(indices == keras_top1)
    assert agreement >= 0.99, (quantization, agreement)
    assert names == [LABELS[i] for i in indices]  # the labels file is read


def test_mediapipe_refuses_what_the_report_says_it_cannot_load(trained, tmp_path):
    model, x, images, _, _ = trained
    plain = tmp_path / "plain.tflite"
    report = export.to_tflite(model, plain, verify=False)
    assert not report.mediapipe_ready
    with pytest.raises((ValueError, OSError), match="NormalizationOptions"):
        _mediapipe_top1(plain, images[:1])
    integer = tmp_path / "int8_io.tflite"
    report = export.to_tflite(
        model, integer, "int8_io", representative_data=x[:64], verify=False,
        labels=LABELS, normalization=(MEAN, STD),
    )  # fmt: skip
    assert not report.mediapipe_ready
    with pytest.raises((ValueError, OSError), match="uint8/float32"):
        _mediapipe_top1(integer, images[:1])


def test_mediapipe_parses_the_metadata_flatbuffer_field_by_field(trained, tmp_path):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    model, *_ = trained
    path = tmp_path / "m.tflite"
    export.to_tflite(
        model, path, verify=False, labels=LABELS, normalization=([1, 2, 3], 4)
    )
    from keras_kd.export._convert import metadata_entries

    buffer = metadata_entries(path.read_bytes())["TFLITE_METADATA"]
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    parsed = schema.ModelMetadataT.InitFromObj(
        schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0)
    )
    assert parsed.name == b"colour_digits" and parsed.minParserVersion == b"1.0.0"
    (subgraph,) = parsed.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    kinds = schema.ContentProperties
    assert image.content.contentPropertiesType == kinds.ImageProperties
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    (unit,) = image.processUnits
    assert unit.optionsType == schema.ProcessUnitOptions.NormalizationOptions
    np.testing.assert_array_equal(unit.options.mean, [1, 2, 3])
    np.testing.assert_array_equal(unit.options.std, [4, 4, 4])
    np.testing.assert_allclose(image.stats.min, [-0.25, -0.5, -0.75])
    (scores,) = subgraph.outputTensorMetadata
    assert (
        scores.content.contentPropertiesType
        == schema.ContentProperties.FeatureProperties
    )
    (labels_file,) = scores.associatedFiles
    assert labels_file.name == b"labels.txt"
    assert labels_file.type == schema.AssociatedFileType.TENSOR_AXIS_LABELS
