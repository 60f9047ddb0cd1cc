"""Consistent teaching and unlabelled data in the Distiller.

A recording layer, first in the teacher and in the student, stores the batch
each model sees (in a variable, so it works inside `tf.function`): the
checks compare what the two models received with the raw batch and with
numpy references of the augmentation, the mixture and the losses.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, np_dkd, np_kl, np_log_softmax
from keras_kd import augment
from keras_kd.backend import keras

BATCH = 16


@keras.saving.register_keras_serializable(package="kd_tests")
class Recorder(keras.layers.Layer):
    """Stores the last full batch it is called on (a `BATCH`-row input)."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.shape = tuple(shape)
        self.seen = self.add_weight(
            name="seen",
            shape=(BATCH,) + self.shape,
            initializer="zeros",
            trainable=False,
        )

    def call(self, inputs):
        if inputs.shape[0] == BATCH:
            self.seen.assign(inputs)
        return inputs

    def get_config(self):
        return {**super().get_config(), "shape": self.shape}


def recording_model(hidden, shape=(8,), name=None):
    layers = [keras.Input(shape), Recorder(shape, name="recorder")]
    if len(shape) > 1:
        layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(3)]
    return keras.Sequential(layers, name=name)


def seen(model):
    return model.get_layer("recorder").seen.numpy()


def batch(shape=(8,), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH,) + shape).astype("float32")
    return x, rng.integers(0, 3, BATCH)


def np_ce(logits, labels):
    return -np_log_softmax(logits)[np.arange(len(labels)), labels].mean()


def distiller(augmentation=None, mixup=None, shape=(8,), teacher=True, **compile):
    t = recording_model(16, shape, "teacher") if teacher else None
    s = recording_model(4, shape, "student")
    d = kd.Distiller(t, s, augmentation=augmentation, mixup=mixup)
    compile.setdefault("loss", hard_loss())
    # learning rate 0 by default: the models stay as they are, so the
    # references computed after the step hold for the step
    compile.setdefault("optimizer", keras.optimizers.SGD(0.0))
    compile.setdefault("distillation_loss", kd.losses.KLDivergence(temperature=2.0))
    d.compile(metrics=["accuracy"], **compile)
    return d


def recover_mixture(mixed, x):
    """lam and perm such that mixed = lam * x + (1 - lam) * x[perm], by least
    squares over every candidate partner row."""
    lams, perm = [], []
    for i, m in enumerate(mixed):
        if np.allclose(m, x[i], atol=1e-6):
            perm.append(i)
            continue
        best = None
        for j in range(len(x)):
            d = x[i] - x[j]
            if j == i or not d.any():
                continue
            lam = np.dot(m - x[j], d) / np.dot(d, d)
            error = np.abs(m - (lam * x[i] + (1 - lam) * x[j])).max()
            if best is None or error < best[0]:
                best = (error, j, lam)
        assert best[0] < 1e-5, "row is no mixture of two rows"
        perm.append(best[1])
        lams.append(best[2])
    assert np.ptp(lams) < 1e-5, "one lam per batch"
    return float(np.mean(lams)), np.array(perm)


# ---------------------------------------------------------------------------
# Augmentation: one view for both models, none in evaluation
# ---------------------------------------------------------------------------


AUGMENTATIONS = {
    "keras_layer": (lambda: keras.layers.GaussianNoise(1.0), (8,)),
    "jitter": (lambda: augment.Jitter(1, seed=3), (5, 5, 1)),
    "function": (lambda: lambda x: 2.0 * x + 1.0, (8,)),
}


@pytest.mark.parametrize("kind", sorted(AUGMENTATIONS))
def test_teacher_and_student_receive_the_same_augmented_batch(kind):
    make, shape = AUGMENTATIONS[kind]
    x, y = batch(shape)
    d = distiller(augmentation=make(), shape=shape)
    d.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    teacher_view, student_view = seen(d.teacher), seen(d.student)
    np.testing.assert_array_equal(teacher_view, student_view)
    assert not np.allclose(student_view, x)  # augmented
    if kind == "function":
        np.testing.assert_allclose(student_view, 2.0 * x + 1.0, rtol=1e-6)
    if kind == "jitter":  # each image a shift by at most one pixel
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        for image, view in zip(padded, student_view):
            assert any(
                np.array_equal(image[1 - dy : 6 - dy, 1 - dx : 6 - dx], view)
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            )


