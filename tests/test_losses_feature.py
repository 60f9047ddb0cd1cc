"""Feature losses against numpy references written from their papers.

Each reference is float64 numpy built the way the paper states the formula
(explicit pairs and triplets for RKD, explicit unit vectors for cosines and
angles), not from the library's Gram-matrix or normalisation code paths.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from keras_kd.backend import keras

# --- numpy references ----------------------------------------------------------------


def features(seed, shape, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def np_feature_mse(t, s):
    """FitNets hint loss, mean over each sample's elements."""
    d = np.asarray(s, np.float64) - np.asarray(t, np.float64)
    return (d**2).reshape(len(d), -1).mean(1)


def np_cosine_distance(t, s, axis=-1):
    """1 - cos(s, t) of each feature vector along `axis`, mean per sample;
    a zero vector's cosine is 0."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    if axis is None:
        t, s, axis = t.reshape(len(t), -1), s.reshape(len(s), -1), -1
    t, s = np.moveaxis(t, axis, -1), np.moveaxis(s, axis, -1)
    out = []
    for tb, sb in zip(t, s):
        vectors = zip(tb.reshape(-1, tb.shape[-1]), sb.reshape(-1, sb.shape[-1]))
        cosines = []
        for u, v in vectors:
            norms = np.linalg.norm(u) * np.linalg.norm(v)
            cosines.append(0.0 if norms == 0 else u @ v / norms)
        out.append(np.mean(1 - np.array(cosines)))
    return np.array(out)


def np_attention_transfer(t, s, p=2.0):
    """Zagoruyko & Komodakis: Q = mean_c |A|^p, flattened, L2-normalised;
    mean over positions of (Q_s - Q_t)^2."""

    def attention(a):
        q = (np.abs(np.asarray(a, np.float64)) ** p).mean(-1).reshape(len(a), -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    return ((attention(s) - attention(t)) ** 2).mean(1)


def np_huber(x):
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def np_rkd_terms(t, s, weights=None):
    """Park et al. 2019, from the definitions: (distance term, angle term),
    pairs weighted w_i w_j and triplets w_i w_j w_k."""
    t = np.asarray(t, np.float64).reshape(len(t), -1)
    s = np.asarray(s, np.float64).reshape(len(s), -1)
    n = len(t)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    pw = np.array([w[i] * w[j] for i, j in pairs])

    def distances(e):
        d = np.array([np.linalg.norm(e[i] - e[j]) for i, j in pairs])
        return d / (np.sum(pw * d) / np.sum(pw))

    distance = 0.0
    if pw.sum() > 0:
        diff = np_huber(distances(s) - distances(t))
        distance = np.sum(pw * diff) / pw.sum()

    def angle(e, i, j, k):
        u, v = e[i] - e[j], e[k] - e[j]
        return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))

    triplets = list(itertools.permutations(range(n), 3))
    tw = np.array([w[i] * w[j] * w[k] for i, j, k in triplets])
    angle_term = 0.0
    if triplets and tw.sum() > 0:
        diff = np.array([angle(s, *ijk) - angle(t, *ijk) for ijk in triplets])
        angle_term = np.sum(tw * np_huber(diff)) / tw.sum()
    return distance, angle_term


def np_rkd(t, s, distance_weight=25.0, angle_weight=50.0, weights=None):
    """RKD with Keras's default reduction: mean_i w_i * batch loss."""
    distance, angle = np_rkd_terms(t, s, weights)
    batch = distance_weight * distance + angle_weight * angle
    return batch * (1.0 if weights is None else np.mean(weights))


def probabilities(seed, shape, scale=2.0):
    z = features(seed, shape, scale).astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


