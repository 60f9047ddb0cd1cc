"""GenerationStore: the weights a resumed self-distillation run reads back."""

import gc
import json
import os
import warnings

import numpy as np
import pytest

from keras_kd.callbacks.generation_store import STATE_FILE, GenerationStore


def _weights(seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=4)]


def test_saved_weights_and_state_read_back(tmp_path):
    store = GenerationStore(tmp_path / "kd")
    state = {"starts": [0, 2], "finished": [1, 2], "results": [{"generation": 1}]}
    store.put(1, _weights(1))
    store.save(state, 1)
    store.put(2, _weights(2))
    store.save(state, 2)
    # the files are plain numpy / JSON, readable without the store
    with np.load(tmp_path / "kd" / "generation_2.npz") as archive:
        np.testing.assert_array_equal(archive["arr_0"], _weights(2)[0])
        np.testing.assert_array_equal(archive["arr_1"], _weights(2)[1])
    with open(tmp_path / "kd" / STATE_FILE) as f:
        assert json.load(f) == state
    # no temporary file is left behind
    assert sorted(os.listdir(tmp_path / "kd")) == [
        "generation_1.npz",
        "generation_2.npz",
        STATE_FILE,
    ]
    fresh = GenerationStore(tmp_path / "kd")
    assert fresh.load() == state
    for g in (1, 2):
        assert g in fresh
        for a, b in zip(fresh.get(g), _weights(g)):
            np.testing.assert_array_equal(a, b)


def test_every_file_handle_is_closed(tmp_path):
    store = GenerationStore(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.put(1, _weights(1))
        store.save({"starts": [0], "finished": [1], "results": []}, 1)
        GenerationStore(tmp_path).load()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    store = GenerationStore(tmp_path)
    store.put(1, _weights(1))
    store.save({"starts": [0], "finished": [1], "results": []}, 1)

    def crash(*args, **kwargs):  # the process dies before the rename
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    store.put(1, _weights(7))
    with pytest.raises(OSError, match="disk full"):
        store.save({"starts": [5], "finished": [1], "results": []}, 1)
    monkeypatch.undo()
    # the complete earlier files, and nothing half-written beside them
    assert sorted(os.listdir(tmp_path)) == ["generation_1.npz", STATE_FILE]
    state = GenerationStore(tmp_path).load()
    assert state["starts"] == [0]
    with np.load(tmp_path / "generation_1.npz") as archive:
        np.testing.assert_array_equal(archive["arr_0"], _weights(1)[0])


def test_without_a_directory_nothing_is_written(tmp_path):
    store = GenerationStore()
    store.put(1, _weights(1))
    store.save({"starts": [0], "finished": [1], "results": []}, 1)
    assert store.load() is None
    assert GenerationStore(tmp_path / "empty").load() is None
    with pytest.raises(KeyError, match="generation 2"):
        store.get(2)
