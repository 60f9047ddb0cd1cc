"""Guard tests: one per Keras internal that keras_kd/backend.py reads or sets.

Each test is named for the internal. When a Keras release moves one, its test
fails with a message naming the internal and the function of backend.py to
update; the behaviour tests next to it check that the function still does its
job through the public API (what `fit` does, what a layer computes).
"""

import inspect

import numpy as np
import pytest

from conftest import hard_loss, keras3_only, legacy_only, make_mlp
from keras_kd import backend
from keras_kd.backend import keras, tf

VERSION = f"{backend.FLAVOUR} {keras.__version__}"


def moved(internal, update):
    """The failure message of a guard test."""
    return (
        f"Keras ({VERSION}) moved `{internal}`, a Keras internal keras-kd relies "
        f"on: update keras_kd/backend.py::{update} (and its guard test here)."
    )


def functional_mlp():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="logits")(hidden)
    return keras.Model(inputs, outputs)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


# --- Model._compile_loss (Keras 3) / Model.compiled_loss (tf_keras) ---------


def test_model_compile_loss_is_the_loss_keras_evaluates(data):
    x, y = data
    model = make_mlp(4)
    model.compile(loss=hard_loss())
    internal = "Model.compiled_loss" if backend.LEGACY else "Model._compile_loss"
    assert hasattr(model, internal.split(".")[1]), moved(internal, "compiled_loss")
    y_pred = model(x)
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    got = backend.compiled_loss(model)(tf.constant(y), y_pred, tf.constant(weights))
    expected = model.evaluate(x, y, sample_weight=weights, batch_size=64, verbose=0)
    assert float(got) == pytest.approx(expected, rel=1e-5), moved(
        internal, "compiled_loss"
    )


# --- Loss._allow_sum_over_batch_size (tf_keras) ---------------------------


