"""What `--data` and `--split` name: batches of labelled images.

`--data` is either a directory of images, one sub-directory per class, or a
tfds image-classification name, loaded with `as_supervised=True`. Images are
resized to the model's input size and given as float32 in the pixel range
the model expects (`keras_kd.cli._pixels`): 0-255, as stored, or divided by
255 ([0, 1]). With `--data-dir`, tfds reads only what is already there
(nothing is downloaded); without it, tfds uses its default directory and
downloads as usual.

`--split` takes tfds's split syntax wherever it is taken: a name (`train`),
a slice (`train[:10000]`, `train[:10%]`, `test[10%:]`) and unions
(`train+test`, `train[:50%]+test`). A tfds set gets it as it is. In an image
directory a name is the sub-directory `DIR/<name>/`, or `DIR` itself when it
has no such sub-directory and holds the class sub-directories directly; a
slice takes that sub-directory's images in a fixed shuffled order (the same
in every command and for every `--seed`), so that `train[:90%]` and
`train[90%:]` are disjoint and each mixes the classes. Percent boundaries are
rounded as tfds rounds them (to the closest example).
"""

from __future__ import annotations

import os
import re

from keras_kd.cli._args import UsageError

# tfds names: "mnist", "cifar10", "mnist:3.*.*", "cifar10_corrupted/fog_1".
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9.*]+)?$")
# What keras.utils.image_dataset_from_directory reads.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# The fixed order a slice of an image directory is taken in.
_SLICE_ORDER_SEED = 1337
_CHANNELS = {1: 1, None: 1, 3: 3, 4: 4}  # the model's channels -> decoded


def flag(argument: str) -> str:
    """`--teacher` stays as it is; a positional `model` reads `MODEL`."""
    return argument if argument.startswith("-") else argument.upper()


def model_image_shape(model, argument: str):
    """The `(height, width, channels)` a one-input image model takes."""
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(model.inputs) != 1 or len(shape) not in (3, 4):
        raise UsageError(
            f"{flag(argument)}: --data feeds images, so the model must have "
            f"one image input (batch, height, width[, channels]); got inputs "
            f"{[tuple(i.shape) for i in getattr(model, 'inputs', None) or []]}"
        )
    shape = tuple(shape[1:])
    if len(shape) == 2:
        shape = (*shape, None)  # (height, width) models: one channel, squeezed
    if shape[0] is None or shape[1] is None:
        raise UsageError(
            f"{flag(argument)}: the model's input size {shape} is not fixed; "
            f"--data needs a height and width to resize the images to"
        )
    return shape


# --- image directories -------------------------------------------------------


def _class_dirs(directory: str) -> list:
    return sorted(
        d
        for d in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")
    )


def _list_images(directory: str):
    """`(paths, class name of each)` under `directory/<class>/`, at any depth.

    In the order `keras.utils.image_dataset_from_directory` lists them
    unshuffled: classes by name, then files by path.
    """
    paths, classes = [], []
    for name in _class_dirs(directory):
        found = []
        for root, dirs, files in os.walk(os.path.join(directory, name)):
            dirs.sort()
            found += [
                os.path.join(root, f)
                for f in files
                if f.lower().endswith(IMAGE_SUFFIXES)
            ]
        found.sort()
        paths += found
        classes += [name] * len(found)
    return paths, classes


def _has_images(directory: str) -> bool:
    """Whether a class sub-directory holds images itself (not only deeper).

    Keras reads images at any depth; this check catches `--data` naming the
    directory above the image directory (its sub-directories would be taken
    for classes).
    """
    return any(
        name.lower().endswith(IMAGE_SUFFIXES)
        for c in _class_dirs(directory)
        for name in os.listdir(os.path.join(directory, c))
    )


def _split_directory(directory, name, split, argument, fallback) -> str:
    """The directory the split name `name` stands for."""
    chosen = os.path.join(directory, name)
    if os.path.isdir(chosen):
        return chosen
    if fallback is None or name in fallback:
        return directory
    raise UsageError(f"{argument} {split}: no directory {chosen}")