def test_evaluate_and_predict_see_the_raw_batch():
    x, y = batch()
    d = distiller(augmentation=keras.layers.GaussianNoise(1.0), mixup=0.5)
    d.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(seen(d.student), x)
    d.evaluate(x, y, batch_size=BATCH, verbose=0)
    np.testing.assert_array_equal(seen(d.teacher), x)
    np.testing.assert_array_equal(seen(d.student), x)
    d.student.get_layer("recorder").seen.assign(np.zeros_like(x))
    d.predict(x, batch_size=BATCH, verbose=0)
    np.testing.assert_array_equal(seen(d.student), x)


# ---------------------------------------------------------------------------
# Mixup
# ---------------------------------------------------------------------------


def test_mixup_mixes_the_batch_as_the_seeded_draw_says():
    x, y = batch()
    mixup = augment.MixUp(alpha=0.4, seed=11)
    d = distiller(mixup=mixup)
    d.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    mixed = seen(d.student)
    np.testing.assert_array_equal(seen(d.teacher), mixed)
    lam, perm = recover_mixture(mixed, x)
    assert 0.5 <= lam < 1.0
    assert sorted(perm.tolist()) == list(range(BATCH))
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-5)
    # the draw of step 0, replica 0, repeats outside the train step
    expected_lam, expected_perm = mixup.sample(0, [BATCH])
    assert lam == pytest.approx(float(expected_lam), abs=1e-5)
    moved = perm != np.arange(BATCH)
    np.testing.assert_array_equal(perm[moved], expected_perm.numpy()[moved])


@pytest.mark.parametrize("with_teacher", [True, False])
def test_mixup_hard_loss_and_metrics_match_numpy(with_teacher):
    x, y = batch(seed=1)
    d = distiller(mixup=augment.MixUp(alpha=1.0, seed=5), teacher=with_teacher)
    logs = d.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    mixed = seen(d.student)
    lam, perm = recover_mixture(mixed, x)
    s = d.student.predict(mixed, verbose=0)
    hard = lam * np_ce(s, y) + (1 - lam) * np_ce(s, y[perm])
    assert logs["hard_loss"][0] == pytest.approx(hard, rel=1e-4)
    accuracy = np.mean(np.argmax(s, -1) == y)  # scored against y
    assert logs["accuracy"][0] == pytest.approx(accuracy)
    if with_teacher:
        t = d.teacher.predict(mixed, verbose=0)  # the teacher labels the mixture
        distill = np_kl(t, s, 2.0)
        assert logs["distillation_loss"][0] == pytest.approx(distill, rel=1e-4)
        total = 0.5 * distill + 0.5 * hard
    else:
        assert logs["distillation_loss"][0] == 0.0
        total = hard
    assert logs["loss"][0] == pytest.approx(total, rel=1e-4)


def test_seeded_runs_repeat_and_another_seed_differs():
    x, y = batch((5, 5, 1), seed=2)
    x = np.concatenate([x, x[::-1]])
    y = np.concatenate([y, y[::-1]])

    def run(mixup_seed):
        keras.utils.set_random_seed(0)
        d = distiller(
            augmentation=augment.Jitter(1, seed=1),
            mixup=augment.MixUp(0.4, seed=mixup_seed),
            shape=(5, 5, 1),
            optimizer=keras.optimizers.SGD(0.1),
        )
        d.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return d.student.get_weights()

    a, b, c = run(3), run(3), run(4)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.allclose(wa, wc) for wa, wc in zip(a, c))


def test_mixup_and_jitter_train_under_jit_compile():
    x, y = batch((5, 5, 1), seed=3)
    d = distiller(
        augmentation=augment.Jitter(1, seed=1),
        mixup=0.3,
        shape=(5, 5, 1),
        jit_compile=True,
    )
    logs = d.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    np.testing.assert_array_equal(seen(d.teacher), seen(d.student))
    assert not np.allclose(seen(d.student), x)
    assert np.isfinite(logs["loss"][0])


# ---------------------------------------------------------------------------
# Unlabelled data
# ---------------------------------------------------------------------------


def labelled_accuracy(student, x, y):
    """Plain Keras: the student's accuracy on `(x, y)` by `evaluate`."""
    plain = keras.Model(student.inputs, student.outputs)
    plain.compile(loss=hard_loss(), metrics=["accuracy"])
    return plain.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]


def test_batches_of_inputs_only_add_no_hard_loss_and_no_metric_zeros():
    x, y = batch()
    d = distiller()
    logs = d.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    t, s = d.teacher.predict(x, verbose=0), d.student.predict(x, verbose=0)
    assert logs["hard_loss"] == [0.0]
    assert logs["distillation_loss"][0] == pytest.approx(np_kl(t, s, 2.0), rel=1e-4)
    assert logs["loss"][0] == pytest.approx(0.5 * np_kl(t, s, 2.0), rel=1e-4)
    assert "accuracy" not in logs
    # the compiled metrics were not updated (Keras 3 has not even built them)
    compiled = [m for m in d.metrics if all(m is not o for o in d.loss_trackers)]
    assert all(not np.any(v.numpy()) for m in compiled for v in m.variables)
    evaluated = d.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert evaluated == pytest.approx(labelled_accuracy(d.student, x, y))