@legacy_only
def test_loss_allow_sum_over_batch_size_is_what_tf_keras_reads():
    loss = hard_loss()
    message = moved(
        "Loss._allow_sum_over_batch_size", "allow_batch_mean_under_strategy"
    )
    assert loss._allow_sum_over_batch_size is False, message
    y, logits = tf.constant([0, 2]), tf.constant([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        with pytest.raises(ValueError, match="reduction"):
            loss(y, logits)  # refused in a strategy, as long as not allowed
        backend.allow_batch_mean_under_strategy(loss)
        bound = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        backend.copy_batch_mean_permission(loss, bound)
        got = [float(loss(y, logits)), float(bound(y, logits))]
    expected = float(
        tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    )
    assert got == pytest.approx([expected, expected], rel=1e-6), message


@keras3_only
def test_keras3_losses_need_no_batch_mean_permission():
    loss, bound = hard_loss(), hard_loss()
    backend.allow_batch_mean_under_strategy(loss)
    backend.copy_batch_mean_permission(loss, bound)
    assert not hasattr(loss, "_allow_sum_over_batch_size")
    assert not hasattr(bound, "_allow_sum_over_batch_size")


# --- Model._maybe_symbolic_build / Model._symbolic_build (Keras 3) ----------


@keras3_only
def test_model_symbolic_build_methods():
    for method, argument in (
        ("_maybe_symbolic_build", "iterator"),
        ("_maybe_symbolic_build", "data_batch"),
        ("_symbolic_build", "iterator"),
        ("_symbolic_build", "data_batch"),
    ):
        found = getattr(keras.Model, method, None)
        assert found is not None and argument in inspect.signature(found).parameters, (
            moved(f"Model.{method}({argument}=...)", "ModelBuildHooks")
        )


@legacy_only
def test_tf_keras_has_no_symbolic_build_so_the_hooks_stay_idle():
    for method in ("_maybe_symbolic_build", "_symbolic_build"):
        assert not hasattr(keras.Model, method), (
            f"tf_keras ({VERSION}) now has `Model.{method}`: check that "
            "keras_kd/backend.py::ModelBuildHooks is right for it."
        )


class DictBatches(backend.ModelBuildHooks, keras.Model):
    """A model trained on `{"x": ..., "y": ...}` batches, which Keras 3's
    symbolic build cannot read without the hook."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)
        self.seen = []

    def call(self, x):
        return self.dense(x)

    def symbolic_build_batch(self, batch):
        self.seen.append(sorted(batch))
        return batch["x"], batch["y"]

    def train_step(self, data):
        return super().train_step((data["x"], data["y"]))

    def test_step(self, data):
        return super().test_step((data["x"], data["y"]))


def dict_dataset(x, y):
    return tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).batch(16)


@keras3_only
def test_symbolic_build_batch_hook_reads_the_first_batch_under_a_strategy(data):
    x, y = data
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = DictBatches()
        model.compile(optimizer="sgd", loss=hard_loss(), metrics=["accuracy"])
    history = model.fit(dict_dataset(x, y), epochs=1, shuffle=False, verbose=0)
    assert model.seen == [["x", "y"]]  # once, with the data's own batch
    assert set(history.history) == {"loss", "accuracy"}
    assert model.built and model.dense.kernel.shape == (8, 3)


@keras3_only
@pytest.mark.filterwarnings("ignore:.*(unbuilt state|does not have a `build).*")
def test_without_the_hook_keras_cannot_build_from_that_batch(data):
    # What the hook is for: Keras reads the dict as `x` alone, and fails.
    class NoHook(DictBatches):
        def symbolic_build_batch(self, batch):
            return batch

    x, y = data
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = NoHook()
        model.compile(optimizer="sgd", loss=hard_loss())
    with pytest.raises(ValueError, match="expects 1 input"):
        model.fit(dict_dataset(x, y), epochs=1, shuffle=False, verbose=0)


def test_symbolic_build_batch_returns_the_batch_by_default():
    batch = (tf.zeros((2, 8)), tf.zeros((2,)))
    assert backend.ModelBuildHooks().symbolic_build_batch(batch) is batch


# --- KerasTensor / tf.Tensor ._keras_mask ----------------------------------


def test_keras_mask_of_an_embedding_output():
    tokens = tf.constant([[3, 5, 0, 0], [7, 0, 0, 0]])
    out = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    assert hasattr(out, "_keras_mask"), moved("Tensor._keras_mask", "keras_mask")
    mask = backend.keras_mask(out)
    assert mask is not None, moved("Tensor._keras_mask", "keras_mask")
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(tokens) != 0)
    assert backend.keras_mask(tf.ones((2, 3))) is None


# --- KerasTensor._keras_history ---------------------------------------------


def test_keras_history_names_the_output_layer():
    model = functional_mlp()
    output = model.outputs[0]
    assert hasattr(output, "_keras_history"), moved(
        "KerasTensor._keras_history", "keras_history_layer"
    )
    assert backend.keras_history_layer(output) is model.get_layer("logits"), moved(
        "KerasTensor._keras_history", "keras_history_layer"
    )
    assert backend.keras_history_layer(tf.ones((1, 8))) is None


# --- Model._is_graph_network (tf_keras) / class Functional (Keras 3) --------


def test_is_graph_network_tells_functional_from_subclassed():
    internal = (
        "Model._is_graph_network" if backend.LEGACY else "the class name Functional"
    )
    functional = functional_mlp()
    if backend.LEGACY:
        assert functional._is_graph_network is True, moved(internal, "is_graph_network")
    else:
        assert type(functional).__name__ == "Functional", moved(
            internal, "is_graph_network"
        )
    assert backend.is_graph_network(functional), moved(internal, "is_graph_network")
    assert backend.is_graph_network(make_mlp(4))  # Sequential
    model = Subclassed()
    model(tf.ones((1, 8)))
    assert not backend.is_graph_network(model), moved(internal, "is_graph_network")


# --- Optimizer._built (tf_keras) / Optimizer.built (Keras 3) ----------------


def test_optimizer_built_is_set_once_built():
    model = make_mlp(4)
    optimizer = keras.optimizers.Adam()
    internal = "Optimizer._built" if backend.LEGACY else "Optimizer.built"
    backend.build_optimizer(optimizer, model.trainable_variables)
    flag = optimizer._built if backend.LEGACY else optimizer.built
    assert flag is True, moved(internal, "build_optimizer")
    first = [id(v) for v in optimizer.variables]
    assert len(first) > 2 * len(model.trainable_variables)  # Adam's moments
    backend.build_optimizer(optimizer, model.trainable_variables)
    assert [id(v) for v in optimizer.variables] == first  # not built twice


# --- Model._initial_epoch (Keras 3) / Model._training_state (tf_keras) ------


class StartAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.epochs = epoch, []

    def on_train_begin(self, logs=None):
        backend.set_initial_epoch(self.model, self.epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_end(self, logs=None):
        backend.set_initial_epoch(self.model, None)


def test_model_initial_epoch_and_training_state_start_fit_there(data):
    x, y = data
    internal = "Model._training_state" if backend.LEGACY else "Model._initial_epoch"
    model = make_mlp(4)
    model.compile(optimizer="sgd", loss=hard_loss())
    assert hasattr(model, internal.split(".")[1]), moved(internal, "set_initial_epoch")
    start = StartAt(2)
    model.fit(x, y, epochs=4, verbose=0, callbacks=[start])
    assert start.epochs == [2, 3], moved(internal, "set_initial_epoch")
    start.epoch, start.epochs = None, []
    model.fit(x, y, epochs=2, verbose=0, callbacks=[start])
    assert start.epochs == [0, 1]  # None: as the user asked


# --- Model.train_function(iterator), swapped between batches ----------------


class SkipFirst(keras.callbacks.Callback):
    def __init__(self, batches):
        super().__init__()
        self.batches, self.kept = batches, None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.kept = backend.replace_train_function(
                self.model, backend.batch_skipping_train_function(self.model)
            )
        elif batch == self.batches:
            backend.replace_train_function(self.model, self.kept)


def test_model_train_function_can_be_swapped_between_batches(data):
    # Skipping the first 2 of 4 batches leaves the weights of a run on the
    # last 2 alone: the skipped batches were drawn, not trained on.
    x, y = data
    skipped, reference = make_mlp(4), make_mlp(4)
    reference.set_weights(skipped.get_weights())
    for model in (skipped, reference):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss())
    message = moved("Model.train_function(iterator)", "replace_train_function")
    skipped.fit(x, y, batch_size=16, shuffle=False, verbose=0, callbacks=[SkipFirst(2)])
    reference.fit(x[32:], y[32:], batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(skipped.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=message)


# --- Model.steps_per_execution (a variable in tf_keras, an int in Keras 3) ---


def test_model_steps_per_execution_reads_compile():
    model = make_mlp(4)
    assert backend.steps_per_execution(model) == 1
    model.compile(optimizer="sgd", loss=hard_loss(), steps_per_execution=3)
    assert backend.steps_per_execution(model) == 3, moved(
        "Model.steps_per_execution", "steps_per_execution"
    )
