import numpy as np
import pytest

from keras_kd import data


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
    with pytest.raises(ValueError, match="`test_fraction`.*Received: test_fraction=1.5"):
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
    (x_tr, y_tr), (x_te, y_te), n_classes, source = data.load_image_classification("digits", seed=2)
    np.testing.assert_array_equal(y_te, data.load_digits(seed=2)[1][1])
    assert n_classes == 10 and "digits" in source and len(x_tr) + len(x_te) == 1797