def np_attention_rows(t, s, mode="kl", heads="mean"):
    """Per (sample, query) row loss, heads averaged (mean) or per head."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    if heads == "mean":
        t, s = t.mean(1, keepdims=True), s.mean(1, keepdims=True)
    if mode == "kl":
        clip = lambda p: np.clip(p, 1e-7, 1.0)
        rows = (t * np.log(clip(t) / clip(s))).sum(-1)
    else:
        rows = ((s - t) ** 2).mean(-1)
    return rows.mean(1)  # (batch, queries)


def per_sample(loss, t, s, **kwargs):
    """The loss's per-sample values (reduction="none")."""
    config = {**loss.get_config(), "reduction": "none"}
    return np.asarray(type(loss).from_config(config)(t, s, **kwargs))


# --- FeatureMSE and CosineDistance ---------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (4, 7, 6), (4, 9)])
def test_feature_mse_matches_numpy_per_sample(shape):
    t, s = features(0, shape), features(1, shape)
    loss = kd.losses.FeatureMSE()
    np.testing.assert_allclose(per_sample(loss, t, s), np_feature_mse(t, s), rtol=1e-5)
    assert float(loss(t, s)) == pytest.approx(np_feature_mse(t, s).mean(), rel=1e-5)


def test_feature_mse_sample_weights_weight_samples_and_zero_removes_one():
    t, s = features(2, (4, 3, 3, 2)), features(3, (4, 3, 3, 2))
    w = np.array([0.0, 1.0, 2.0, 0.5], "float32")
    got = float(kd.losses.FeatureMSE()(t, s, sample_weight=w))
    assert got == pytest.approx(np.mean(w * np_feature_mse(t, s)), rel=1e-5)
    changed = s.copy()
    changed[0] += 100.0  # a sample of weight 0 does not count
    assert float(kd.losses.FeatureMSE()(t, changed, sample_weight=w)) == pytest.approx(
        got, rel=1e-5
    )


@pytest.mark.parametrize(
    "shape, axis",
    [((3, 4, 4, 5), -1), ((3, 6, 5), -1), ((3, 6, 5), 1), ((3, 4, 4, 5), None)],
)
def test_cosine_distance_matches_numpy(shape, axis):
    t, s = features(4, shape), features(5, shape)
    loss = kd.losses.CosineDistance(axis=axis)
    np.testing.assert_allclose(
        per_sample(loss, t, s), np_cosine_distance(t, s, axis), rtol=1e-5, atol=1e-6
    )


def test_cosine_distance_ignores_scale_and_gives_one_for_a_zero_vector():
    t = features(6, (2, 3, 4))
    loss = kd.losses.CosineDistance()
    assert abs(float(loss(t, 7.0 * t))) < 1e-6
    s = tf.Variable(np.concatenate([t[:, :2], np.zeros((2, 1, 4), "float32")], 1))
    with tf.GradientTape() as tape:
        value = loss(t, s, sample_weight=[1.0, 1.0])
    expected = np_cosine_distance(t, s.numpy()).mean()
    assert float(value) == pytest.approx(expected, rel=1e-5)  # zero rows give 1
    assert np.all(np.isfinite(tape.gradient(value, s)))


def test_equal_shape_losses_reject_different_widths_naming_both_shapes():
    t, s = features(7, (2, 4, 4, 8)), features(8, (2, 4, 4, 3))
    for loss in (kd.losses.FeatureMSE(), kd.losses.CosineDistance()):
        with pytest.raises(
            ValueError, match=r"equal shape.*\(2, 4, 4, 8\).*\(2, 4, 4, 3\)"
        ):
            loss(t, s)


# --- AttentionTransfer ---------------------------------------------------------------


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
@pytest.mark.parametrize(
    "t_shape, s_shape", [((3, 5, 4, 8), (3, 5, 4, 8)), ((3, 6, 16), (3, 6, 4))]
)
def test_attention_transfer_matches_numpy_any_channels(p, t_shape, s_shape):
    t, s = features(9, t_shape), features(10, s_shape)
    loss = kd.losses.AttentionTransfer(p=p)
    np.testing.assert_allclose(
        per_sample(loss, t, s), np_attention_transfer(t, s, p), rtol=1e-4, atol=1e-7
    )
    w = np.array([1.0, 0.0, 3.0], "float32")
    expected = np.mean(w * np_attention_transfer(t, s, p))
    assert float(loss(t, s, sample_weight=w)) == pytest.approx(expected, rel=1e-4)


