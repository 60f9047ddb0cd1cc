"""keras_kd.augment: MixUp's draws, the mixing and Jitter, against numpy."""

import numpy as np
import pytest

import keras_kd as kd
from keras_kd import augment
from keras_kd.backend import keras, tf


def np_shift(images, shifts):
    """Reference: pad each image with its edge pixels, then crop shifted."""
    p = int(np.abs(shifts).max()) + 1
    out = []
    for image, (dy, dx) in zip(images, shifts):
        padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge")
        h, w = image.shape[:2]
        out.append(padded[p - dy : p - dy + h, p - dx : p - dx + w])
    return np.stack(out)


def test_mixup_draws_lam_in_upper_half_and_a_permutation():
    m = augment.MixUp(alpha=0.4, seed=3)
    for step in range(5):
        lam, perm = m.sample(step, [7])
        assert 0.5 <= float(lam) <= 1.0
        assert sorted(perm.numpy().tolist()) == list(range(7))


def ks_distance(sample, reference):
    """Kolmogorov-Smirnov distance between two samples' CDFs (ties kept)."""
    sample, reference = np.sort(sample), np.sort(reference)
    distance = 0.0
    for side in ("right", "left"):
        f = np.searchsorted(sample, sample, side) / len(sample)
        g = np.searchsorted(reference, sample, side) / len(reference)
        distance = max(distance, np.abs(f - g).max())
    return distance


@pytest.mark.parametrize("alpha", [0.1, 0.4, 2.0])
def test_mixup_lam_follows_the_folded_beta_distribution(alpha):
    m = augment.MixUp(alpha=alpha, seed=0)

    @tf.function
    def sample(step):
        return m.sample(step, [2])[0]

    lams = np.array([float(sample(tf.constant(i, tf.int64))) for i in range(500)])
    reference = np.random.default_rng(0).beta(alpha, alpha, 200_000)
    reference = np.maximum(reference, 1 - reference).astype("float32")
    # 0.087: the Kolmogorov-Smirnov 1% critical value for 500 draws
    assert ks_distance(lams, reference) < 0.087
    assert lams.min() >= 0.5 and lams.max() <= 1.0
    uniform = np.random.default_rng(1).uniform(0.5, 1.0, 200_000)
    assert ks_distance(lams, uniform.astype("float32")) > 0.087  # can fail


def test_mixup_is_reproducible_by_seed_and_step():
    a, b, c = (augment.MixUp(0.3, seed=s) for s in (5, 5, 6))
    lam_a, perm_a = a.sample(4, [16])
    lam_b, perm_b = b.sample(tf.constant(4, tf.int64), [16])
    assert float(lam_a) == float(lam_b)
    np.testing.assert_array_equal(perm_a, perm_b)
    lam_next, perm_next = a.sample(5, [16])
    lam_c, perm_c = c.sample(4, [16])
    assert float(lam_next) != float(lam_a) and float(lam_c) != float(lam_a)
    assert not np.array_equal(perm_next, perm_a)


def test_unseeded_mixup_follows_keras_set_random_seed():
    keras.utils.set_random_seed(7)
    first = augment.MixUp(0.3).sample(0, [8])
    keras.utils.set_random_seed(7)
    second = augment.MixUp(0.3).sample(0, [8])
    assert float(first[0]) == float(second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_mixup_permutes_each_block_within_itself():
    lam, perm = augment.MixUp(1.0, seed=1).sample(0, [3, 5])
    perm = perm.numpy()
    assert sorted(perm[:3].tolist()) == [0, 1, 2]
    assert sorted(perm[3:].tolist()) == [3, 4, 5, 6, 7]


def test_mix_inputs_matches_numpy_for_every_input():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3)).astype("float32")
    b = rng.normal(size=(5, 2, 2)).astype("float32")
    perm = np.array([2, 0, 1, 4, 3])
    mixed = augment.mix_inputs({"a": a, "b": b}, 0.7, perm)
    np.testing.assert_allclose(mixed["a"], 0.7 * a + 0.3 * a[perm], rtol=1e-6)
    np.testing.assert_allclose(mixed["b"], 0.7 * b + 0.3 * b[perm], rtol=1e-6)


