"""Tests for keras_kd/_batches.py: any data `fit` takes, as numpy batches."""

import numpy as np
import pytest

from keras_kd import _batches
from keras_kd.backend import keras, tf

SPECS = [tf.TensorSpec((None, 3), tf.float32, name="input_0")]


def _xy(n=10):
    x = np.arange(3 * n, dtype="float64").reshape(n, 3)
    return x, np.arange(n) % 2


def _generator(x, y, size):
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


def _kinds(x, y):
    base = getattr(keras.utils, "PyDataset", None) or keras.utils.Sequence

    class Batches(base):
        def __init__(self):
            super().__init__()

        def __len__(self):
            return 3

        def __getitem__(self, index):
            return x[4 * index : 4 * index + 4], y[4 * index : 4 * index + 4]

    return {
        "tuple": (x, y),
        "batched": tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
        "unbatched": tf.data.Dataset.from_tensor_slices((x, y)),
        "generator": _generator(x, y, 4),
        "pydataset": Batches(),
    }


@pytest.mark.parametrize(
    "kind", ["tuple", "batched", "unbatched", "generator", "pydataset"]
)
@pytest.mark.parametrize("limit", [None, 7])
def test_every_kind_yields_the_same_samples_and_labels(kind, limit):
    x, y = _xy(10)
    data = _kinds(x, y)[kind]
    batches = list(_batches.iterate_batches(data, SPECS, "data", limit, True))
    inputs = np.concatenate([b[0][0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    n = 10 if limit is None else limit
    np.testing.assert_array_equal(inputs, x[:n].astype("float32"))
    np.testing.assert_array_equal(labels, y[:n])
    assert inputs.dtype == np.float32  # cast to the spec's dtype


def test_a_generator_is_drawn_once_and_kept_for_a_second_reading():
    x, y = _xy(12)
    drawn = []

    def batches():
        for start in range(0, 12, 4):
            drawn.append(start)
            yield x[start : start + 4], y[start : start + 4]

    kept = _batches.replayable(batches(), limit=6)
    assert drawn == [0, 4]  # enough batches for 6 samples, no more
    for _ in range(2):
        got = _batches.collect_inputs(kept, SPECS, None, "data")[0]
        np.testing.assert_array_equal(got, x[:8].astype("float32"))
    assert _batches.replayable(x, 6) is x  # arrays are read again as they are


def test_input_specs_read_from_data_when_the_model_has_none():
    class NoInputs:
        name = "subclassed"
        input = None
        inputs = None

    x = np.zeros((5, 4, 2), "float64")
    for data in (x, (x, np.zeros(5)), tf.data.Dataset.from_tensor_slices(x)):
        specs, _ = _batches.input_specs(NoInputs(), None, [None, data])
        assert specs[0].shape.as_list() == [None, 4, 2]
        assert specs[0].dtype == tf.float32  # float64 is read as float32
    with pytest.raises(ValueError, match="input_signature"):
        _batches.input_specs(NoInputs(), None, [None, None])


def test_inputs_of_the_wrong_shape_or_count_are_explained():
    with pytest.raises(ValueError, match=r"samples of shape \(5,\).*\(3,\)"):
        _batches.flat_inputs(np.zeros((2, 5)), SPECS, "verify_data")
    with pytest.raises(ValueError, match=r"yields 2 input array\(s\)"):
        _batches.flat_inputs([np.zeros((2, 3))] * 2, SPECS, "verify_data")
    with pytest.raises(ValueError, match="as_supervised=True"):
        _batches.flat_inputs({"image": 0, "label": 1}, SPECS, "data")
    single = _batches.flat_inputs(np.ones(3), SPECS, "x")[0]
    assert single.shape == (1, 3)  # one sample gets a batch dimension


@pytest.mark.parametrize("data", ["x.npy", b"x", 3, object()])
def test_data_of_no_known_kind_is_a_type_error(data):
    with pytest.raises(TypeError, match=r"`x` must be samples like those `fit`"):
        _batches.check_data_kind(data, "x")
