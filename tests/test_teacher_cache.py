"""Teacher outputs computed once (`kd.data.with_teacher_outputs`)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp, np_log_softmax, twins
from keras_kd.backend import keras, tf
from keras_kd.cache import TOP_K_GAP, rebuild_top_k


def _batched(dataset, size=1000):
    """All elements of an unbatched cache as one batch of numpy arrays."""
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(dataset.batch(size))))


def _teacher(activation=None):
    return make_mlp(16, activation=activation, name="teacher")


def _distiller(teacher, student, **kwargs):
    distiller = kd.Distiller(teacher=teacher, student=student, **kwargs)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(temperature=2.0),
        alpha=0.7,
    )
    return distiller


class Counter(keras.layers.Layer):
    """Passes its inputs through and counts its calls in a variable."""

    def build(self, input_shape):
        self.calls = self.add_weight(
            name="calls", shape=(), initializer="zeros", trainable=False
        )

    def call(self, inputs):
        self.calls.assign_add(1.0)
        return inputs


# ---------------------------------------------------------------------------
# The stored outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "dataset", "batched_dataset"])
def test_cached_targets_equal_live_in_memory(data, kind):
    x, y = data
    teacher = _teacher()
    given = {
        "numpy": (x, y),
        "dataset": tf.data.Dataset.from_tensor_slices((x, y)),
        "batched_dataset": tf.data.Dataset.from_tensor_slices((x, y)).batch(10),
    }[kind]
    cached = kd.data.with_teacher_outputs(teacher, given, batch_size=16)
    assert int(cached.cardinality()) == len(x)
    got = _batched(cached)
    assert isinstance(got, kd.data.TeacherBatch)
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y)
    assert got.sample_weight == ()
    np.testing.assert_allclose(
        got.teacher_outputs, teacher.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_cached_targets_equal_live_from_shards(data, tmp_path):
    x, y = data
    teacher = _teacher()
    weights = np.linspace(0.5, 2.0, len(x)).astype("float32")
    path = tmp_path / "cache"
    cached = kd.data.with_teacher_outputs(
        teacher, (x, y, weights), batch_size=8, path=path, max_shard_bytes=600
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["num_examples"] == len(x) == int(cached.cardinality())
    assert manifest["teacher"]["name"] == "teacher"
    assert manifest["teacher"]["fingerprint"].startswith("sha256:")
    assert (manifest["dtype"], manifest["top_k"]) == ("float32", None)
    assert manifest["layout"]["teacher_outputs"] == {"dtype": "float32", "shape": [3]}
    assert len(manifest["shards"]) > 1  # several shards, streamed in order
    assert sum(s["examples"] for s in manifest["shards"]) == len(x)
    assert sorted(os.listdir(path)) == sorted(
        ["manifest.json"] + [s["file"] for s in manifest["shards"]]
    )  # no temporary file left behind
    got = _batched(cached)
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y)
    np.testing.assert_array_equal(got.sample_weight, weights)
    live = teacher.predict(x, verbose=0)
    np.testing.assert_allclose(got.teacher_outputs, live, rtol=1e-5, atol=1e-6)
    # The same path and teacher: read back, neither the data nor the teacher run.
    again = _batched(kd.data.with_teacher_outputs(teacher, None, path=path))
    np.testing.assert_array_equal(again.teacher_outputs, got.teacher_outputs)


def test_softmax_teacher_is_stored_as_log_probabilities(data):
    x, y = data
    teacher = _teacher(activation="softmax")
    got = _batched(kd.data.with_teacher_outputs(teacher, x))
    assert got.y == ()
    probs = teacher.predict(x, verbose=0).astype(np.float64)
    np.testing.assert_allclose(
        got.teacher_outputs, np.log(np.clip(probs, 1e-7, 1.0)), atol=1e-5
    )


def test_float16_storage_within_float16_tolerance(data, tmp_path):
    x, _ = data
    teacher = _teacher()
    live = teacher.predict(x, verbose=0)
    for path in (None, tmp_path / "fp16"):
        got = _batched(
            kd.data.with_teacher_outputs(teacher, x, dtype="float16", path=path)
        )
        assert got.teacher_outputs.dtype == np.float32
        np.testing.assert_array_equal(
            got.teacher_outputs, live.astype(np.float16).astype(np.float32)
        )
        np.testing.assert_allclose(got.teacher_outputs, live, rtol=2**-11, atol=1e-7)


def test_top_k_rebuild_renormalises_against_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 5, 12)).astype("float32") * 3
    k, temperature = 4, 2.5
    values, indices = tf.math.top_k(logits, k=k)
    rebuilt = rebuild_top_k(values, indices, 12).numpy()
    assert rebuilt.shape == logits.shape
    # Reference: softmax over the k largest logits, zero elsewhere.
    order = np.argsort(-logits, axis=-1)[..., :k]
    expected = np.zeros(logits.shape)
    kept = np.take_along_axis(logits, order, -1).astype(np.float64) / temperature
    kept = np.exp(kept - kept.max(-1, keepdims=True))
    np.put_along_axis(expected, order, kept / kept.sum(-1, keepdims=True), -1)
    got = np.exp(np_log_softmax(rebuilt / temperature))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (got[expected == 0] == 0).all()
    # The kept logits are exact (not rounded by the fill's magnitude).
    np.testing.assert_array_equal(np.take_along_axis(rebuilt, order, -1), values)
    # The dropped classes sit TOP_K_GAP below each position's smallest kept logit.
    fill = np.take_along_axis(logits, order, -1).min(-1, keepdims=True) - TOP_K_GAP
    np.testing.assert_array_equal(
        rebuilt[expected == 0], np.broadcast_to(fill, logits.shape)[expected == 0]
    )


def test_top_k_cache_gives_the_renormalised_kl(data, tmp_path):
    x, _ = data
    teacher = _teacher()
    teacher_logits = teacher.predict(x, verbose=0)
    student_logits = np.random.default_rng(1).normal(size=teacher_logits.shape)
    for path in (None, tmp_path / "top2"):
        got = _batched(kd.data.with_teacher_outputs(teacher, x, top_k=2, path=path))
        loss = kd.losses.KLDivergence(temperature=3.0)(
            got.teacher_outputs, student_logits.astype("float32")
        )
        # Reference: the teacher's two largest logits, the third class
        # dropped and the rest renormalised, at T = 3.
        order = np.argsort(-teacher_logits, -1)
        masked = teacher_logits.astype(np.float64).copy()
        np.put_along_axis(masked, order[:, 2:], -np.inf, -1)
        p_t = np.exp(np_log_softmax(np.where(np.isinf(masked), -1e30, masked) / 3.0))
        log_s = np_log_softmax(student_logits / 3.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p_t > 0, p_t * (np.log(p_t) - log_s), 0.0)
        np.testing.assert_allclose(float(loss), (terms.sum(-1) * 9.0).mean(), rtol=1e-5)


def test_fit_accepts_its_teachers_top_k_float16_outputs(data, tmp_path):
    x, y = data
    teacher = _teacher()
    stored = kd.data.with_teacher_outputs(
        teacher, (x, y), path=tmp_path / "small", dtype="float16", top_k=2
    )
    distiller = _distiller(teacher, make_mlp(4, name="student"))
    history = distiller.fit(stored.shuffle(64).batch(16), epochs=1, verbose=0)
    assert np.isfinite(history.history["distillation_loss"]).all()


# ---------------------------------------------------------------------------
# Training on stored outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [None, "softmax"])
def test_cached_epoch_matches_live_epoch(data, activation):
    x, y = data
    teacher = make_mlp(16, activation=activation, name="teacher")
    student_live, student_cached = twins(4, "student")
    live = _distiller(teacher, student_live)
    cached = _distiller(teacher, student_cached)
    live_history = live.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        shuffle=False,
        validation_data=(x[:20], y[:20]),
        verbose=0,
    )
    stored = kd.data.with_teacher_outputs(teacher, (x, y), batch_size=32)
    cached_history = cached.fit(
        stored.batch(16),
        epochs=2,
        validation_data=stored.take(20).batch(16),
        verbose=0,
    )
    for key in ("loss", "distillation_loss", "hard_loss", "val_distillation_loss"):
        np.testing.assert_allclose(
            cached_history.history[key], live_history.history[key], rtol=1e-5
        )
    for a, b in zip(student_cached.get_weights(), student_live.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        cached.evaluate(stored.batch(16), verbose=0),
        live.evaluate(x, y, batch_size=16, verbose=0),
        rtol=1e-5,
    )


def test_class_subset_from_stored_outputs_matches_live(data):
    x, y = data
    teacher = make_mlp(16, activation="softmax", name="teacher")
    students = twins(4, "student", n_out=2)
    results = []
    for student, cached in zip(students, (False, True)):
        distiller = _distiller(teacher, student, class_indices=[2, 0])
        if cached:
            stored = kd.data.with_teacher_outputs(teacher, (x, y % 2))
            history = distiller.fit(stored.batch(16), epochs=1, verbose=0)
        else:
            history = distiller.fit(
                x, y % 2, batch_size=16, shuffle=False, epochs=1, verbose=0
            )
        results.append((history.history["loss"], student.get_weights()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _two_headed_teacher():
    """Dict inputs `image` and `extra`, outputs `[logits, probabilities]`."""
    image = keras.Input((8,), name="image")
    extra = keras.Input((2,), name="extra")
    hidden = keras.layers.Dense(8, activation="relu")(
        keras.layers.Concatenate()([image, extra])
    )
    logits = keras.layers.Dense(3, name="logits")(hidden)
    probs = keras.layers.Dense(5, activation="softmax", name="probs")(hidden)
    return keras.Model({"image": image, "extra": extra}, [logits, probs])


def test_dict_inputs_and_several_outputs_round_trip_through_shards(data, tmp_path):
    x, y = data
    inputs = {"image": x, "extra": x[:, :2] * 2}
    teacher = _two_headed_teacher()
    labels = (y, y % 2)
    stored = kd.data.with_teacher_outputs(
        teacher, (inputs, labels), batch_size=16, path=tmp_path / "two", top_k=2
    )
    got = _batched(stored)
    assert sorted(got.x) == ["extra", "image"]
    np.testing.assert_array_equal(got.x["extra"], inputs["extra"])
    np.testing.assert_array_equal(got.y[1], y % 2)
    logits, probs = teacher.predict(inputs, verbose=0)
    assert [o.shape for o in got.teacher_outputs] == [logits.shape, probs.shape]
    for output, live in zip(got.teacher_outputs, (logits, np.log(probs))):
        top = np.argsort(-live, -1)[:, :2]
        np.testing.assert_allclose(
            np.take_along_axis(output, top, -1),
            np.take_along_axis(live, top, -1),
            rtol=1e-5,
            atol=1e-5,
        )


def test_teacher_is_not_run_on_cached_batches(data):
    x, y = data
    counter = Counter()
    teacher = keras.Sequential(
        [keras.Input((8,)), counter, keras.layers.Dense(3)], name="teacher"
    )
    stored = kd.data.with_teacher_outputs(teacher, (x, y), batch_size=64)
    after_cache = float(counter.calls.numpy())
    distiller = _distiller(teacher, make_mlp(4, name="student"))
    distiller.fit(stored.batch(8), epochs=2, verbose=0)  # 16 steps
    # One call: fit's check of the first batch against the live teacher.
    assert float(counter.calls.numpy()) == after_cache + 1
    distiller.evaluate(stored.batch(8), verbose=0)
    assert float(counter.calls.numpy()) == after_cache + 1
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # live: it runs
    assert float(counter.calls.numpy()) > after_cache + 8


def _id_teacher(name):
    """A linear model whose outputs encode the input's id (x[:, 0])."""
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, use_bias=False)], name=name
    )
    kernel = np.zeros((4, 3), "float32")
    kernel[0] = [0.1, 0.2, -0.1]
    model.layers[-1].set_weights([kernel])
    return model


