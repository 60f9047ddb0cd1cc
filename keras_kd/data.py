"""Data for distillation: the bundled demo set and tfds image classification.

The demo data set is scikit-learn's handwritten digits (1,797 real 8x8
images, UCI ML hand-written digits), which ships inside scikit-learn, so the
demo runs offline. Any tfds image-classification data set can be loaded as
numpy arrays too (`load_tfds_image_classification`); tfds downloads it on a
user's machine, or reads it from `data_dir`.
"""

from __future__ import annotations

import numpy as np

from keras_kd.backend import tf


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

    Args:
        name: `"digits"` (scikit-learn's, offline) or a tfds name such as
            `"mnist"`.
        data_dir: tfds data dir (ignored for digits).
        max_train: keep at most this many training images (tfds only).
        max_test: keep at most this many test images (tfds only).
        seed: seed of the digits' train / test split.

    Returns:
        `((x_train, y_train), (x_test, y_test), num_classes, description)`.
    """
    if name == "digits":
        train, test = load_digits(seed=seed)
        return train, test, 10, "scikit-learn digits (8x8)"
    train, test, info = load_tfds_image_classification(
        name, data_dir=data_dir, max_train=max_train, max_test=max_test
    )
    return train, test, info.features["label"].num_classes, f"tfds {name}"


def to_dataset(x, y=None, batch_size: int = 32, shuffle: bool = False, seed: int = 0):
    """A batched, prefetched `tf.data.Dataset` from numpy arrays."""
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


__all__ = [
    "load_digits",
    "load_image_classification",
    "load_tfds_image_classification",
    "to_dataset",
]