def test_attention_transfer_zero_student_map_is_finite():
    t = features(11, (2, 3, 3, 4))
    s = tf.Variable(np.zeros((2, 3, 3, 2), "float32"))
    with tf.GradientTape() as tape:
        value = kd.losses.AttentionTransfer()(t, s)
    q = (t.astype(np.float64) ** 2).mean(-1).reshape(2, -1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    assert float(value) == pytest.approx((q**2).mean(), rel=1e-5)  # Q_s = 0
    assert np.all(np.isfinite(tape.gradient(value, s)))


def test_attention_transfer_needs_equal_spatial_sizes_and_spatial_axes():
    loss = kd.losses.AttentionTransfer()
    with pytest.raises(
        ValueError, match=r"spatial sizes.*\(2, 4, 4, 8\).*\(2, 2, 2, 8\)"
    ):
        loss(features(0, (2, 4, 4, 8)), features(1, (2, 2, 2, 8)))
    with pytest.raises(ValueError, match=r"needs spatial features.*\(2, 8\)"):
        loss(features(0, (2, 8)), features(1, (2, 8)))


# --- RelationalKD --------------------------------------------------------------------


@pytest.mark.parametrize(
    "t_shape, s_shape",
    [((7, 12), (7, 12)), ((6, 3, 3, 4), (6, 5)), ((5, 4, 6), (5, 3))],
)
def test_relational_kd_matches_numpy_any_widths(t_shape, s_shape):
    t, s = features(12, t_shape, 2.0), features(13, s_shape)
    got = kd.losses.RelationalKD(distance_weight=2.0, angle_weight=3.0)(t, s)
    assert float(got) == pytest.approx(np_rkd(t, s, 2.0, 3.0), rel=1e-4)
    distance, angle = np_rkd_terms(t, s)
    assert distance > 1e-3 and angle > 1e-3  # both terms are exercised
    only_angle = kd.losses.RelationalKD(distance_weight=0.0, angle_weight=1.0)(t, s)
    assert float(only_angle) == pytest.approx(angle, rel=1e-4)


def test_relational_kd_sample_weights_weight_pairs_and_triplets():
    t, s = features(14, (7, 6)), features(15, (7, 4))
    w = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 0.0, 3.0], "float32")
    loss = kd.losses.RelationalKD(distance_weight=1.0, angle_weight=2.0)
    got = float(loss(t, s, sample_weight=w))
    assert got == pytest.approx(np_rkd(t, s, 1.0, 2.0, weights=w), rel=1e-4)
    keep = w > 0  # weight 0 removes a sample altogether
    dropped = np_rkd(t[keep], s[keep], 1.0, 2.0, weights=w[keep]) * keep.mean()
    assert got == pytest.approx(dropped, rel=1e-4)
    assert float(loss(t, s, sample_weight=3 * w)) == pytest.approx(3 * got, rel=1e-5)


def test_relational_kd_reduction_none_repeats_the_batch_loss():
    t, s = features(16, (5, 6)), features(17, (5, 6))
    values = per_sample(kd.losses.RelationalKD(), t, s)
    np.testing.assert_allclose(values, np.full(5, np_rkd(t, s)), rtol=1e-4)