def mixed_data(n_labelled=12, n_unlabelled=4, one_hot=False):
    x, y = batch(seed=4)
    rng = np.random.default_rng(5)
    x_l, y_l = x[:n_labelled], y[:n_labelled]
    x_u = rng.normal(size=(n_unlabelled, 8)).astype("float32")
    ds = kd.data.mix(
        (x_l, np.eye(3, dtype="float32")[y_l] if one_hot else y_l),
        x_u,
        batch_size=n_labelled + n_unlabelled,
        unlabelled_fraction=n_unlabelled / (n_labelled + n_unlabelled),
        shuffle=False,
    )
    return ds, x_l, y_l, x_u


def test_mixed_batches_score_hard_loss_and_metrics_on_labelled_rows_only():
    ds, x_l, y_l, x_u = mixed_data()
    d = distiller()
    logs = d.fit(ds, epochs=1, verbose=0).history
    x_all = np.concatenate([x_l, x_u])
    np.testing.assert_array_equal(seen(d.teacher), x_all)  # one run of each model
    np.testing.assert_array_equal(seen(d.student), x_all)
    t, s = d.teacher.predict(x_all, verbose=0), d.student.predict(x_all, verbose=0)
    hard = np_ce(s[:12], y_l)
    distill = np_kl(t, s, 2.0)  # every row
    assert logs["hard_loss"][0] == pytest.approx(hard, rel=1e-4)
    assert logs["distillation_loss"][0] == pytest.approx(distill, rel=1e-4)
    assert logs["loss"][0] == pytest.approx(0.5 * (hard + distill), rel=1e-4)
    accuracy = labelled_accuracy(d.student, x_l, y_l)
    assert logs["accuracy"][0] == pytest.approx(accuracy)
    evaluated = d.evaluate(ds, verbose=0, return_dict=True)
    assert evaluated["accuracy"] == pytest.approx(accuracy)
    assert evaluated["hard_loss"] == pytest.approx(hard, rel=1e-4)


@pytest.mark.parametrize("encoding", ["sparse", "one_hot"])
def test_mixed_batches_give_decoupled_kd_labels_then_the_teachers_top_class(
    encoding,
):
    ds, x_l, y_l, x_u = mixed_data(one_hot=encoding == "one_hot")
    d = distiller(
        distillation_loss=kd.losses.DecoupledKD(temperature=2.0),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True)
        if encoding == "one_hot"
        else hard_loss(),
    )
    logs = d.fit(ds, epochs=1, verbose=0).history
    x_all = np.concatenate([x_l, x_u])
    t, s = d.teacher.predict(x_all, verbose=0), d.student.predict(x_all, verbose=0)
    labels = np.concatenate([y_l, np.argmax(t[12:], -1)])
    expected = np_dkd(t, s, labels, temperature=2.0)
    assert logs["distillation_loss"][0] == pytest.approx(expected, rel=1e-4)


def test_mixup_on_mixed_batches_mixes_labelled_rows_among_themselves():
    ds, x_l, y_l, x_u = mixed_data(8, 8)
    d = distiller(mixup=augment.MixUp(1.0, seed=2))
    logs = d.fit(ds, epochs=1, verbose=0).history
    mixed = seen(d.student)
    x_all = np.concatenate([x_l, x_u])
    lam, perm = recover_mixture(mixed, x_all)
    assert set(perm[:8]) <= set(range(8)) and set(perm[8:]) <= set(range(8, 16))
    s = d.student.predict(mixed, verbose=0)[:8]
    hard = lam * np_ce(s, y_l) + (1 - lam) * np_ce(s, y_l[perm[:8]])
    assert logs["hard_loss"][0] == pytest.approx(hard, rel=1e-4)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kd_tests")
def doubled(x):
    return 2.0 * x