def _parse_split(directory, split, argument, fallback):
    """`[(directory, start, stop)]`: the parts of `split`, resolved.

    A name that is a sub-directory is taken whole, whatever its characters;
    anything else is read with tfds's split syntax.
    """
    if not split:
        return [(directory, None, None)]
    if os.path.isdir(os.path.join(directory, split)):
        return [(os.path.join(directory, split), None, None)]
    if re.fullmatch(r"[\w-]+", split):  # a plain name: no tfds needed
        chosen = _split_directory(directory, split, split, argument, fallback)
        return [(chosen, None, None)]
    import tensorflow_datasets as tfds

    try:
        instruction = tfds.core.ReadInstruction.from_spec(split)
    except (ValueError, TypeError) as e:
        raise UsageError(_split_syntax_error(split, argument, e)) from None
    dirs = {
        n: _split_directory(directory, n, split, argument, fallback)
        for n in split_names(split)
    }
    counts = {n: len(_list_images(d)[0]) for n, d in dirs.items()}
    infos = {
        n: tfds.core.SplitInfo(
            name=n, shard_lengths=[c], num_bytes=0, filename_template=None
        )
        for n, c in counts.items()
    }
    try:
        absolute = instruction.to_absolute(infos)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{argument} {split}: {_tfds_reason(e)}") from None
    return [(dirs[a.splitname], a.from_, a.to) for a in absolute]


def split_names(split: str) -> list:
    """The split names a split spec reads, in order (`train[:10%]+test`: both).

    Args:
        split: a split in tfds's syntax, or a sub-directory name.

    Returns:
        The names, each once; a text that is not in tfds's syntax is one name.
    """
    names = []
    for part in re.split(r"\s*\+\s*", split.strip()):
        match = re.match(r"[\w-]+", part)
        name = match.group(0) if match else part
        if name not in names:
            names.append(name)
    return names