def test_relational_kd_with_fewer_than_three_samples():
    # No triplet: the angle term is 0. With 2 samples the one normalised
    # distance is 1 in both models, so the distance term is 0 as well.
    t, s = features(18, (4, 5)), features(19, (4, 5))
    loss = kd.losses.RelationalKD()
    for n in (1, 2):
        variable = tf.Variable(s[:n])
        with tf.GradientTape() as tape:
            value = loss(t[:n], variable)
        assert float(value) == 0.0 and np.all(
            np.isfinite(tape.gradient(value, variable))
        )
    assert np_rkd(t[:2], s[:2]) == pytest.approx(0.0, abs=1e-12)
    angle_only = kd.losses.RelationalKD(distance_weight=0.0, angle_weight=1.0)
    two = np.array([0.0, 1.0, 0.0, 2.0], "float32")  # 2 samples of positive weight
    assert float(angle_only(t, s, sample_weight=two)) == 0.0
    three = np.array([1.0, 1.0, 0.0, 1.0], "float32")
    value = float(angle_only(t, s, sample_weight=three))
    assert value == pytest.approx(np_rkd(t, s, 0.0, 1.0, weights=three), rel=1e-4)
    assert value > 0


def test_relational_kd_documented_relation_to_the_authors_averaging():
    # lenscloth/RKD averages over all B^2 pairs and B^3 triplets (degenerate
    # ones give 0); the docstring states the factors between the two.
    t, s = features(20, (6, 5)), features(21, (6, 7))
    n = 6
    distance, angle = np_rkd_terms(t, s)
    te, se = t.astype(np.float64), s.astype(np.float64)

    def pdist(e):
        return np.linalg.norm(e[:, None] - e[None], axis=-1)

    dt, ds = pdist(te), pdist(se)
    dt, ds = dt / dt[dt > 0].mean(), ds / ds[ds > 0].mean()
    assert np_huber(ds - dt).mean() == pytest.approx(distance * (n - 1) / n, rel=1e-9)

    def angles(e):
        d = e[None, :, :] - e[:, None, :]  # d[a, b] = e_b - e_a
        norm = np.linalg.norm(d, axis=-1, keepdims=True)
        u = np.divide(d, norm, out=np.zeros_like(d), where=norm > 0)
        return np.einsum("abc,adc->abd", u, u)

    reference = np_huber(angles(se) - angles(te)).mean()
    assert reference == pytest.approx(angle * (n - 1) * (n - 2) / n**2, rel=1e-9)


def test_relational_kd_is_invariant_to_the_geometry_preserving_maps():
    t = features(22, (6, 8))
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
    s = (3.0 * t @ rotation + 5.0).astype("float32")
    assert abs(float(kd.losses.RelationalKD()(t, s))) < 1e-4


def test_relational_kd_duplicate_and_zero_features_have_finite_gradients():
    t = features(23, (5, 4))
    s = np.zeros((5, 3), "float32")  # a dead student: all samples coincide
    s[3:] = 1.0  # two groups of duplicates
    s = tf.Variable(s)
    with tf.GradientTape() as tape:
        value = kd.losses.RelationalKD()(t, s)
    assert np.isfinite(float(value)) and float(value) > 0
    assert np.all(np.isfinite(tape.gradient(value, s)))


# --- AttentionMapLoss ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["kl", "mse"])
def test_attention_map_mean_heads_matches_numpy_with_different_head_counts(mode):
    t, s = probabilities(24, (3, 4, 5, 6)), probabilities(25, (3, 2, 5, 6))
    loss = kd.losses.AttentionMapLoss(mode=mode)
    expected = np_attention_rows(t, s, mode).mean(-1)
    np.testing.assert_allclose(per_sample(loss, t, s), expected, rtol=1e-5)
    assert float(loss(t, s)) == pytest.approx(expected.mean(), rel=1e-5)


@pytest.mark.parametrize("mode", ["kl", "mse"])
def test_attention_map_per_head_matches_numpy(mode):
    t, s = probabilities(26, (3, 2, 4, 4)), probabilities(27, (3, 2, 4, 4))
    loss = kd.losses.AttentionMapLoss(mode=mode, heads="map")
    expected = np_attention_rows(t, s, mode, heads="map").mean(-1)
    np.testing.assert_allclose(per_sample(loss, t, s), expected, rtol=1e-5)
    # comparing head by head is not comparing the averages
    assert not np.allclose(expected, np_attention_rows(t, s, mode).mean(-1), rtol=0.05)


