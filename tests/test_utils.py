"""The shared helpers of keras_kd/_utils.py, against independent references."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_mlp
from keras_kd import _utils, backend
from keras_kd.backend import keras

# --- argument checks: TypeError for a wrong type, ValueError for a bad value -------


@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.bool_(False)])
def test_check_bool_accepts_python_and_numpy_booleans(value):
    result = _utils.check_bool(value, "flag")
    assert type(result) is bool and result == bool(value)


@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_check_bool_rejects_everything_else_with_a_type_error(bad):
    with pytest.raises(TypeError) as info:
        _utils.check_bool(bad, "flag")
    message = str(info.value)
    assert "`flag` must be True or False" in message
    assert f"flag={bad!r}" in message and type(bad).__name__ in message


@pytest.mark.parametrize("value", [0, 3, np.int64(7), np.int32(2)])
def test_check_int_returns_a_python_int(value):
    result = _utils.check_int(value, "steps", minimum=0)
    assert type(result) is int and result == int(value)


@pytest.mark.parametrize("bad", [1.0, "3", None, True, np.bool_(True)])
def test_check_int_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"`steps` must be an integer \(a step\)"):
        _utils.check_int(bad, "steps", minimum=1, what="a step")


def test_check_int_out_of_range_is_a_value_error():
    with pytest.raises(
        ValueError, match=r"`steps` must be an integer of at least 1\. .*steps=0\."
    ):
        _utils.check_int(0, "steps", minimum=1)


def test_check_number_bounds_open_and_closed():
    assert _utils.check_number(0.0, "x", low=0.0) == 0.0
    assert type(_utils.check_number(np.float32(0.5), "x", 0.0, 1.0)) is float
    with pytest.raises(ValueError, match=r"`x` must be in \(0.0, inf\)\. .*x=0.0"):
        _utils.check_number(0.0, "x", low=0.0, low_open=True)
    with pytest.raises(ValueError, match=r"`x` must be in \[0, 1\)"):
        _utils.check_number(1, "x", low=0, high=1, high_open=True)
    with pytest.raises(ValueError, match=r"`x` must be in \(-inf, 2\]"):
        _utils.check_number(3, "x", high=2)
    with pytest.raises(ValueError, match="`x`"):
        _utils.check_number(float("nan"), "x")
    with pytest.raises(TypeError, match=r"`x` must be a number.*x='1'.*str"):
        _utils.check_number("1", "x")
    with pytest.raises(TypeError, match="`x`"):
        _utils.check_number(True, "x")


@pytest.mark.parametrize("alpha", [0, 0.25, 1, np.float64(0.5)])
def test_check_alpha_accepts_the_unit_interval(alpha):
    assert _utils.check_alpha(alpha) == float(alpha)


def test_check_alpha_errors_name_the_argument_and_the_value():
    with pytest.raises(ValueError, match=r"`w` must be between 0 and 1.*w=1\.5"):
        _utils.check_alpha(1.5, "w")
    with pytest.raises(TypeError, match=r"`alpha` must be a number.*alpha='0\.5'"):
        _utils.check_alpha("0.5")
    with pytest.raises(TypeError, match="`alpha`"):
        _utils.check_alpha(False)


def test_check_model_accepts_models_and_optionally_none():
    _utils.check_model(make_mlp(4), "model")
    _utils.check_model(None, "teacher", allow_none=True)
    flavour = "tf_keras" if backend.LEGACY else "Keras 3"
    with pytest.raises(ValueError, match=rf"`teacher` is required.*{flavour} model"):
        _utils.check_model(None, "teacher")
    with pytest.raises(TypeError, match=r"`student` must be .*student='model\.keras'"):
        _utils.check_model("model.keras", "student")
    with pytest.raises(TypeError, match="`student`.*Dense"):
        _utils.check_model(keras.layers.Dense(3), "student")


def test_is_graph_model():
    assert _utils.is_graph_model(make_mlp(4))
    inputs = keras.Input((8,))
    assert _utils.is_graph_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not _utils.is_graph_model(Subclassed())


# --- atomic writes --------------------------------------------------------------


def test_write_atomically_writes_bytes_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    _utils.write_atomically(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    _utils.write_atomically(str(path), b"again")
    assert path.read_bytes() == b"again"
    assert os.listdir(path.parent) == ["out.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_write_atomically_gives_the_mode_of_a_plain_open(tmp_path, umask):
    # mkstemp's files are 0600; the written file must have the mode `open`
    # gives a new file under the same umask (0644 under 022).
    previous = os.umask(umask)
    try:
        (tmp_path / "plain").write_bytes(b"x")
        _utils.write_atomically(tmp_path / "atomic", b"x")
        _utils.write_atomically(
            tmp_path / "by_function", lambda p: open(p, "wb").close()
        )
    finally:
        os.umask(previous)
    expected = os.stat(tmp_path / "plain").st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ("atomic", "by_function"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == expected, name


def test_write_atomically_with_a_writer_function_keeps_the_suffix(tmp_path):
    seen = []

    def writer(temporary):
        seen.append(temporary)
        with open(temporary, "w") as f:
            f.write("written by the function")

    path = tmp_path / "model.weights.h5"
    _utils.write_atomically(path, writer)
    assert path.read_text() == "written by the function"
    assert seen[0].endswith(".weights.h5") and seen[0] != str(path)
    assert os.listdir(tmp_path) == ["model.weights.h5"]


@pytest.mark.parametrize("existing", [False, True])
def test_write_atomically_leaves_no_file_on_error(tmp_path, existing):
    path = tmp_path / "out.bin"
    if existing:
        path.write_bytes(b"old")

    def failing_writer(temporary):
        with open(temporary, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        _utils.write_atomically(path, failing_writer)
    if existing:
        assert path.read_bytes() == b"old"  # the old file is untouched
    assert os.listdir(tmp_path) == (["out.bin"] if existing else [])
    with pytest.raises(TypeError):
        _utils.write_atomically(path, "text, not bytes")
    assert os.listdir(tmp_path) == (["out.bin"] if existing else [])


# --- probabilities --------------------------------------------------------------


def test_log_probs_matches_numpy_and_clips_zeros():
    p = np.array([[0.7, 0.3, 0.0], [1.0, 0.0, 0.0]], np.float16)
    got = _utils.log_probs(p).numpy()
    assert got.dtype == np.float32
    expected = np.log(np.clip(p.astype(np.float64), _utils.PROB_EPSILON, 1.0))
    np.testing.assert_allclose(got, expected, rtol=1e-3)
    assert np.isfinite(got).all()
    # softmax of log-probabilities gives the probabilities back
    q = np.array([[0.2, 0.5, 0.3]], np.float32)
    np.testing.assert_allclose(tf.nn.softmax(_utils.log_probs(q)), q, rtol=1e-6)


# --- layers ---------------------------------------------------------------------


def _nested_model():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="inner_dense")], name="inner"
    )
    inputs = keras.Input((3, 4))
    wrapped = keras.layers.TimeDistributed(
        keras.layers.Dense(4, name="wrapped_dense"), name="time_distributed"
    )
    h = wrapped(inputs)
    h = keras.layers.TimeDistributed(inner, name="td_inner")(h)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="outer")


def test_walk_layers_goes_through_nested_models_and_wrappers():
    model = _nested_model()
    names = [layer.name for layer in _utils.walk_layers(model)]
    input_layers = [n for n in names if n.startswith("input")]
    assert [n for n in names if n not in input_layers] == [
        "time_distributed",
        "wrapped_dense",
        "td_inner",
        "inner",
        "inner_dense",
        "head",
    ]
    assert len(names) == len(set(names))  # each layer once
    without = [layer.name for layer in _utils.walk_layers(model, into_wrappers=False)]
    assert "wrapped_dense" not in without and "inner" not in without
    assert "time_distributed" in without and "head" in without


def test_walk_layers_yields_a_shared_layer_once():
    shared = keras.layers.Dense(4, name="shared")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, shared(shared(inputs)))
    names = [layer.name for layer in _utils.walk_layers(model)]
    assert names.count("shared") == 1


def test_unwrap_and_applies_softmax_look_through_wrappers():
    dense = keras.layers.Dense(3, activation="softmax")
    wrapper = keras.layers.TimeDistributed(dense)
    assert _utils.unwrap_layer(wrapper) is dense
    assert _utils.unwrap_layer(dense) is dense
    assert _utils.applies_softmax(wrapper)
    assert _utils.applies_softmax(keras.layers.Softmax())
    assert _utils.applies_softmax(keras.layers.Dense(3, activation="softmax"))
    assert not _utils.applies_softmax(keras.layers.Dense(3, activation="relu"))
    assert not _utils.applies_softmax(keras.layers.Dense(3))


def test_output_is_probabilities_per_output():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(4)(inputs)
    model = keras.Model(
        inputs,
        [keras.layers.Dense(3)(h), keras.layers.Softmax()(keras.layers.Dense(3)(h))],
    )
    assert _utils.output_is_probabilities(model) == [False, True]
    assert _utils.output_is_probabilities(_nested_model()) == [True]
    assert [type(layer).__name__ for layer in _utils.output_layers(model)] == [
        "Dense",
        "Softmax",
    ]


def test_output_is_probabilities_is_none_for_a_subclassed_model():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 4), np.float32))
    assert _utils.output_is_probabilities(model) is None
