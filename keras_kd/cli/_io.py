"""What the commands read and write: model files, data, output paths.

Each check runs before any training and raises `UsageError` naming the
command-line argument, what it received and what it expects.

Data (`--data`) is either a directory of images, one sub-directory per
class (`keras.utils.image_dataset_from_directory`; a sub-directory named
after the split, e.g. `DIR/train/`, is used when it exists), or a tfds
image-classification name, loaded with `as_supervised=True`. Images are
scaled to [0, 1] float32 and resized to the model's input size. With
`--data-dir`, tfds reads only what is already there (nothing is downloaded);
without it, tfds uses its default directory and downloads as usual.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import zipfile

from keras_kd.cli._args import UsageError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# tfds names: "mnist", "cifar10", "mnist:3.*.*", "cifar10_corrupted/fog_1".
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9.*]+)?$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _flag(argument: str) -> str:
    return argument if argument.startswith("-") else argument.upper()


def _h5_config(path: str):
    import h5py

    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    if isinstance(config, bytes):
        config = config.decode("utf-8")
    return config


def _check_model_file(path: str, argument: str) -> None:
    flag = _flag(argument)
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory; expected a .keras model file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MODEL_SUFFIXES:
        raise UsageError(
            f"{flag} {path}: expected a .keras model file (or .h5), got a "
            f"{suffix or 'file without suffix'}"
        )
    if suffix == ".keras":
        ok = zipfile.is_zipfile(path)
        if ok:
            with zipfile.ZipFile(path) as archive:
                ok = "config.json" in archive.namelist()
    else:
        with open(path, "rb") as f:
            ok = f.read(8) == _HDF5_SIGNATURE
    if not ok:
        raise UsageError(
            f"{flag} {path}: not a Keras model file (a {suffix} file saved by "
            f"`model.save`)"
        )


def _needs_unsafe(path: str) -> bool:
    """Whether the file holds a `Lambda` layer (Python code, run on load)."""
    if path.lower().endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode("utf-8", "replace")
    else:
        config = _h5_config(path) or ""
    return bool(re.search(r'"class_name":\s*"Lambda"', config))


def load_model(path, argument: str, unsafe: bool = False):
    """Loads a Keras model file given on the command line.

    Args:
        path: the file, `.keras` (or `.h5` / `.hdf5`, the legacy format).
        argument: the command-line argument it came from, for messages.
        unsafe: allow a model whose loading runs Python code (a `Lambda`
            layer); refused otherwise (Keras's `safe_mode=True`).

    Returns:
        The loaded, uncompiled `keras.Model`.

    Raises:
        UsageError: a missing file, a file that is not a Keras model, a model
            needing unsafe deserialization without `unsafe`, or one that the
            installed Keras cannot load.
    """
    from keras_kd.backend import FLAVOUR, keras

    path = os.fspath(path)
    flag = _flag(argument)
    _check_model_file(path, argument)
    if not unsafe and _needs_unsafe(path):
        # tf_keras loads Lambda layers from .h5 files even in safe mode;
        # this check refuses them in both flavours and both formats.
        raise UsageError(
            f"{flag} {path}: the model has a Lambda layer, whose loading runs "
            f"Python code from the file; pass --unsafe if you trust it "
            f"(Keras's safe_mode=False)"
        )
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as e:  # Keras raises many types; all mean "cannot load"
        detail = " ".join(str(e).split())[:300]
        raise UsageError(
            f"{flag} {path}: could not be loaded by {FLAVOUR} "
            f"({type(e).__name__}: {detail})"
        ) from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{flag} {path}: holds a {type(model).__name__}, not a model")
    return model


def check_output_path(path, argument: str, suffixes) -> str:
    """Checks a file the command will write: suffix and existing directory.

    Args:
        path: the file to write.
        argument: the command-line argument, for messages.
        suffixes: the accepted suffixes, e.g. `(".tflite",)`.

    Returns:
        The path as a `str`.
    """
    path = os.fspath(path)
    flag = _flag(argument)
    if not path.lower().endswith(tuple(suffixes)):
        raise UsageError(
            f"{flag} {path}: expected a file name ending in {' or '.join(suffixes)}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{flag} {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory")
    return path


def model_image_shape(model, argument: str):
    """The `(height, width, channels)` a one-input image model takes."""
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(model.inputs) != 1 or len(shape) not in (3, 4):
        raise UsageError(
            f"{_flag(argument)}: --data feeds images, so the model must have "
            f"one image input (batch, height, width[, channels]); got inputs "
            f"{[tuple(i.shape) for i in getattr(model, 'inputs', None) or []]}"
        )
    shape = tuple(shape[1:])
    if len(shape) == 2:
        shape = (*shape, None)  # (height, width) models: one channel, squeezed
    if shape[0] is None or shape[1] is None:
        raise UsageError(
            f"{_flag(argument)}: the model's input size {shape} is not fixed; "
            f"--data needs a height and width to resize the images to"
        )
    return shape


def _class_dirs(directory: str) -> list:
    return sorted(
        d
        for d in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")
    )


def _image_directory(directory, split, shape, batch_size, shuffle, seed):
    from keras_kd.backend import LEGACY, keras, tf

    chosen = os.path.join(directory, split) if split else directory
    if split and not os.path.isdir(chosen):
        chosen = directory
    classes = _class_dirs(chosen)
    if not classes:
        raise UsageError(
            f"--data {directory}: expected one sub-directory of images per class "
            f"(or a {split}/ sub-directory holding them); found none"
        )
    has_images = any(
        name.lower().endswith(_IMAGE_SUFFIXES)
        for c in classes
        for name in os.listdir(os.path.join(chosen, c))
    )
    if not has_images:
        raise UsageError(
            f"--data {chosen}: no images ({', '.join(_IMAGE_SUFFIXES)}) in its "
            f"class sub-directories {classes}"
        )
    height, width, channels = shape
    color_mode = {1: "grayscale", None: "grayscale", 3: "rgb", 4: "rgba"}.get(channels)
    if color_mode is None:
        raise UsageError(
            f"--data {directory}: the model takes {channels} channels; images "
            f"have 1 (grayscale), 3 (rgb) or 4 (rgba)"
        )
    options = dict(
        labels="inferred",
        label_mode="int",
        color_mode=color_mode,
        image_size=(height, width),
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
    )
    if LEGACY:  # tf_keras has no `verbose`; its "Found N files" line is dropped
        with contextlib.redirect_stdout(io.StringIO()):
            ds = keras.utils.image_dataset_from_directory(chosen, **options)
    else:
        ds = keras.utils.image_dataset_from_directory(chosen, verbose=False, **options)
    names = list(ds.class_names)

    def scale(x, y):
        x = tf.cast(x, tf.float32) / 255.0
        if channels is None:
            x = tf.squeeze(x, -1)
        return x, y

    return ds.map(scale).prefetch(tf.data.AUTOTUNE), names


def _tfds(name, data_dir, split, shape, batch_size, shuffle, seed):
    import tensorflow_datasets as tfds

    from keras_kd.backend import tf

    where = f" in --data-dir {data_dir}" if data_dir else ""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise UsageError(
            f"--data {name}: not a directory, and not a tfds data set "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise UsageError(
            f"--data {name}: not an image-classification data set (expected "
            f"'image' and 'label' features, found {sorted(features.keys())})"
        )
    if data_dir is None:
        builder.download_and_prepare()  # tfds's default: download if missing
    elif not builder.is_prepared():
        raise UsageError(
            f"--data {name}: not found{where} (nothing is downloaded when "
            f"--data-dir is given; omit it to let tfds download the set)"
        )
    if split not in builder.info.splits:
        raise UsageError(
            f"--data {name}: no split {split!r}; it has "
            f"{sorted(builder.info.splits.keys())}"
        )
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=shuffle)
    height, width, channels = shape
    have = features["image"].shape[-1]
    if channels is not None and have not in (None, channels):
        raise UsageError(
            f"--data {name}: images have {have} channel(s), the model takes {channels}"
        )

    def scale(x, y):
        x = tf.image.resize(tf.cast(x, tf.float32), (height, width)) / 255.0
        if channels is None:
            x = tf.squeeze(x, -1)
        return x, y

    if shuffle:
        ds = ds.shuffle(10 * batch_size, seed=seed)
    ds = ds.map(scale).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds, list(features["label"].names)


def load_data(
    data,
    data_dir,
    split,
    model,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    model_argument: str = "--student",
):
    """Loads `--data` as batches of `(images in [0, 1], int labels)`.

    Args:
        data: a directory of images (one sub-directory per class) or a tfds
            image-classification name.
        data_dir: tfds data dir; None: tfds's default (downloads if needed).
        split: the split, e.g. `"train"`: a tfds split, or `DIR/<split>/`.
        model: the model the images are fed to (its input size is used).
        batch_size: images per batch.
        shuffle: shuffle the examples (training).
        seed: the shuffling seed.
        model_argument: the argument `model` came from, for messages.

    Returns:
        `(dataset, class_names)`: a batched `tf.data.Dataset` and the class
        names.
    """
    shape = model_image_shape(model, model_argument)
    if os.path.isdir(data):
        return _image_directory(data, split, shape, batch_size, shuffle, seed)
    if os.path.exists(data):
        raise UsageError(
            f"--data {data}: is a file; expected a directory of images or a tfds name"
        )
    if not _TFDS_NAME.match(data):
        raise UsageError(
            f"--data {data}: no such directory, and not a tfds name (such as mnist)"
        )
    return _tfds(data, data_dir, split, shape, batch_size, shuffle, seed)


def check_classes(model, class_names, argument: str, data: str) -> None:
    """Refuses data with more classes than the model's output has."""
    units = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if units is not None and len(class_names) > units:
        raise UsageError(
            f"--data {data}: {len(class_names)} classes, but {_flag(argument)} "
            f"outputs {units}"
        )