@pytest.mark.parametrize("on_disk", [False, True])
def test_shuffled_cache_keeps_pairs_aligned(tmp_path, on_disk):
    ids = np.arange(40, dtype="float32")
    x = np.stack([ids, -ids, ids * 0, ids], axis=1)
    y = (np.arange(40) % 3).astype("int64")
    teacher = _id_teacher("teacher")
    stored = kd.data.with_teacher_outputs(
        teacher,
        (x, y),
        batch_size=7,
        path=tmp_path / "ids" if on_disk else None,
        max_shard_bytes=400,
    )
    orders, shuffled = [], stored.shuffle(40, seed=0).batch(6)
    for _ in range(2):  # two epochs, reshuffled
        seen = []
        for batch in shuffled:
            seen.extend(batch.x.numpy()[:, 0].tolist())
            np.testing.assert_allclose(
                batch.teacher_outputs.numpy(),
                batch.x.numpy()[:, :1] * [[0.1, 0.2, -0.1]],
                rtol=1e-6,
            )
            np.testing.assert_array_equal(
                batch.y.numpy(), batch.x.numpy()[:, 0].astype("int64") % 3
            )
        assert sorted(seen) == ids.tolist()
        orders.append(seen)
    assert orders[0] != orders[1] and orders[0] != ids.tolist()
    # Recorded in training: a student equal to the teacher that does not
    # learn has zero distillation loss only if each batch's targets are its own.
    student = _id_teacher("student")
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(temperature=1.0),
    )
    history = distiller.fit(stored.shuffle(40).batch(6), epochs=2, verbose=0)
    np.testing.assert_allclose(history.history["distillation_loss"], 0.0, atol=1e-6)
    misaligned = kd.data.TeacherBatch(x, y, teacher.predict(x[::-1], verbose=0))
    wrong = distiller.evaluate(
        tf.data.Dataset.from_tensor_slices(misaligned).batch(6),
        verbose=0,
        return_dict=True,
    )
    assert wrong["distillation_loss"] > 0.1


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


