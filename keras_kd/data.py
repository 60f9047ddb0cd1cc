"""Data for distillation: the bundled demo set and tfds image classification.

The demo data set is scikit-learn's handwritten digits (1,797 real 8x8
images, UCI ML hand-written digits), which ships inside scikit-learn, so the
demo runs offline. Any tfds image-classification data set can be loaded as
numpy arrays too (`load_tfds_image_classification`); tfds downloads it on a
user's machine, or reads it from `data_dir`. `load_image_classification` is
the one entry point of the examples and the demo, so they all report on the
test sets defined here; `split_validation` holds out part of a training set
for choosing hyperparameters, `to_dataset` makes a `tf.data` pipeline, and
`mix` one that mixes labelled and unlabelled (transfer) data in each batch.
"""

from __future__ import annotations

import collections
import math
import numbers

import numpy as np

from keras_kd._utils import check_int, check_number
from keras_kd.backend import tf
from keras_kd.cache import TeacherBatch, with_teacher_outputs


def load_digits(test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's handwritten digits as image arrays, split train / test.

    Args:
        test_fraction: share of the 1,797 images held out for testing.
        seed: seed of the stratified shuffle that splits them.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, images of shape
        `(n, 8, 8, 1)` in float32 scaled to [0, 1] and int64 labels 0-9.

    Example:

    >>> from keras_kd.data import load_digits
    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape[1:], int(y_train.max())
    ((8, 8, 1), 9)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            "Argument `test_fraction` must be between 0 and 1 (exclusive). "
            f"Received: test_fraction={test_fraction}."
        )
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "The demo data set ships with scikit-learn. Install it with "
            "`pip install keras-kd[demo]` (or `pip install scikit-learn`)."
        ) from e
    bunch = _sk_load_digits()
    x = (bunch.images.astype("float32") / 16.0)[..., None]
    y = bunch.target.astype("int64")
    rng = np.random.default_rng(seed)
    test_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(len(idx) * test_fraction))])
    test_mask = np.zeros(len(y), bool)
    test_mask[test_idx] = True
    train_idx = rng.permutation(np.flatnonzero(~test_mask))
    test_idx = np.flatnonzero(test_mask)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def load_tfds_image_classification(
    name: str,
    data_dir: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    max_train: int | None = None,
    max_test: int | None = None,
):
    """Loads a tfds image-classification data set as float32 numpy arrays.

    Args:
        name: the tfds name, e.g. `"mnist"`, `"fashion_mnist"`, `"cifar10"`.
        data_dir: tfds data dir; None uses tfds's default (and downloads).
        train_split: the split to train on.
        test_split: the split to test on.
        max_train: keep at most this many training images (None: all).
        max_test: keep at most this many test images (None: all).

    Returns:
        `((x_train, y_train), (x_test, y_test), info)` with images scaled to
        [0, 1], int64 labels and the `tfds.core.DatasetInfo`.
    """
    import tensorflow_datasets as tfds

    if not isinstance(name, str) or not name:
        raise ValueError(
            f"Argument `name` must be a tfds data set name such as 'mnist'. "
            f"Received: name={name!r}."
        )
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"Data set {name!r} is not an image-classification set: expected "
            f"'image' and 'label' features, found {sorted(features.keys())}."
        )
    builder.download_and_prepare()

    def split(split_name, limit):
        ds = builder.as_dataset(split=split_name, as_supervised=True)
        if limit is not None:
            ds = ds.take(limit)
        images, labels = [], []
        for batch_x, batch_y in tfds.as_numpy(ds.batch(4096)):
            images.append(batch_x)
            labels.append(batch_y)
        x = np.concatenate(images).astype("float32") / 255.0
        return x, np.concatenate(labels).astype("int64")

    return split(train_split, max_train), split(test_split, max_test), builder.info


