"""Bad inputs are answered before training, naming the argument.

One table: each case is a call that must raise the given error type with a
message naming the argument, the value received and what is expected, before
any training step runs (`Distiller.fit`'s checks, `keras_kd.distiller.
fit_checks`, run once per `fit` on the arrays or on the first batch of a
dataset). Two of the issue's cases are checked where they already were and
appear in the table too: teacher and student class counts that differ
(`Distiller(...)`, also `tests/test_distiller.py`) and an export path in a
missing directory (`kd.export.to_tflite`, also `tests/test_export.py`).

Apart from the table: a Distiller that still trains after refused calls,
the pixel-range warning, generators left unread, and a diverging run stopped
by `TerminateOnNaN` whose last good checkpoints (`ModelCheckpoint(
save_best_only=True)` and `kd.callbacks.BackupAndRestore`) are intact and
load finite weights.
"""

import warnings

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp
from keras_kd.backend import keras, tf
from keras_kd.distiller import fit_checks

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 8)).astype("float32")
Y = RNG.integers(0, 3, size=32)


def distiller(teacher=None, student=None, **kwargs):
    d = kd.Distiller(
        teacher=teacher if teacher is not None else make_mlp(8, name="teacher"),
        student=student if student is not None else make_mlp(4, name="student"),
        **kwargs,
    )
    d.compile(optimizer="adam", loss=hard_loss())
    return d


def fit(*args, d=None, **kwargs):
    kwargs.setdefault("verbose", 0)
    return (d or distiller()).fit(*args, **kwargs)