def test_cache_of_another_teacher_is_refused(data, tmp_path):
    x, y = data
    first, other = _teacher(), make_mlp(16, name="other")
    path = tmp_path / "cache"
    kd.data.with_teacher_outputs(first, (x, y), path=path)
    with pytest.raises(ValueError, match="stale cache") as error:
        kd.data.with_teacher_outputs(other, (x, y), path=path)
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match="top_k=None"):
        kd.data.with_teacher_outputs(first, (x, y), path=path, top_k=2)
    with pytest.raises(ValueError, match="64 examples"):
        kd.data.with_teacher_outputs(first, (x[:10], y[:10]), path=path)
    # In memory, `fit` compares the first batch with the Distiller's teacher.
    stored = kd.data.with_teacher_outputs(first, (x, y))
    distiller = _distiller(other, make_mlp(4, name="student"))
    with pytest.raises(ValueError, match="not those of the Distiller's teacher"):
        distiller.fit(stored.batch(16), epochs=1, verbose=0)
    os.remove(
        path / json.loads((path / "manifest.json").read_text())["shards"][0]["file"]
    )
    with pytest.raises(ValueError, match="incomplete"):
        kd.data.with_teacher_outputs(first, (x, y), path=path)


def test_distiller_with_augmentation_refuses_cached_batches(data):
    x, y = data
    teacher = _teacher()
    stored = kd.data.with_teacher_outputs(teacher, (x, y)).batch(16)
    distiller = _distiller(
        teacher, make_mlp(4, name="student"), augmentation=lambda v: v * 1.1
    )
    with pytest.raises(ValueError, match="stale targets"):
        distiller.fit(stored, epochs=1, verbose=0)
    distiller.evaluate(stored, verbose=0)  # no augmentation: allowed