def test_attention_map_per_head_rejects_different_head_counts():
    loss = kd.losses.AttentionMapLoss(heads="map")
    with pytest.raises(
        ValueError, match=r'heads="map".*\(2, 4, 5, 5\).*\(2, 2, 5, 5\)'
    ):
        loss(probabilities(0, (2, 4, 5, 5)), probabilities(1, (2, 2, 5, 5)))
    with pytest.raises(
        ValueError, match=r"queries and keys.*\(2, 2, 5, 5\).*\(2, 2, 5, 4\)"
    ):
        kd.losses.AttentionMapLoss()(
            probabilities(0, (2, 2, 5, 5)), probabilities(1, (2, 2, 5, 4))
        )


def test_padded_queries_contribute_no_loss_and_the_mean_is_over_real_rows():
    t, s = probabilities(28, (3, 2, 5, 5)), probabilities(29, (3, 2, 5, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], "float32")
    loss = kd.losses.AttentionMapLoss()
    rows = np_attention_rows(t, s)
    expected = np.array([rows[0].mean(), rows[1, :3].mean(), 0.0])
    np.testing.assert_allclose(
        per_sample(loss, t, s, sample_weight=mask), expected, rtol=1e-5
    )
    assert float(loss(t, s, sample_weight=mask)) == pytest.approx(expected.mean())
    changed = s.copy()
    changed[1, :, 3:] = probabilities(30, (2, 2, 5))  # padded rows: no change
    assert float(loss(t, changed, sample_weight=mask)) == pytest.approx(
        float(loss(t, s, sample_weight=mask)), rel=1e-6
    )


def test_attention_map_per_sample_weights_equal_a_constant_mask():
    t, s = probabilities(31, (3, 2, 4, 4)), probabilities(32, (3, 2, 4, 4))
    w = np.array([0.0, 1.0, 2.5], "float32")
    loss = kd.losses.AttentionMapLoss(mode="mse")
    expected = np.mean(w * np_attention_rows(t, s, "mse").mean(-1))
    for weight in (w, w[:, None], np.repeat(w[:, None], 4, 1)):
        assert float(loss(t, s, sample_weight=weight)) == pytest.approx(
            expected, rel=1e-5
        )
    with pytest.raises(ValueError, match=r"`sample_weight`.*query mask"):
        loss(t, s, sample_weight=np.ones((3, 4, 1, 1)))


def test_attention_map_on_multi_head_attention_scores():
    x = features(33, (2, 6, 8))
    big = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4)
    small = keras.layers.MultiHeadAttention(num_heads=1, key_dim=2)
    _, t = big(x, x, return_attention_scores=True)
    _, s = small(x, x, return_attention_scores=True)
    got = kd.losses.AttentionMapLoss()(t, s)
    expected = np_attention_rows(np.asarray(t), np.asarray(s)).mean()
    assert float(got) == pytest.approx(expected, rel=1e-5)


# --- all of them: precision, XLA, config, Keras integration --------------------------


def cases():
    """(loss, teacher, student, sample_weight) for each loss."""
    w = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 1.0], "float32")
    four = features(40, (6, 4, 4, 8))
    return [
        (kd.losses.FeatureMSE(), four, features(41, (6, 4, 4, 8)), w),
        (kd.losses.CosineDistance(), four, features(42, (6, 4, 4, 8)), w),
        (kd.losses.CosineDistance(axis=None), four, features(42, (6, 4, 4, 8)), w),
        (kd.losses.AttentionTransfer(), four, features(43, (6, 4, 4, 3)), w),
        (kd.losses.RelationalKD(), four, features(44, (6, 10)), w),
        (
            kd.losses.AttentionMapLoss(),
            probabilities(45, (6, 4, 5, 5)),
            probabilities(46, (6, 2, 5, 5)),
            (np.arange(30).reshape(6, 5) % 4 > 0).astype("float32"),
        ),
    ]