def dataset(x, y, batch=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def nan_teacher():
    teacher = make_mlp(8, name="diverged_teacher")
    weights = teacher.get_weights()
    weights[0][0, 0] = np.nan
    teacher.set_weights(weights)
    return teacher


def with_nan(x):
    x = x.copy()
    x[3, 2] = np.nan
    return x


def export_to_missing_directory(tmp_path):
    kd.export.to_tflite(make_mlp(4), tmp_path / "missing" / "student.tflite")


# (id, call(tmp_path), error, the words that matter: argument, received, expected)
CASES = [
    # labels
    (
        "labels_above_range",
        lambda p: fit(X, Y + 3),
        ValueError,
        r"`y` holds labels out of range for the student's 3 classes: received "
        r"labels from 3 to 5\. Expected class indices in \[0, 2\]",
    ),
    (
        "labels_negative",
        lambda p: fit(X, Y - 1),
        ValueError,
        r"`y` holds labels out of range.*from -1 to 1.*\[0, 2\]",
    ),
    (
        "labels_out_of_range_in_dataset",
        lambda p: fit(dataset(X, Y + 1)),
        ValueError,
        r"`x` holds labels out of range.*3 classes.*to 3.*\[0, 2\]",
    ),
    (
        "labels_fractional",
        lambda p: fit(X, Y + 0.5),
        ValueError,
        r"`y` must hold class indices \(whole numbers\).*3 classes.*e\.g\. \d\.5",
    ),
    (
        "labels_not_finite",
        lambda p: fit(X, np.where(Y == 0, np.nan, Y)),
        ValueError,
        r"`y` holds non-finite labels.*Expected finite",
    ),
    (
        "one_hot_columns",
        lambda p: fit(X, np.eye(5)[Y % 5]),
        ValueError,
        r"`y` has 5 columns \(shape \(32, 5\)\).*3 classes.*one column per class",
    ),
    (
        "teacher_student_classes",
        lambda p: kd.Distiller(make_mlp(8, n_out=3), make_mlp(4, n_out=5)),
        ValueError,
        r"teacher output shape \(None, 3\), student output shape "
        r"\(None, 5\).*same shape",
    ),
    # the teacher and the inputs
    (
        "teacher_not_finite",
        lambda p: fit(X, Y, d=distiller(nan_teacher())),
        ValueError,
        r"`teacher` \('diverged_teacher'\) gives non-finite outputs.*first batch of "
        r"`x`.*Expected finite",
    ),
    (
        "inputs_not_finite",
        lambda p: fit(with_nan(X), Y),
        ValueError,
        r"`x` holds 1 non-finite value\(s\).*out of 256.*Expected finite",
    ),
    (
        "input_shape_student",
        lambda p: fit(X[:, :7], Y),
        ValueError,
        r"`x` has samples of shape \(7,\), but the student \('student'\) expects "
        r"inputs of shape \(8,\)",
    ),
    (
        "input_shape_teacher",
        lambda p: fit(X, Y, d=distiller(make_mlp(8, n_in=10))),
        ValueError,
        r"`x` has samples of shape \(8,\), but the teacher .* expects "
        r"inputs of shape \(10,\)",
    ),
    # empty data and lengths
    (
        "empty_arrays",
        lambda p: fit(X[:0], Y[:0]),
        ValueError,
        r"`x` holds no samples \(0 rows\)\. Expected at least one",
    ),
    (
        "empty_dataset",
        lambda p: fit(dataset(X, Y).take(0)),
        ValueError,
        r"`x` is an empty dataset: it yields no batch\. Expected at least one",
    ),
    (
        "empty_filtered_dataset",
        lambda p: fit(dataset(X, Y).filter(lambda x, y: False)),
        ValueError,
        r"`x` is an empty dataset",
    ),
    (
        "x_y_lengths",
        lambda p: fit(X, Y[:30]),
        ValueError,
        r"`x`, `y` must have the same number of samples.*x has 32, y has 30",
    ),
    (
        "sample_weight_length",
        lambda p: fit(X, Y, sample_weight=np.ones(5)),
        ValueError,
        r"`sample_weight` must have the same number.*sample_weight has 5",
    ),
    # fit's own arguments
    (
        "batch_size_zero",
        lambda p: fit(X, Y, batch_size=0),
        ValueError,
        r"`batch_size` must be an integer.*at least 1\. Received: batch_size=0",
    ),
    (
        "batch_size_float",
        lambda p: fit(X, Y, batch_size=2.5),
        TypeError,
        r"`batch_size` must be an integer.*Received: batch_size=2\.5",
    ),
    (
        "epochs_string",
        lambda p: fit(X, Y, epochs="3"),
        TypeError,
        r"`epochs` must be an integer.*Received: epochs='3'",
    ),
    (
        "initial_epoch_negative",
        lambda p: fit(X, Y, initial_epoch=-1),
        ValueError,
        r"`initial_epoch`.*at least 0\. Received: initial_epoch=-1",
    ),
    (
        "steps_per_epoch_zero",
        lambda p: fit(X, Y, steps_per_epoch=0),
        ValueError,
        r"`steps_per_epoch`.*at least 1\. Received: steps_per_epoch=0",
    ),
    (
        "validation_split",
        lambda p: fit(X, Y, validation_split=1.5),
        ValueError,
        r"`validation_split` must be in \[0\.0, 1\.0\).*Received: "
        r"validation_split=1\.5",
    ),
    # validation data
    (
        "validation_tuple_of_four",
        lambda p: fit(X, Y, validation_data=(X, Y, Y, Y)),
        ValueError,
        r"`validation_data` must be a tuple \(x_val, y_val\).*4 items",
    ),
    (
        "validation_labels",
        lambda p: fit(X, Y, validation_data=(X, Y + 3)),
        ValueError,
        r"`validation_data\[1\]` holds labels out of range.*\[0, 2\]",
    ),
    (
        "validation_shape",
        lambda p: fit(X, Y, validation_data=(X[:, :5], Y)),
        ValueError,
        r"`validation_data\[0\]` has samples of shape \(5,\).*\(8,\)",
    ),
    (
        "validation_lengths",
        lambda p: fit(X, Y, validation_data=(X, Y[:4])),
        ValueError,
        r"`validation_data\[0\]`, `validation_data\[1\]` must have the same.*has 4",
    ),
    (
        "validation_empty_dataset",
        lambda p: fit(X, Y, validation_data=dataset(X, Y).take(0)),
        ValueError,
        r"`validation_data` is an empty dataset",
    ),
    # export
    (
        "export_path_missing_directory",
        export_to_missing_directory,
        ValueError,
        r"`path` must be in an existing directory\. Received: path=.*missing",
    ),
]


@pytest.mark.parametrize(
    "call, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_before_training(
    call, error, message, tmp_path, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("a training step ran before the check")

    monkeypatch.setattr(kd.Distiller, "train_step", no_training)
    with pytest.raises(error, match=message):
        call(tmp_path)


@pytest.mark.parametrize("as_dataset", [False, True], ids=["arrays", "dataset"])
def test_a_refused_fit_leaves_the_distiller_ready_to_train(as_dataset):
    """After refused calls the same Distiller trains on good data, and its
    next bad call is refused again: no check is left marked as done, and
    nothing built for the bad data gets in the way."""

    def data(x, y):
        return [dataset(x, y)] if as_dataset else [x, y]

    d = distiller()
    keras.utils.set_random_seed(0)
    for x, y in [(X, Y + 3), (X[:, :7], Y), (with_nan(X), Y)]:
        with pytest.raises(ValueError, match=r"Argument `[xy]`"):
            fit(*data(x, y), d=d)
    before = [np.array(w) for w in d.student.get_weights()]
    history = fit(*data(X, Y), d=d, epochs=2)
    assert np.all(np.isfinite(history.history["loss"]))
    after = d.student.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="out of range"):
        fit(*data(X, Y + 3), d=d)


# ---------------------------------------------------------------------------
# Pixel range: a warning
# ---------------------------------------------------------------------------


def image_model(name, rescale=False):
    layers = [keras.Input((6, 6, 1))]
    if rescale:
        layers.append(keras.layers.Rescaling(1 / 255))
    layers += [keras.layers.Flatten(), keras.layers.Dense(3)]
    return keras.Sequential(layers, name=name)


IMAGES = RNG.integers(0, 256, size=(16, 6, 6, 1)).astype("uint8")
LABELS = RNG.integers(0, 3, size=16)


def _fit_images(x, rescale=False):
    d = distiller(image_model("teacher"), image_model("student", rescale))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d.fit(x, LABELS, epochs=1, batch_size=8, verbose=0)
    return [w for w in caught if "8-bit images" in str(w.message)]


@pytest.mark.parametrize(
    "x, warns",
    [
        (IMAGES, True),  # uint8 pixels
        (IMAGES.astype("float32"), True),  # cast without dividing
        (IMAGES.astype("float32") / 255.0, False),  # in [0, 1]
        (IMAGES.astype("float32") / 2.0 + 0.25, False),  # not whole numbers
        (IMAGES.astype("float32") - 128.0, False),  # centred: negative values
    ],
    ids=["uint8", "float_whole", "unit_range", "fractional", "centred"],
)
def test_8_bit_images_warn_with_the_range_seen_and_the_fix(x, warns):
    caught = _fit_images(x)
    assert len(caught) == int(warns)
    if warns:
        message = str(caught[0].message)
        assert caught[0].category is UserWarning
        assert f"[{x.min()}, {x.max()}]" in message
        assert "`x`" in message and "divide by 255" in message


def test_a_model_that_rescales_its_inputs_gives_no_warning():
    assert _fit_images(IMAGES, rescale=True) == []


def test_8_bit_images_in_a_dataset_warn_from_its_first_batch():
    d = distiller(image_model("teacher"), image_model("student"))
    with pytest.warns(UserWarning, match=r"`x` looks like 8-bit images.*\[0, 255\]"):
        d.fit(dataset(IMAGES, LABELS), epochs=1, verbose=0)


# ---------------------------------------------------------------------------
# What the checks read
# ---------------------------------------------------------------------------


class _CountingIterator:
    """A one-shot iterator of batches that counts what is drawn from it."""

    def __init__(self):
        self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        return X[:8], Y[:8] + 7  # labels out of range: not looked at


def test_a_one_shot_iterator_is_not_read_by_the_checks():
    iterator = _CountingIterator()
    fit_checks.check_fit(distiller(), {"x": iterator})
    assert iterator.drawn == 0


def test_the_checks_run_once_per_fit(monkeypatch):
    calls = []
    real = fit_checks.check_fit
    monkeypatch.setattr(fit_checks, "check_fit", lambda *a: calls.append(1) or real(*a))
    fit(X, Y, epochs=3, batch_size=4)
    assert calls == [1]


# ---------------------------------------------------------------------------
# A diverging run
# ---------------------------------------------------------------------------


class _Snapshot(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.weights = [np.array(w) for w in self.model.student.get_weights()]


def test_a_diverging_run_stops_with_its_last_good_checkpoints_intact(tmp_path):
    keras.utils.set_random_seed(3)
    d = distiller()
    d.compile(optimizer=keras.optimizers.SGD(0.01), loss=hard_loss())
    best = str(tmp_path / "best.weights.h5")
    snapshot = _Snapshot()
    callbacks = [
        # epoch 0 learns; from epoch 1 a huge learning rate makes it diverge
        keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: 0.01 if epoch == 0 else 1e12
        ),
        snapshot,
        keras.callbacks.ModelCheckpoint(
            best, monitor="loss", save_best_only=True, save_weights_only=True
        ),
        kd.callbacks.BackupAndRestore(tmp_path / "backup"),
        keras.callbacks.TerminateOnNaN(),
    ]
    with pytest.warns(UserWarning, match="keeps the last finite state"):
        history = d.fit(X, Y, epochs=5, batch_size=4, verbose=0, callbacks=callbacks)
    losses = history.history["loss"]
    assert np.isfinite(losses[0]) and not np.isfinite(losses[-1])
    assert len(losses) == 2  # TerminateOnNaN stopped the run in epoch 1

    for name, load in (
        ("ModelCheckpoint", lambda fresh: fresh.load_weights(best)),
        (
            "BackupAndRestore",
            lambda fresh: fresh.fit(
                X,
                Y,
                epochs=1,
                verbose=0,
                callbacks=[kd.callbacks.BackupAndRestore(tmp_path / "backup")],
            ),
        ),
    ):
        fresh = distiller()
        fresh.compile(optimizer=keras.optimizers.SGD(0.0), loss=hard_loss())
        load(fresh)
        weights = fresh.student.get_weights()
        assert all(np.isfinite(w).all() for w in weights), name
        for got, expected in zip(weights, snapshot.weights):
            np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)