def test_mixup_call_returns_the_mixture_it_drew():
    x = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    mixed, lam, perm = augment.MixUp(0.5, seed=2)(x)
    lam, perm = float(lam), perm.numpy()
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], rtol=1e-5)


def test_mix_inputs_refuses_integer_inputs():
    with pytest.raises(TypeError, match="floating point.*int32"):
        augment.mix_inputs(tf.constant([[1, 2], [3, 4]]), 0.6, [1, 0])


def test_mixed_loss_weights_both_labels_with_lam():
    y = np.array([0, 1, 2, 1])
    logits = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    perm = np.array([1, 2, 3, 0])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    value = augment.mixed_loss(
        lambda t, p, w: ce(t, p, sample_weight=w), y, logits, 0.8, perm
    )
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = lambda labels: -log_p[np.arange(4), labels].mean()
    assert float(value) == pytest.approx(0.8 * nll(y) + 0.2 * nll(y[perm]), rel=1e-5)


def test_mixup_round_trips_through_its_config():
    m = augment.mixup(alpha=0.25, seed=9)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(m)
    )
    assert isinstance(restored, augment.MixUp)
    assert (restored.alpha, restored.seed) == (0.25, 9)
    assert float(restored.sample(3, [4])[0]) == float(m.sample(3, [4])[0])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"alpha": 0.0}, ValueError, r"`alpha` must be in \(0.0.*alpha=0.0"),
        ({"alpha": -1}, ValueError, "`alpha`.*alpha=-1"),
        ({"alpha": "0.2"}, TypeError, "`alpha`.*number.*alpha='0.2'"),
        ({"seed": -1}, ValueError, "`seed`.*at least 0.*seed=-1"),
        ({"seed": 1.5}, TypeError, "`seed`.*integer.*seed=1.5"),
    ],
)
def test_mixup_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        augment.MixUp(**kwargs)


def test_shift_images_matches_edge_padding_in_numpy():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 5, 6, 2)).astype("float32")
    shifts = np.array([[1, -2], [0, 0], [-2, 2], [2, 1]], np.int32)
    np.testing.assert_array_equal(
        augment.shift_images(images, shifts), np_shift(images, shifts)
    )


def test_jitter_shifts_by_at_most_pixels_and_only_in_training():
    images = np.random.default_rng(1).normal(size=(32, 6, 6, 1)).astype("float32")
    layer = augment.jitter(pixels=2, seed=0)
    np.testing.assert_array_equal(layer(images), images)  # inference
    out = layer(images, training=True).numpy()
    seen = set()
    for image, result in zip(images, out):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(np_shift(image[None], np.array([[dy, dx]]))[0], result)
        ]
        assert matches, "not a shift of at most 2 pixels with edge fill"
        seen.add(matches[0])
    assert len(seen) > 5  # the shifts vary from image to image


def test_jitter_inside_a_step_key_is_stateless():
    images = np.random.default_rng(2).normal(size=(8, 5, 5, 1)).astype("float32")
    layer = augment.Jitter(1, seed=4)
    runs = []
    for _ in range(2):
        x, _ = augment.transform_batch(images, layer, None, step=3)
        runs.append(x.numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    other, _ = augment.transform_batch(images, layer, None, step=4)
    assert not np.array_equal(other, runs[0])


def test_jitter_round_trips_in_a_saved_model(tmp_path):
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), kd.augment.Jitter(pixels=3, seed=2, name="jit")]
    )
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    layer = restored.get_layer("jit")
    assert isinstance(layer, augment.Jitter)
    assert (layer.pixels, layer.seed) == (3, 2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"pixels": 0}, ValueError, "`pixels`.*at least 1.*pixels=0"),
        ({"pixels": 1.0}, TypeError, "`pixels`.*integer.*pixels=1.0"),
    ],
)
def test_jitter_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        augment.Jitter(**kwargs)


def test_jitter_refuses_inputs_that_are_not_images():
    with pytest.raises(ValueError, match=r"Jitter shifts images.*\(4, 3\)"):
        augment.Jitter(1)(np.zeros((4, 3), "float32"), training=True)