def load_image_classification(
    name: str = "digits",
    data_dir: str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
):
    """The bundled digits (`name="digits"`) or any tfds image set, as arrays.

    This is the one data path of keras-kd's examples, demo and benchmarks:
    each reports on the test set defined here (for digits, the stratified
    split of `load_digits(seed=seed)`; for tfds, the set's `"test"` split).

    Args:
        name: `"digits"` (scikit-learn's, offline) or a tfds name such as
            `"mnist"`.
        data_dir: tfds data dir (ignored for digits).
        max_train: keep at most this many training images, the first ones
            (None: all).
        max_test: keep at most this many test images, the first ones
            (None: all).
        seed: seed of the digits' train / test split (ignored for tfds).

    Returns:
        `((x_train, y_train), (x_test, y_test), num_classes, description)`.

    Example:

    >>> from keras_kd import data
    >>> train, test, num_classes, source = data.load_image_classification()
    >>> len(test[0]), num_classes, source
    (450, 10, 'scikit-learn digits (8x8)')
    """
    for argument, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None:
            check_int(value, argument, 1, "images to keep")
    if name == "digits":
        (x_tr, y_tr), (x_te, y_te) = load_digits(seed=seed)
        train = (x_tr[:max_train], y_tr[:max_train])
        test = (x_te[:max_test], y_te[:max_test])
        return train, test, 10, "scikit-learn digits (8x8)"
    train, test, info = load_tfds_image_classification(
        name, data_dir=data_dir, max_train=max_train, max_test=max_test
    )
    return train, test, info.features["label"].num_classes, f"tfds {name}"


def split_validation(x, y, size: int | float):
    """Holds out the last examples of a training set for validation.

    Use it to choose hyperparameters without looking at the test set. Like
    `fit(validation_split=...)` in Keras, it takes the last examples, before
    any shuffling: shuffle first if the set is ordered (the training sets of
    `load_image_classification` are not sorted by class).

    Args:
        x: the training inputs, an array with examples on the first axis.
        y: the training labels, as many as `x`.
        size: the number of examples to hold out (an int), or their share
            of the set (a float strictly between 0 and 1, rounded to the
            nearest count).

    Returns:
        `((x_fit, y_fit), (x_val, y_val))`: the first examples to train on
        and the held-out last ones.

    Example:

    >>> from keras_kd import data
    >>> (x_train, y_train), _ = data.load_digits()
    >>> (x_fit, y_fit), (x_val, y_val) = data.split_validation(
    ...     x_train, y_train, 300)
    >>> len(x_fit), len(x_val)
    (1047, 300)
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(
            "Arguments `x` and `y` must hold as many examples. Received: "
            f"len(x)={n}, len(y)={len(y)}."
        )
    if isinstance(size, numbers.Integral) and not isinstance(size, (bool, np.bool_)):
        count = check_int(size, "size", 1, "examples to hold out")
    else:
        share = check_number(
            size,
            "size",
            0.0,
            1.0,
            low_open=True,
            high_open=True,
            what="the share of examples to hold out",
        )
        count = int(round(share * n))
    if not 0 < count < n:
        raise ValueError(
            f"Argument `size` must leave at least one example on each side of "
            f"the split of {n} examples. Received: size={size!r} "
            f"({count} held out)."
        )
    return (x[:-count], y[:-count]), (x[-count:], y[-count:])


def to_dataset(
    x,
    y=None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    shuffle_buffer: int | None = None,
):
    """A batched, prefetched `tf.data.Dataset` from numpy arrays.

    Args:
        x: the inputs, an array with examples on the first axis.
        y: the labels (None: a dataset of inputs only).
        batch_size: examples per batch; the last batch may be smaller.
        shuffle: whether to shuffle the examples, again each epoch.
        seed: seed of the shuffle.
        shuffle_buffer: examples in `tf.data`'s shuffle buffer (None: all
            of them, a uniform shuffle); a smaller buffer shuffles only
            locally but holds fewer examples.

    Returns:
        A `tf.data.Dataset` of `(x, y)` batches (or `x` batches).

    Example:

    >>> from keras_kd import data
    >>> (x_train, y_train), _ = data.load_digits()
    >>> train_ds = data.to_dataset(x_train, y_train, 64, shuffle=True)
    """
    batch_size = check_int(batch_size, "batch_size", 1, "examples per batch")
    if shuffle_buffer is not None:
        shuffle_buffer = check_int(shuffle_buffer, "shuffle_buffer", 1, "examples")
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if shuffle:
        buffer = len(x) if shuffle_buffer is None else min(shuffle_buffer, len(x))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# Labelled and unlabelled data in one batch
# ---------------------------------------------------------------------------


MixedBatch = collections.namedtuple("MixedBatch", ["x", "y", "unlabelled_x"])
MixedBatch.__doc__ = """A batch of labelled and unlabelled examples, as `mix` yields.