IDS = ["mse", "cosine", "cosine_flat", "at", "rkd", "attention_map"]


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_float16_features_give_a_float32_loss_computed_in_float32(index):
    loss, t, s, w = cases()[index]
    t16, s16 = t.astype("float16"), s.astype("float16")
    value = loss(t16, s16, sample_weight=w)
    assert value.dtype == tf.float32
    # cast first: the same value as from the float16 numbers held in float32
    cast = loss(t16.astype("float32"), s16.astype("float32"), sample_weight=w)
    assert float(value) == pytest.approx(float(cast), rel=1e-6)
    keras.mixed_precision.set_global_policy("mixed_float16")
    assert loss(t, s, sample_weight=w).dtype == tf.float32


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_jit_compiled_value_and_gradient_equal_eager(index):
    loss, t, s, w = cases()[index]

    def value_and_gradient(a, b, c):
        with tf.GradientTape() as tape:
            tape.watch(b)
            value = loss(a, b, sample_weight=c)
        return value, tape.gradient(value, b)

    compiled = tf.function(value_and_gradient, jit_compile=True)
    args = [tf.constant(v) for v in (t, s, w)]
    eager_value, eager_gradient = value_and_gradient(*args)
    value, gradient = compiled(*args)
    assert float(eager_value) > 0
    assert float(value) == pytest.approx(float(eager_value), rel=1e-4)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0
    np.testing.assert_allclose(gradient, eager_gradient, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_no_gradient_flows_into_the_teacher_feature(index):
    loss, t, s, w = cases()[index]
    t = tf.Variable(t)
    with tf.GradientTape() as tape:
        value = loss(t, s, sample_weight=w)
    assert float(value) > 0 and tape.gradient(value, t) is None


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_config_round_trips_and_keras_serialization(index):
    loss, t, s, w = cases()[index]
    restored = type(loss).from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()
    serialized = keras.losses.serialize(loss)
    assert serialized["registered_name"] == f"keras_kd>{type(loss).__name__}"
    again = keras.losses.deserialize(serialized)
    assert type(again) is type(loss) and again.get_config() == loss.get_config()
    assert float(again(t, s, sample_weight=w)) == pytest.approx(
        float(loss(t, s, sample_weight=w)), rel=1e-6
    )


def test_configs_keep_their_arguments():
    losses = [
        kd.losses.CosineDistance(axis=2, name="c"),
        kd.losses.AttentionTransfer(p=3, reduction="sum"),
        kd.losses.RelationalKD(distance_weight=1, angle_weight=0),
        kd.losses.AttentionMapLoss(mode="mse", heads="map"),
    ]
    expected = [
        {"axis": 2, "name": "c"},
        {"p": 3.0, "reduction": "sum"},
        {"distance_weight": 1.0, "angle_weight": 0.0},
        {"mode": "mse", "heads": "map"},
    ]
    for loss, part in zip(losses, expected):
        assert part.items() <= loss.get_config().items()
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert part.items() <= restored.get_config().items()


def test_width_agnostic_class_attributes():
    expected = {
        kd.losses.FeatureMSE: False,
        kd.losses.CosineDistance: False,
        kd.losses.AttentionTransfer: True,
        kd.losses.RelationalKD: True,
        kd.losses.AttentionMapLoss: True,
    }
    for cls, agnostic in expected.items():
        assert cls.width_agnostic is agnostic, cls.__name__
        assert cls().width_agnostic is agnostic


@pytest.mark.parametrize("make", [kd.losses.RelationalKD, kd.losses.FeatureMSE])
def test_usable_in_a_plain_keras_model_on_precomputed_teacher_features(make):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    teacher_features = np.tanh(x @ rng.normal(size=(6, 6))).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=make())
    before = model.evaluate(x, teacher_features, batch_size=16, verbose=0)
    model.fit(x, teacher_features, epochs=15, batch_size=16, verbose=0)
    after = model.evaluate(x, teacher_features, batch_size=16, verbose=0)
    assert after < 0.5 * before


