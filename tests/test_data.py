import numpy as np
import pytest

from keras_kd import data
from keras_kd.backend import tf


def test_digits_are_real_stratified_and_disjoint():
    (x_tr, y_tr), (x_te, y_te) = data.load_digits(test_fraction=0.25, seed=3)
    assert x_tr.shape[1:] == (8, 8, 1) and x_tr.dtype == np.float32
    assert len(x_tr) + len(x_te) == 1797
    assert 0.0 <= x_tr.min() and x_tr.max() == pytest.approx(1.0)
    counts = np.bincount(y_te, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # stratified, ~45 a class
    # no image is in both splits
    train_rows = {row.tobytes() for row in x_tr.reshape(len(x_tr), -1)}
    overlap = sum(row.tobytes() in train_rows for row in x_te.reshape(len(x_te), -1))
    assert overlap <= 5  # a few digits in this set are exact duplicates


def test_digits_split_is_reproducible():
    a = data.load_digits(seed=1)
    b = data.load_digits(seed=1)
    np.testing.assert_array_equal(a[0][1], b[0][1])


def test_bad_test_fraction_is_rejected():
    with pytest.raises(
        ValueError, match="`test_fraction`.*Received: test_fraction=1.5"
    ):
        data.load_digits(test_fraction=1.5)


def test_to_dataset_batches_all_samples():
    x = np.arange(10, dtype="float32")[:, None]
    ds = data.to_dataset(x, np.arange(10), batch_size=4, shuffle=True)
    seen = np.concatenate([b[0].numpy()[:, 0] for b in ds])
    assert sorted(seen.tolist()) == list(range(10))


def test_tfds_loader_reads_a_tfds_image_classification_set(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        (x_tr, y_tr), (x_te, y_te), info = data.load_tfds_image_classification(
            "mnist", data_dir=str(tmp_path), max_train=10
        )
    assert x_tr.shape == (10, 28, 28, 1) and x_tr.dtype == np.float32
    assert x_tr.max() <= 1.0 and len(x_te) == 12
    assert info.features["label"].num_classes == 10


def test_load_image_classification_gives_digits_offline():
    (x_tr, y_tr), (x_te, y_te), n_classes, source = data.load_image_classification(
        "digits", seed=2
    )
    np.testing.assert_array_equal(y_te, data.load_digits(seed=2)[1][1])
    assert n_classes == 10 and "digits" in source and len(x_tr) + len(x_te) == 1797


def test_load_image_classification_caps_digits_like_tfds():
    (x_tr, y_tr), (x_te, y_te), _, _ = data.load_image_classification(
        "digits", max_train=100, max_test=40
    )
    (full_x_tr, full_y_tr), (full_x_te, full_y_te) = data.load_digits()
    # the first images of kd.data's splits, as tfds's `take` gives
    np.testing.assert_array_equal(x_tr, full_x_tr[:100])
    np.testing.assert_array_equal(y_tr, full_y_tr[:100])
    np.testing.assert_array_equal(x_te, full_x_te[:40])
    np.testing.assert_array_equal(y_te, full_y_te[:40])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_train": 0}, ValueError, "`max_train`.*at least 1.*max_train=0"),
        ({"max_test": 2.5}, TypeError, "`max_test`.*integer.*max_test=2.5"),
    ],
)
def test_load_image_classification_rejects_bad_caps(kwargs, error, message):
    with pytest.raises(error, match=message):
        data.load_image_classification("digits", **kwargs)


def test_split_validation_holds_out_the_last_examples():
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.arange(10)
    (x_fit, y_fit), (x_val, y_val) = data.split_validation(x, y, 3)
    np.testing.assert_array_equal(y_fit, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(y_val, [7, 8, 9])
    np.testing.assert_array_equal(x_val, [[14, 15], [16, 17], [18, 19]])
    np.testing.assert_array_equal(np.concatenate([x_fit, x_val]), x)
    # a share is rounded to the nearest count: 0.25 of 10 is 2.5, which
    # Python rounds to 2; 0.26 gives 3
    assert len(data.split_validation(x, y, 0.25)[1][1]) == 2
    assert len(data.split_validation(x, y, 0.26)[1][1]) == 3
    assert len(data.split_validation(x, y, np.int64(4))[1][1]) == 4


@pytest.mark.parametrize(
    "size, error, message",
    [
        (10, ValueError, "at least one example on each side.*size=10"),
        (0, ValueError, "`size`.*at least 1.*size=0"),
        (1.0, ValueError, r"`size` must be in \(0.0, 1.0\).*size=1.0"),
        (0.01, ValueError, r"each side.*size=0.01 \(0 held out\)"),
        ("3", TypeError, "`size`.*number.*size='3'"),
        (True, TypeError, "`size`.*number.*size=True"),
    ],
)
def test_split_validation_rejects_bad_sizes(size, error, message):
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(error, match=message):
        data.split_validation(x, y, size)


def test_split_validation_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match=r"len\(x\)=10, len\(y\)=9"):
        data.split_validation(np.zeros((10, 2)), np.zeros(9), 2)


def test_to_dataset_shuffles_like_tf_data_with_the_same_buffer():
    x = np.arange(50, dtype="float32")
    reference = tf.data.Dataset.from_tensor_slices(x).shuffle(8, seed=3).batch(5)
    ours = data.to_dataset(x, batch_size=5, shuffle=True, seed=3, shuffle_buffer=8)
    expected = np.concatenate([b.numpy() for b in reference])
    got = np.concatenate([b.numpy() for b in ours])
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, x)
    # the default buffer holds every example: a uniform shuffle
    whole = data.to_dataset(x, batch_size=5, shuffle=True, seed=3)
    reference = tf.data.Dataset.from_tensor_slices(x).shuffle(50, seed=3).batch(5)
    np.testing.assert_array_equal(
        np.concatenate([b.numpy() for b in whole]),
        np.concatenate([b.numpy() for b in reference]),
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 0}, ValueError, "`batch_size`.*at least 1"),
        ({"shuffle_buffer": 2.0}, TypeError, "`shuffle_buffer`.*integer"),
    ],
)
def test_to_dataset_rejects_bad_sizes(kwargs, error, message):
    with pytest.raises(error, match=message):
        data.to_dataset(np.zeros((4, 2)), **kwargs)