`x` and `y` are the labelled examples' inputs and labels, `unlabelled_x`
the unlabelled examples' inputs (same structure as `x`). A
`keras_kd.Distiller` runs teacher and student once on both inputs together:
the distillation term covers every row, the hard loss and the compiled
metrics the labelled rows only. `tf.data` and `tf.distribute` keep the
structure (each replica gets its share of both parts).
"""


def _examples(data, argument, labelled):
    """An unbatched `tf.data.Dataset` of `(x, y)` (or `x`) and its size."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if labelled and not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(
                f"Argument `{argument}` must yield `(x, y)` pairs. Received a "
                f"dataset with elements {spec}."
            )
        if not labelled and isinstance(spec, tuple):
            raise ValueError(
                f"Argument `{argument}` must yield inputs only (no labels). "
                f"Received a dataset with elements {spec}."
            )
        cardinality = int(data.cardinality())
        return data, (cardinality if cardinality >= 0 else None)
    if labelled:
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise TypeError(
                f"Argument `{argument}` must be a pair `(x, y)` of arrays or "
                "an unbatched `tf.data.Dataset` of `(x, y)`. Received: "
                f"{argument} of type {type(data).__name__}."
            )
        x, y = data
        n, m = len(tf.nest.flatten(x)[0]), len(tf.nest.flatten(y)[0])
        if n != m:
            raise ValueError(
                f"Argument `{argument}` must hold as many labels as inputs. "
                f"Received {n} inputs and {m} labels."
            )
        return tf.data.Dataset.from_tensor_slices((x, y)), n
    if isinstance(data, (str, bytes)) or not tf.nest.flatten(data):
        raise TypeError(
            f"Argument `{argument}` must be an array of inputs or an "
            f"unbatched `tf.data.Dataset` of them. Received: {argument} of "
            f"type {type(data).__name__}."
        )
    return tf.data.Dataset.from_tensor_slices(data), len(tf.nest.flatten(data)[0])