# --- get_feature_loss and argument errors --------------------------------------------


@pytest.mark.parametrize(
    "name, cls",
    [
        ("mse", kd.losses.FeatureMSE),
        ("feature_mse", kd.losses.FeatureMSE),
        ("cosine", kd.losses.CosineDistance),
        ("cosine_distance", kd.losses.CosineDistance),
        ("attention_transfer", kd.losses.AttentionTransfer),
        ("at", kd.losses.AttentionTransfer),
        ("relational", kd.losses.RelationalKD),
        ("rkd", kd.losses.RelationalKD),
        ("attention_map", kd.losses.AttentionMapLoss),
    ],
)
def test_get_feature_loss_by_name(name, cls):
    loss = kd.losses.get_feature_loss(name)
    assert type(loss) is cls
    assert loss.get_config() == cls().get_config()


def test_get_feature_loss_instances_configs_and_functions():
    loss = kd.losses.AttentionTransfer(p=3.0)
    assert kd.losses.get_feature_loss(loss) is loss
    restored = kd.losses.get_feature_loss(keras.losses.serialize(loss))
    assert type(restored) is kd.losses.AttentionTransfer and restored.p == 3.0
    wrapped = kd.losses.get_feature_loss(lambda t, s: tf.reduce_sum(tf.abs(s - t), -1))
    assert isinstance(wrapped, keras.losses.Loss)
    assert getattr(wrapped, "width_agnostic", False) is False
    t, s = features(50, (3, 4)), features(51, (3, 4))
    w = np.array([1.0, 0.0, 2.0], "float32")
    expected = np.mean(w * np.abs(s - t).sum(-1))
    assert float(wrapped(t, s, sample_weight=w)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("hinton", ValueError, r"`loss` names no feature loss.*loss='hinton'.*'rkd'"),
        (3, TypeError, r"`loss` must be a `keras.losses.Loss`.*loss=3 of type int"),
        (None, TypeError, r"`loss`.*loss=None"),
        (kd.losses.FeatureMSE, TypeError, r"`loss`.*FeatureMSE.*of type type"),
        ({"class_name": "Nope", "config": {}}, ValueError, r"`loss` is a config"),
    ],
)
def test_get_feature_loss_errors_name_the_argument_and_value(bad, error, match):
    with pytest.raises(error, match=match):
        kd.losses.get_feature_loss(bad)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: kd.losses.AttentionTransfer(p=0.5), ValueError, r"`p`.*\[1.0.*p=0.5"),
        (lambda: kd.losses.AttentionTransfer(p="2"), TypeError, r"`p`.*p='2'"),
        (lambda: kd.losses.CosineDistance(axis=0), ValueError, r"`axis` cannot be 0"),
        (lambda: kd.losses.CosineDistance(axis=1.5), TypeError, r"`axis`.*axis=1.5"),
        (
            lambda: kd.losses.RelationalKD(distance_weight=-1),
            ValueError,
            r"`distance_weight`.*distance_weight=-1",
        ),
        (
            lambda: kd.losses.RelationalKD(distance_weight=0, angle_weight=0),
            ValueError,
            r"`distance_weight`, `angle_weight` cannot all be 0",
        ),
        (lambda: kd.losses.AttentionMapLoss(mode="js"), ValueError, r"`mode`.*'js'"),
        (lambda: kd.losses.AttentionMapLoss(heads=1), TypeError, r"`heads`.*heads=1"),
    ],
)
def test_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_cosine_axis_must_exist_in_the_features():
    with pytest.raises(ValueError, match=r"`axis`.*rank 3.*axis=5"):
        kd.losses.CosineDistance(axis=5)(features(0, (2, 3, 4)), features(1, (2, 3, 4)))