@pytest.mark.parametrize("case", ["features", "several", "online", "none"])
def test_what_cannot_use_stored_outputs_is_refused(data, case):
    x, y = data
    teacher = _teacher()
    stored = kd.data.with_teacher_outputs(teacher, (x, y)).batch(16)
    student = make_mlp(4, name="student")
    if case == "features":
        kwargs = {
            "features": [
                kd.FeatureMatch(teacher.layers[0].name, student.layers[0].name)
            ]
        }
        reason = "intermediate features"
    elif case == "several":
        kwargs = {"teacher": [teacher, make_mlp(8, name="second")]}
        reason = "2 teachers"
    elif case == "online":
        kwargs = {}
        reason = "stale"
    else:
        kwargs = {"teacher": None}
        reason = "no teacher"
    model = kd.OnlineDistiller if case == "online" else kd.Distiller
    distiller = model(**{"teacher": teacher, "student": student, **kwargs})
    distiller.compile(optimizer="sgd", loss=hard_loss())
    with pytest.raises(ValueError, match=reason):
        distiller.fit(stored, epochs=1, verbose=0)


def test_bad_arguments_are_refused(data):
    x, y = data
    teacher = _teacher()
    with pytest.raises(TypeError, match="one model"):
        kd.data.with_teacher_outputs([teacher, make_mlp(4)], x)
    with pytest.raises(ValueError, match="dtype="):
        kd.data.with_teacher_outputs(teacher, x, dtype="bfloat16")
    with pytest.raises(ValueError, match="top_k=3"):
        kd.data.with_teacher_outputs(teacher, x, top_k=3)
    with pytest.raises(ValueError, match="as many"):
        kd.data.with_teacher_outputs(teacher, (x, y[:5]))
    with pytest.raises(ValueError, match="data=None"):
        kd.data.with_teacher_outputs(teacher, None)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, 64)

    def mlp(h):
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(h,
            activation="relu"), keras.layers.Dense(3)])

    keras.utils.set_random_seed(0)
    teacher_w, student_w = mlp(16).get_weights(), mlp(4).get_weights()
    results = []
    for name in ("default", "mirrored"):
        strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
                    if name == "mirrored" else tf.distribute.get_strategy())
        with strategy.scope():
            t, s = mlp(16), mlp(4)
            t.set_weights(teacher_w)
            s.set_weights(student_w)
            d = kd.Distiller(teacher=t, student=s)
            d.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True), alpha=0.5)
        if name == "default":  # the live teacher, one replica
            history = d.fit(x, y, batch_size=32, shuffle=False, verbose=0)
        else:  # stored outputs, two replicas
            stored = kd.data.with_teacher_outputs(t, (x, y))
            history = d.fit(stored.batch(32), verbose=0)
        results.append((history.history["loss"], s.get_weights()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    print("SAME")
    """
)


def test_stored_outputs_under_mirrored_strategy_match_live_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]
