"""Cached augmented views (`with_teacher_outputs(augmentation=, views=)`)."""

import json

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss
from keras_kd.backend import keras, tf

N, SIDE, K = 40, 6, 3


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, SIDE, SIDE, 1)).astype("float32")
    y = rng.integers(0, 3, size=N)
    return x, y


def _cnn(name="teacher"):
    return keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ],
        name=name,
    )


def _cached(teacher, data, **kwargs):
    kwargs = {
        "augmentation": kd.augment.jitter(1, seed=3),
        "views": K,
        "seed": 5,
        **kwargs,
    }
    return kd.data.with_teacher_outputs(teacher, data, batch_size=16, **kwargs)


def _epoch(dataset):
    """One iteration of an unbatched cache, as numpy arrays."""
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(dataset.batch(1000))))


def _np_shifts(image, pixels):
    """Reference: every shift of one image by up to `pixels`, edges repeated."""
    out = []
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            rows = np.clip(np.arange(SIDE) - dy, 0, SIDE - 1)
            cols = np.clip(np.arange(SIDE) - dx, 0, SIDE - 1)
            out.append(image[rows][:, cols])
    return out


@pytest.mark.parametrize(
    "where", ["memory", "shards", "shards_float16_top_k", "memory_top_k"]
)
def test_cached_outputs_are_the_teachers_on_the_view_received(images, where, tmp_path):
    x, y = images
    teacher = _cnn()
    kwargs = {
        "memory": {},
        "shards": {"path": tmp_path / "c", "max_shard_bytes": 3000},
        "shards_float16_top_k": {
            "path": tmp_path / "c",
            "dtype": "float16",
            "top_k": 2,
        },
        "memory_top_k": {"top_k": 2},
    }[where]
    cached = _cached(teacher, (x, y), **kwargs)
    assert int(cached.cardinality()) == N
    for _ in range(3):  # several draws
        got = _epoch(cached)
        np.testing.assert_array_equal(got.y, y)
        live = teacher.predict(got.x, verbose=0)
        if "top_k" not in where:
            tolerance = {"atol": 1e-5} if "float16" not in where else {"atol": 2e-2}
            np.testing.assert_allclose(
                got.teacher_outputs, live, rtol=1e-5, **tolerance
            )
            continue
        # numpy reference: the two largest logits kept, the third far below
        order = np.argsort(-live, axis=-1)
        kept = np.take_along_axis(got.teacher_outputs, order[:, :2], -1)
        dropped = np.take_along_axis(got.teacher_outputs, order[:, 2:], -1)
        atol = 2e-2 if "float16" in where else 1e-5
        np.testing.assert_allclose(kept, np.sort(live, -1)[:, ::-1][:, :2], atol=atol)
        assert (dropped < kept.min(-1, keepdims=True) - 1e5).all()
    if "path" in kwargs:
        manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
        assert manifest["views"] == K and manifest["seed"] == 5
        assert manifest["augmentation"]["class"] == "Jitter"
        assert manifest["augmentation"]["config"]["pixels"] == 1


def test_views_are_augmentations_of_their_example_and_drawn_anew(images):
    x, y = images
    cached = _cached(_cnn(), (x, y))
    epochs = [_epoch(cached).x for _ in range(5)]
    for got in epochs:
        for i, view in enumerate(got):
            # each view is a jitter of its own image (numpy reference)
            assert any(np.array_equal(view, s) for s in _np_shifts(x[i], 1)), i
    assert sum(not np.array_equal(v, r) for v, r in zip(epochs[0], x)) > N // 2
    # each epoch draws anew: consecutive epochs differ
    assert all(not np.array_equal(a, b) for a, b in zip(epochs, epochs[1:]))


def test_every_stored_view_is_read(images):
    x, y = images

    def noise(inputs):  # a function: views distinct with probability 1
        return inputs + tf.random.uniform(tf.shape(inputs), 0.01, 0.1)

    cached = _cached(_cnn(), (x, y), augmentation=noise)
    seen = [set() for _ in range(N)]
    for _ in range(30):
        for i, view in enumerate(_epoch(cached).x):
            difference = view - x[i]
            assert ((difference > 0.009) & (difference < 0.101)).all(), i
            seen[i].add(view.tobytes())
    # K distinct views per example (the augmentation ran K times), all read
    assert all(len(s) == K for s in seen), [len(s) for s in seen]


def test_same_seed_same_draws_other_seed_other_draws(images):
    x, y = images
    teacher = _cnn()

    def sequence(seed):
        cached = _cached(teacher, (x, y), seed=seed)
        return [_epoch(cached).x for _ in range(3)]

    first, again, other = sequence(5), sequence(5), sequence(6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def _distiller(teacher, student, **kwargs):
    distiller = kd.Distiller(teacher=teacher, student=student, **kwargs)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(temperature=2.0),
        alpha=0.7,
    )
    return distiller