def test_augmentation_and_mixup_round_trip_through_a_keras_file(tmp_path):
    x, y = batch((5, 5, 1))
    pipeline = keras.Sequential(
        [augment.Jitter(1, seed=3), keras.layers.GaussianNoise(0.1)]
    )
    d = distiller(
        augmentation=pipeline, mixup=augment.MixUp(0.3, seed=4), shape=(5, 5, 1)
    )
    d.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    d.save(tmp_path / "d.keras")
    restored = keras.saving.load_model(tmp_path / "d.keras")
    layers = restored.augmentation.layers
    assert isinstance(layers[0], augment.Jitter) and layers[0].seed == 3
    assert isinstance(layers[1], keras.layers.GaussianNoise)
    assert (restored.mixup.alpha, restored.mixup.seed) == (0.3, 4)
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), d.predict(x, verbose=0), rtol=1e-6
    )
    restored.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def test_function_augmentation_saves_as_keras_saves_functions(tmp_path):
    x, y = batch()
    d = distiller(augmentation=doubled)
    d.save(tmp_path / "registered.keras")
    assert keras.saving.load_model(tmp_path / "registered.keras").augmentation is (
        doubled
    )

    def shifted(x):
        return x + 1.0

    d = distiller(augmentation=shifted)
    d.save(tmp_path / "plain.keras")
    with pytest.raises(TypeError, match="shifted"):  # Keras: register it
        keras.saving.load_model(tmp_path / "plain.keras")
    restored = keras.saving.load_model(
        tmp_path / "plain.keras", custom_objects={"shifted": shifted}
    )
    assert restored.augmentation is shifted


def test_plain_distiller_config_has_no_new_keys():
    config = distiller().get_config()
    assert set(config) == {"name", "teacher", "student"}


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"augmentation": 3}, TypeError, "`augmentation`.*augmentation=3 of type int"),
        ({"augmentation": keras.layers.Dense}, TypeError, "`augmentation`.*type"),
        ({"mixup": 0.0}, ValueError, r"`mixup`.*alpha in \(0.*mixup=0.0"),
        ({"mixup": -0.2}, ValueError, "`mixup`.*mixup=-0.2"),
        ({"mixup": True}, TypeError, "`mixup`.*mixup=True of type bool"),
        ({"mixup": "0.2"}, TypeError, "`mixup`.*mixup='0.2' of type str"),
    ],
)
def test_bad_augmentation_and_mixup_are_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        kd.Distiller(recording_model(4), recording_model(4), **kwargs)


def test_online_distillers_refuse_augmentation_mixup_and_mixed_batches():
    t, s = recording_model(4), recording_model(4)
    with pytest.raises(ValueError, match="`augmentation` and `mixup`.*trains its"):
        kd.OnlineDistiller(t, s, mixup=0.2)
    with pytest.raises(ValueError, match="MutualLearning.*`augmentation`"):
        kd.MutualLearning([t, s], augmentation=doubled)
    online = kd.OnlineDistiller(t, s)
    online.compile(optimizer="sgd", loss=hard_loss())
    ds = mixed_data()[0]
    with pytest.raises(ValueError, match="OnlineDistiller cannot train on batches"):
        online.fit(ds, epochs=1, verbose=0)


def test_mixup_of_integer_inputs_is_refused():
    inputs = keras.Input((4,), dtype="int32")
    outputs = keras.layers.Dense(3)(keras.layers.Embedding(10, 2)(inputs)[:, 0])
    d = kd.Distiller(None, keras.Model(inputs, outputs), mixup=0.2)
    d.compile(optimizer="sgd", loss=hard_loss())
    with pytest.raises(TypeError, match="floating point"):
        d.fit(np.zeros((8, 4), "int32"), np.zeros(8), verbose=0)


# ---------------------------------------------------------------------------
# tf.distribute
# ---------------------------------------------------------------------------


MIRRORED = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keys = strategy.run(lambda: kd.augment.step_key(0, 5))
    keys = [k.numpy().tolist() for k in strategy.experimental_local_results(keys)]
    assert keys[0] != keys[1], keys  # each replica draws its own

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5, 5, 1)).astype("float32")
    y = rng.integers(0, 3, 64)
    transfer = rng.normal(size=(96, 5, 5, 1)).astype("float32")

    def cnn():
        return keras.Sequential([keras.Input((5, 5, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(3)])

    with strategy.scope():
        t, s = cnn(), cnn()
        before = s.get_weights()
        d = kd.Distiller(t, s, augmentation=kd.augment.jitter(1, seed=0),
                         mixup=kd.augment.mixup(0.4, seed=1))
        d.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for data in ((x, y), (kd.data.mix((x, y), transfer, 16, 0.5, seed=0),)):
        logs = d.fit(*data, epochs=2, batch_size=16, verbose=0).history
        assert all(np.isfinite(v).all() for v in logs.values()), logs
    logs = d.evaluate(kd.data.mix((x, y), transfer, 16, seed=0), verbose=0,
                      return_dict=True)
    assert np.isfinite(list(logs.values())).all(), logs
    assert any(not np.allclose(a, b) for a, b in zip(before, s.get_weights()))
    print("TRAINED")
    """
)


def test_augmentation_mixup_and_mixed_batches_under_a_mirrored_strategy():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "TRAINED" in result.stdout, result.stderr[-3000:]