def _tfds_reason(error) -> str:
    """tfds's reason for refusing a split, on one line, without its web link."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__).split(". See format")[0]


def _split_syntax_error(split, argument, error) -> str:
    detail = _tfds_reason(error)
    return (
        f"{argument} {split}: not a split ({detail}); expected a name, a slice "
        f"or a union in tfds's syntax, e.g. train, train[:80%], test[10%:], "
        f"train[:1000], train+test"
    )


def _select_images(directory, split, argument, fallback, class_names):
    """`(paths, labels, class_names)` of the images `split` selects."""
    import numpy as np

    parts = _parse_split(directory, split, argument, fallback)
    listed = {}
    for chosen, _, _ in parts:
        if not _class_dirs(chosen):
            raise UsageError(
                f"--data {directory}: expected one sub-directory of images per "
                f"class (or a {split}/ sub-directory holding them); found none"
            )
        listed[chosen] = _list_images(chosen)
        if not _has_images(chosen):
            raise UsageError(
                f"--data {chosen}: no images ({', '.join(IMAGE_SUFFIXES)}) in its "
                f"class sub-directories {_class_dirs(chosen)}"
            )
    if class_names is None:
        class_names = sorted({c for _, classes in listed.values() for c in classes})
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for chosen, start, stop in parts:
        found, classes = listed[chosen]
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise UsageError(
                f"{argument} {split}: {chosen} has classes {unknown} that the "
                f"training data ({class_names}) does not have"
            )
        order = np.random.default_rng(_SLICE_ORDER_SEED).permutation(len(found))
        for i in order[start:stop]:
            paths.append(found[i])
            labels.append(index[classes[i]])
    return paths, labels, list(class_names)


def _image_directory(directory, split, shape, options):
    from keras_kd.backend import tf

    height, width, channels = shape
    if channels not in _CHANNELS:
        raise UsageError(
            f"--data {directory}: the model takes {channels} channels; images "
            f"have 1 (grayscale), 3 (rgb) or 4 (rgba)"
        )
    paths, labels, names = _select_images(
        directory,
        split,
        options["split_argument"],
        options["fallback"],
        options["class_names"],
    )
    if not paths:
        raise UsageError(f"{options['split_argument']} {split}: selects no images")
    decoded = _CHANNELS[channels]

    def load(path, label):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=decoded, expand_animations=False
        )
        image = tf.image.resize(image, (height, width), method="bilinear")
        image.set_shape((height, width, decoded))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32)))
    if options["shuffle"]:
        ds = ds.shuffle(len(paths), seed=options["seed"], reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds, names


# --- tfds --------------------------------------------------------------------


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

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
            f"--data {name}: not found in --data-dir {data_dir} (nothing is "
            f"downloaded when --data-dir is given; omit it to let tfds download "
            f"the set)"
        )
    return builder


def _check_tfds_split(builder, name, split, argument) -> None:
    splits = sorted(builder.info.splits.keys())
    if re.fullmatch(r"\w+", split) and split not in splits:
        raise UsageError(f"--data {name}: no split {split!r}; it has {splits}")
    try:
        count = builder.info.splits[split].num_examples
    except (ValueError, TypeError, KeyError, AssertionError) as e:
        raise UsageError(
            f"{argument} {split}: {_tfds_reason(e)} ({name} has splits "
            f"{splits}; tfds's syntax: train, train[:80%], test[10%:], "
            f"train[:1000], train+test)"
        ) from None
    if not count:
        raise UsageError(f"{argument} {split}: selects no examples of {name}")


def _tfds(name, data_dir, split, shape, options):
    builder = _tfds_builder(name, data_dir)
    _check_tfds_split(builder, name, split, options["split_argument"])
    features = builder.info.features
    height, width, channels = shape
    have = features["image"].shape[-1]
    if channels is not None and have not in (None, channels):
        raise UsageError(
            f"--data {name}: images have {have} channel(s), the model takes {channels}"
        )
    ds = builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=options["shuffle"]
    )
    if options["shuffle"]:
        ds = ds.shuffle(10 * options["batch_size"], seed=options["seed"])

    def load(x, y):
        from keras_kd.backend import tf

        return tf.image.resize(tf.cast(x, tf.float32), (height, width)), y

    return ds.map(load), list(features["label"].names)


# --- the entry point ---------------------------------------------------------


def load_data(
    data,
    data_dir,
    split,
    model,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    model_argument: str = "--student",
    *,
    pixel_range: str = "0-1",
    split_argument: str = "--split",
    fallback=None,
    class_names=None,
):
    """Loads `--data` as batches of `(float32 images, int labels)`.

    Args:
        data: a directory of images (one sub-directory per class) or a tfds
            image-classification name.
        data_dir: tfds data dir; None: tfds's default (downloads if needed).
        split: the split in tfds's syntax (see the module docstring).
        model: the model the images are fed to (its input size is used).
        batch_size: images per batch.
        shuffle: shuffle the examples (training).
        seed: the shuffling seed.
        model_argument: the argument `model` came from, for messages.
        pixel_range: `"0-1"` (pixels divided by 255) or `"0-255"` (as stored).
        split_argument: the argument `split` came from, for messages.
        fallback: in an image directory, the split names that stand for the
            directory itself when it has no sub-directory of that name; None:
            any name.
        class_names: in an image directory, the classes in label order (those
            of the training data, for a validation split); None: its own
            class sub-directories, sorted.

    Returns:
        `(dataset, class_names)`: a batched `tf.data.Dataset` and the class
        names.
    """
    from keras_kd.backend import tf

    shape = model_image_shape(model, model_argument)
    options = dict(
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        split_argument=split_argument,
        fallback=fallback,
        class_names=class_names,
    )
    if os.path.isdir(data):
        ds, names = _image_directory(data, split, shape, options)
    elif os.path.exists(data):
        raise UsageError(
            f"--data {data}: is a file; expected a directory of images or a tfds name"
        )
    elif not _TFDS_NAME.match(data):
        raise UsageError(
            f"--data {data}: no such directory, and not a tfds name (such as mnist)"
        )
    else:
        ds, names = _tfds(data, data_dir, split, shape, options)
    squeeze = shape[2] is None
    divide = pixel_range == "0-1"

    def scale(x, y):
        x = tf.cast(x, tf.float32)
        if divide:
            x = x / 255.0
        if squeeze:
            x = tf.squeeze(x, -1)
        return x, y

    ds = ds.map(scale).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds, names


def check_classes(model, class_names, argument: str, data: str) -> None:
    """Refuses data with more classes than the model's output has."""
    units = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if units is not None and len(class_names) > units:
        raise UsageError(
            f"--data {data}: {len(class_names)} classes, but {flag(argument)} "
            f"outputs {units}"
        )
