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


# ---------------------------------------------------------------------------
# mix: labelled and unlabelled examples in each batch
# ---------------------------------------------------------------------------


def mix_sets(n_labelled=50, n_unlabelled=130):
    """Inputs that name themselves: labelled i is (i, label 3i), unlabelled
    j is 1000 + j."""
    x_l = np.arange(n_labelled, dtype="float32")[:, None]
    y_l = 3 * np.arange(n_labelled)
    x_u = 1000 + np.arange(n_unlabelled, dtype="float32")[:, None]
    return (x_l, y_l), x_u


@pytest.mark.parametrize("kind", ["numpy", "dataset"])
def test_mix_holds_the_ratio_in_every_batch_and_covers_the_larger_set(kind):
    labelled, x_u = mix_sets()
    if kind == "dataset":
        labelled = tf.data.Dataset.from_tensor_slices(labelled)
        x_u = tf.data.Dataset.from_tensor_slices(x_u)
    ds = data.mix(labelled, x_u, batch_size=20, unlabelled_fraction=0.7, seed=1)
    # 14 unlabelled and 6 labelled a batch; 130 / 14 -> 10 batches, 50 / 6 -> 9
    assert int(ds.cardinality()) == 10
    batches = list(ds)
    assert len(batches) == 10
    seen_l, seen_u = [], []
    for b in batches:
        assert isinstance(b, data.MixedBatch)
        assert b.x.shape == (6, 1) and b.y.shape == (6,)
        assert b.unlabelled_x.shape == (14, 1)
        np.testing.assert_array_equal(b.y.numpy(), 3 * b.x.numpy()[:, 0])
        seen_l.extend(b.x.numpy()[:, 0].tolist())
        seen_u.extend(b.unlabelled_x.numpy()[:, 0].tolist())
    # every example of both sets in the epoch; the rest are repeats
    assert set(seen_u) == set(1000 + np.arange(130.0))
    assert set(seen_l) == set(np.arange(50.0))
    assert len(seen_u) == 140 and len(seen_l) == 60
    # the first pass over the unlabelled set holds each example once
    assert sorted(seen_u[:130]) == sorted(1000 + np.arange(130.0))
    assert seen_u[:130] != sorted(seen_u[:130])  # shuffled


def test_mix_with_a_seed_repeats_and_reshuffles_each_epoch():
    labelled, x_u = mix_sets(8, 24)

    def order(ds):
        return np.concatenate([b.unlabelled_x.numpy()[:, 0] for b in ds])

    a = data.mix(labelled, x_u, batch_size=8, seed=3)
    b = data.mix(labelled, x_u, batch_size=8, seed=3)
    np.testing.assert_array_equal(order(a), order(b))
    assert not np.array_equal(order(a), order(a))  # a new order each epoch
    fixed = data.mix(labelled, x_u, batch_size=8, shuffle=False)
    np.testing.assert_array_equal(order(fixed), 1000 + np.arange(24.0))


def test_mix_rounds_the_unlabelled_share_of_a_batch():
    labelled, x_u = mix_sets()
    batch = next(iter(data.mix(labelled, x_u, batch_size=7, unlabelled_fraction=0.3)))
    assert (len(batch.x), len(batch.unlabelled_x)) == (5, 2)  # round(2.1) = 2


def test_mix_needs_steps_when_a_size_is_unknown():
    labelled, x_u = mix_sets()
    unknown = tf.data.Dataset.from_tensor_slices(x_u).filter(lambda x: x[0] > 0)
    with pytest.raises(ValueError, match="`steps`.*unlabelled data of unknown"):
        data.mix(labelled, unknown, batch_size=10)
    ds = data.mix(labelled, unknown, batch_size=10, steps=4)
    assert len(list(ds)) == 4 and int(ds.cardinality()) == 4


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"unlabelled_fraction": 0.0}, ValueError, r"`unlabelled_fraction`.*\(0.0"),
        ({"unlabelled_fraction": 1.0}, ValueError, "unlabelled_fraction=1.0"),
        ({"unlabelled_fraction": "a"}, TypeError, "`unlabelled_fraction`.*number"),
        ({"batch_size": 1}, ValueError, "`batch_size`.*at least 2"),
        (
            {"batch_size": 4, "unlabelled_fraction": 0.1},
            ValueError,
            r"at least one labelled and one unlabelled.*\(4 labelled, 0 unlabelled\)",
        ),
        ({"steps": 0}, ValueError, "`steps`.*at least 1"),
    ],
)
def test_mix_rejects_bad_sizes(kwargs, error, message):
    labelled, x_u = mix_sets()
    with pytest.raises(error, match=message):
        data.mix(labelled, x_u, **kwargs)


def test_mix_rejects_data_of_the_wrong_shape():
    (x_l, y_l), x_u = mix_sets()
    with pytest.raises(TypeError, match="`labelled` must be a pair"):
        data.mix(x_l, x_u)
    with pytest.raises(ValueError, match="as many labels as inputs.*50 inputs and 49"):
        data.mix((x_l, y_l[:-1]), x_u)
    with pytest.raises(ValueError, match="`unlabelled` must yield inputs only"):
        data.mix((x_l, y_l), tf.data.Dataset.from_tensor_slices((x_l, y_l)))
    with pytest.raises(ValueError, match=r"`labelled` must yield `\(x, y\)` pairs"):
        data.mix(tf.data.Dataset.from_tensor_slices(x_l), x_u)