def test_training_on_cached_views_equals_a_live_teacher_on_the_same_views(images):
    x, y = images
    teacher = _cnn()
    student = _cnn("student_a")
    twin = keras.models.clone_model(student)
    twin.set_weights(student.get_weights())
    initial = student.get_weights()

    # Two datasets made with one seed draw the same views epoch by epoch; the
    # live Distiller gets the views without the stored outputs.
    cached = _cached(teacher, (x, y)).batch(16)
    views_only = _cached(teacher, (x, y)).map(lambda b: (b.x, b.y)).batch(16)
    from_cache = _distiller(teacher, student).fit(cached, epochs=3, verbose=0)
    live = _distiller(teacher, twin).fit(views_only, epochs=3, verbose=0)
    for key in ("loss", "distillation_loss"):
        np.testing.assert_allclose(
            from_cache.history[key], live.history[key], rtol=1e-4, err_msg=key
        )
    for a, b in zip(student.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(student.get_weights()[0], initial[0]), "did not train"
    # Recording check: a live Distiller on the raw images (not the views)
    # trains differently, so the views matter.
    raw = keras.models.clone_model(student)
    raw.set_weights(initial)
    plain = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    other = _distiller(teacher, raw).fit(plain, epochs=3, verbose=0)
    assert not np.allclose(other.history["loss"], live.history["loss"], rtol=1e-3)


def test_student_equal_to_teacher_has_no_distillation_loss_on_cached_views(images):
    """Recording check: the outputs stored with each view are those of the
    view the student receives (a clone of the teacher learns nothing)."""
    x, y = images
    teacher = _cnn()
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    cached = _cached(teacher, (x, y)).shuffle(N).batch(8)
    distiller = _distiller(teacher, student)
    distiller.optimizer.learning_rate = 0.0
    history = distiller.fit(cached, epochs=2, verbose=0)
    np.testing.assert_allclose(history.history["distillation_loss"], 0.0, atol=1e-5)
    # the stored outputs of the raw images paired with the views: not 0
    raw = kd.data.with_teacher_outputs(teacher, (x, y)).batch(N)
    views = _cached(teacher, (x, y)).batch(N)
    swapped = tf.data.Dataset.zip((views, raw)).map(
        lambda v, r: kd.data.TeacherBatch(v.x, v.y, r.teacher_outputs)
    )
    logs = distiller.evaluate(swapped, verbose=0, return_dict=True)
    assert logs["distillation_loss"] > 1e-3


def test_reusing_a_path_with_other_views_is_refused(images, tmp_path):
    x, y = images
    teacher = _cnn()
    _cached(teacher, (x, y), path=tmp_path)
    again = _cached(teacher, (x, y), path=tmp_path, seed=9)  # reused: stored views
    assert int(again.cardinality()) == N
    # reused without a seed: the recorded one, the same draws every time
    first = _cached(teacher, (x, y), path=tmp_path, seed=None)
    second = _cached(teacher, (x, y), path=tmp_path, seed=None)
    for _ in range(2):
        np.testing.assert_array_equal(_epoch(first).x, _epoch(second).x)
    for change, message in [
        ({"views": 2}, "views=3"),
        ({"augmentation": kd.augment.jitter(2, seed=3)}, "'pixels': 1"),
        ({"augmentation": None, "views": None, "seed": None}, "views=3"),
    ]:
        with pytest.raises(ValueError, match=message):
            _cached(teacher, (x, y), path=tmp_path, **change)
    plain = tmp_path / "plain"
    kd.data.with_teacher_outputs(teacher, (x, y), path=plain)
    with pytest.raises(ValueError, match="views=None"):
        _cached(teacher, (x, y), path=plain)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"views": 2}, ValueError, "`augmentation` is required with `views`"),
        ({"augmentation": "jitter"}, TypeError, "augmentation"),
        ({"augmentation": kd.augment.jitter(1)}, ValueError, "`views` is required"),
        ({"augmentation": kd.augment.jitter(1), "views": 0}, ValueError, "views"),
        ({"augmentation": kd.augment.jitter(1), "views": 1.5}, TypeError, "views"),
        ({"seed": 3}, ValueError, "Argument `seed`"),
        (
            {"augmentation": kd.augment.jitter(1), "views": 2, "seed": -1},
            ValueError,
            "seed",
        ),
    ],
)
def test_bad_view_arguments(images, kwargs, error, message):
    if kwargs.get("augmentation") == "jitter":
        kwargs = dict(kwargs, views=2)
    with pytest.raises(error, match=message):
        kd.data.with_teacher_outputs(_cnn(), images, **kwargs)


def test_live_augmentation_refuses_a_plain_cache_and_views_train_without_it(images):
    x, y = images
    teacher = _cnn()
    plain = kd.data.with_teacher_outputs(teacher, (x, y)).batch(16)
    augmenting = _distiller(teacher, _cnn("student"), augmentation=kd.augment.jitter(1))
    with pytest.raises(ValueError, match="stale targets for the view the student sees"):
        augmenting.fit(plain, epochs=1, verbose=0)
    views = _cached(teacher, (x, y)).batch(16)
    with pytest.raises(ValueError, match="augmentation"):
        augmenting.fit(views, epochs=1, verbose=0)
    history = _distiller(teacher, _cnn("student")).fit(views, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