def mix(
    labelled,
    unlabelled,
    batch_size: int = 32,
    unlabelled_fraction: float = 0.5,
    seed: int | None = None,
    shuffle: bool = True,
    steps: int | None = None,
    shuffle_buffer: int = 10_000,
):
    """Batches that mix labelled and unlabelled examples at a fixed ratio.

    For distilling on a small labelled set plus a transfer set without
    labels: each batch holds exactly `round(batch_size *
    unlabelled_fraction)` unlabelled examples and the rest labelled ones, as
    a `MixedBatch(x, y, unlabelled_x)`. A `keras_kd.Distiller` trained on it
    distils on every example and takes the hard loss and the compiled
    metrics on the labelled ones only.

    Both sets repeat without end (reshuffled on each pass) and one epoch is
    `ceil(max(n_labelled / labelled_per_batch, n_unlabelled /
    unlabelled_per_batch))` batches: one pass over whichever set takes more
    batches to go through; the other one repeats within the epoch. Where a
    dataset's size is unknown, give `steps` (batches per epoch).

    Args:
        labelled: `(x, y)` arrays, or an unbatched `tf.data.Dataset` of
            `(x, y)`.
        unlabelled: an array of inputs (or a list / dict of arrays, as the
            model takes), or an unbatched `tf.data.Dataset` of inputs.
        batch_size: examples per batch, both kinds together (>= 2).
        unlabelled_fraction: the share of unlabelled examples in each batch,
            strictly between 0 and 1.
        seed: seed of the shuffles (None: not repeatable).
        shuffle: whether to shuffle each set (on each pass).
        steps: batches per epoch; None: as above.
        shuffle_buffer: the shuffle buffer of a `tf.data.Dataset` argument
            (arrays are shuffled whole).

    Returns:
        A batched `tf.data.Dataset` of `MixedBatch`es, `steps` of them.

    Example:

    >>> import numpy as np
    >>> from keras_kd import data
    >>> x, y = np.zeros((100, 8), "float32"), np.zeros(100, "int64")
    >>> transfer = np.ones((900, 8), "float32")
    >>> ds = data.mix((x, y), transfer, batch_size=40, unlabelled_fraction=0.75)
    >>> batch = next(iter(ds))
    >>> len(batch.x), len(batch.unlabelled_x), int(ds.cardinality())
    (10, 30, 30)
    """
    batch_size = check_int(batch_size, "batch_size", 2, "examples per batch")
    fraction = check_number(
        unlabelled_fraction,
        "unlabelled_fraction",
        0.0,
        1.0,
        low_open=True,
        high_open=True,
        what="the share of unlabelled examples in a batch",
    )
    n_unlabelled = int(round(batch_size * fraction))
    n_labelled = batch_size - n_unlabelled
    if not 0 < n_unlabelled < batch_size:
        raise ValueError(
            "Arguments `batch_size` and `unlabelled_fraction` must leave at "
            "least one labelled and one unlabelled example per batch. "
            f"Received: batch_size={batch_size}, "
            f"unlabelled_fraction={unlabelled_fraction} ({n_labelled} "
            f"labelled, {n_unlabelled} unlabelled)."
        )
    if steps is not None:
        steps = check_int(steps, "steps", 1, "batches per epoch")
    shuffle_buffer = check_int(shuffle_buffer, "shuffle_buffer", 1, "examples")
    sets = []
    for argument, value, is_labelled in (
        ("labelled", labelled, True),
        ("unlabelled", unlabelled, False),
    ):
        ds, size = _examples(value, argument, is_labelled)
        if size == 0:
            raise ValueError(f"Argument `{argument}` holds no examples.")
        if shuffle:
            is_array = not isinstance(value, tf.data.Dataset)
            buffer = size if is_array else min(shuffle_buffer, size or shuffle_buffer)
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        sets.append((ds, size))
    (lab, n_lab), (unl, n_unl) = sets
    if steps is None:
        if n_lab is None or n_unl is None:
            raise ValueError(
                "Argument `steps` (batches per epoch) is required when a "
                "dataset's size is unknown. Received: steps=None, with "
                f"{'labelled' if n_lab is None else 'unlabelled'} data of "
                "unknown cardinality."
            )
        steps = max(math.ceil(n_lab / n_labelled), math.ceil(n_unl / n_unlabelled))
    lab = lab.repeat().batch(n_labelled, drop_remainder=True)
    unl = unl.repeat().batch(n_unlabelled, drop_remainder=True)
    ds = tf.data.Dataset.zip((lab, unl)).map(
        lambda pair, u: MixedBatch(pair[0], pair[1], u)
    )
    return ds.take(steps).prefetch(tf.data.AUTOTUNE)


__all__ = [
    "MixedBatch",
    "TeacherBatch",
    "with_teacher_outputs",
    "mix",
    "load_digits",
    "load_image_classification",
    "load_tfds_image_classification",
    "split_validation",
    "to_dataset",
]
