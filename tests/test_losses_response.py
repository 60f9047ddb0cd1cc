"""DIST, standardized KL / soft cross-entropy and DecoupledKD against numpy.

Each reference below is written from its paper in float64 numpy, without
the library's code paths: Pearson correlations by `np.corrcoef` / `np.cov`,
DKD's parts from the probabilities themselves.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from conftest import (
    np_dist,
    np_dist_parts,
    np_dkd,
    np_dkd_parts,
    np_kl,
    np_log_softmax,
    np_pearson,
    np_softmax,
    np_standardize,
)
from keras_kd.backend import keras


def logits(seed, shape=(12, 5), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def gradient(loss, t, s, **kwargs):
    s = tf.Variable(s)
    with tf.GradientTape() as tape:
        value = loss(t, s, **kwargs)
    return value, tape.gradient(value, s)


# --- DIST ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_inter_class_term_alone_matches_numpy(temperature):
    t, s = logits(0), logits(1)
    got = kd.losses.DIST(temperature, beta=1.0, gamma=0.0)(t, s)
    expected = np_dist(t, s, temperature, beta=1.0, gamma=0.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_intra_class_term_alone_matches_numpy(temperature):
    t, s = logits(2), logits(3)
    got = kd.losses.DIST(temperature, beta=0.0, gamma=1.0)(t, s)
    expected = np_dist(t, s, temperature, beta=0.0, gamma=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_dist_weights_both_terms_as_the_paper():
    t, s = logits(4), logits(5)
    got = kd.losses.DIST(temperature=2.0, beta=0.5, gamma=3.0)(t, s)
    inter, intra = np_dist_parts(t, s, 2.0)
    expected = 4.0 * (0.5 * inter.mean() + 3.0 * intra)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert 0.5 * inter.mean() != pytest.approx(3.0 * intra, rel=0.1)  # both matter


def test_dist_is_zero_when_the_student_agrees_and_not_otherwise():
    t = logits(6)
    assert abs(float(kd.losses.DIST()(t, t))) < 1e-6
    assert float(kd.losses.DIST()(t, logits(7))) > 0.1


def test_dist_sample_weights_weight_the_batch_statistics_and_each_share():
    t, s = logits(8), logits(9)
    w = np.linspace(0.0, 2.0, len(t)).astype("float32")
    got = kd.losses.DIST(temperature=2.0)(t, s, sample_weight=w)
    assert float(got) == pytest.approx(np_dist(t, s, 2.0, weights=w), rel=1e-5)
    # a sample of weight 0 counts in neither term: as if it were not there
    keep = w > 0
    without = np_dist(t[keep], s[keep], 2.0, weights=w[keep]) * keep.mean()
    assert float(got) == pytest.approx(without, rel=1e-5)


def test_dist_scaling_every_weight_scales_the_loss():
    t, s = logits(10), logits(11)
    w = np.random.default_rng(0).uniform(0.5, 1.5, len(t)).astype("float32")
    loss = kd.losses.DIST(temperature=3.0)
    once = float(loss(t, s, sample_weight=w))
    assert float(loss(t, s, sample_weight=3 * w)) == pytest.approx(3 * once, rel=1e-5)
    assert float(loss(t, s, sample_weight=np.ones(len(t)))) == pytest.approx(
        float(loss(t, s)), rel=1e-6
    )


def test_dist_reduction_none_gives_each_sample_an_equal_share_of_the_batch_term():
    t, s = logits(12), logits(13)
    per = kd.losses.DIST(temperature=2.0, beta=1.0, gamma=2.0, reduction="none")(t, s)
    inter, intra = np_dist_parts(t, s, 2.0)
    np.testing.assert_allclose(per, 4.0 * (inter + 2.0 * intra), rtol=1e-5)
    total = kd.losses.DIST(temperature=2.0, beta=1.0, gamma=2.0, reduction="sum")
    assert float(total(t, s)) == pytest.approx(float(np.sum(per)), rel=1e-5)


def test_dist_single_sample_batch_has_no_intra_class_term_and_finite_gradient():
    t, s = logits(14, (1, 5)), logits(15, (1, 5))
    value, grad = gradient(kd.losses.DIST(), t, s)
    inter = 1 - np_pearson(np_softmax(s[0]), np_softmax(t[0]))
    assert float(value) == pytest.approx(inter, rel=1e-5)
    assert np.all(np.isfinite(grad))
    # one sample of positive weight is a batch of one too
    t2, s2 = logits(16, (4, 5)), logits(17, (4, 5))
    only = kd.losses.DIST(beta=0.0)(t2, s2, sample_weight=np.array([0, 0, 1.0, 0]))
    assert float(only) == 0.0


def test_dist_uniform_student_gives_finite_values_and_gradients():
    # a zero-initialised last layer predicts the uniform distribution
    t, s = logits(18), np.zeros((12, 5), "float32")
    value, grad = gradient(kd.losses.DIST(standardize=True), t, s)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_dist_sequence_outputs_correlate_every_position_of_the_batch():
    t, s = logits(19, (3, 4, 6)), logits(20, (3, 4, 6))
    got = kd.losses.DIST(temperature=2.0)(t, s)
    expected = np_dist(t.reshape(-1, 6), s.reshape(-1, 6), 2.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    w = np.array([[1.0], [0.0], [3.0]], "float32")  # one weight per sequence
    got = kd.losses.DIST(temperature=2.0)(t, s, sample_weight=w)
    expected = np_dist(t.reshape(-1, 6), s.reshape(-1, 6), 2.0, weights=np.repeat(w, 4))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_dist_with_standardize_correlates_the_standardized_distributions():
    t, s = logits(21), logits(22)
    got = kd.losses.DIST(temperature=2.0, standardize=True)(t, s)
    expected = np_dist(np_standardize(t), np_standardize(s), 2.0)
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_dist_probability_teacher_gives_the_same_loss_as_its_logits():
    t, s = logits(23), logits(24)
    probs = np_softmax(t).astype("float32")
    from_probs = kd.losses.DIST(temperature=2.0, teacher_from_logits=False)
    assert float(from_probs(probs, s)) == pytest.approx(
        float(kd.losses.DIST(temperature=2.0)(t, s)), rel=1e-4
    )


# --- standardized KL and soft cross-entropy ------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_standardized_kl_matches_numpy(temperature):
    t, s = logits(30), logits(31)
    got = kd.losses.KLDivergence(temperature, standardize=True)(t, s)
    expected = np_kl(np_standardize(t), np_standardize(s), temperature)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # and it is not the plain loss
    assert expected != pytest.approx(np_kl(t, s, temperature), rel=0.05)


def test_standardized_kl_ignores_the_scale_and_shift_of_each_logit_vector():
    t, s = logits(32), logits(33)
    loss = kd.losses.KLDivergence(2.0, standardize=True)
    base = float(loss(t, s))
    assert float(loss(t, 7.0 * s + 3.0)) == pytest.approx(base, rel=1e-4)
    assert float(loss(0.1 * t - 2.0, s)) == pytest.approx(base, rel=1e-4)
    assert abs(float(loss(t, 5.0 * t))) < 1e-5


def test_standardized_soft_target_cross_entropy_matches_numpy():
    t, s = logits(34), logits(35)
    got = kd.losses.SoftTargetCrossEntropy(3.0, standardize=True)(t, s)
    lt = np_log_softmax(np_standardize(t) / 3.0)
    ls = np_log_softmax(np_standardize(s) / 3.0)
    expected = (-(np.exp(lt) * ls).sum(-1) * 9.0).mean()
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_standardized_kl_of_a_probability_teacher_matches_its_logits():
    t, s = logits(36), logits(37)
    probs = np_softmax(t).astype("float32")
    from_probs = kd.losses.KLDivergence(
        2.0, teacher_from_logits=False, standardize=True
    )
    assert float(from_probs(probs, s)) == pytest.approx(
        np_kl(np_standardize(t), np_standardize(s), 2.0), rel=1e-4
    )


def test_standardized_kl_has_finite_gradients_for_a_constant_student():
    value, grad = gradient(
        kd.losses.KLDivergence(2.0, standardize=True),
        logits(38),
        np.zeros((12, 5), "float32"),
    )
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "cls", [kd.losses.KLDivergence, kd.losses.SoftTargetCrossEntropy]
)
def test_configs_without_standardize_still_load(cls):
    # as keras-kd 0.1 saved them
    old = {
        "name": "x",
        "reduction": "sum_over_batch_size",
        "temperature": 3.0,
        "teacher_from_logits": True,
        "student_from_logits": True,
    }
    loss = cls.from_config(old)
    assert loss.standardize is False and loss.temperature == 3.0
    restored = keras.losses.deserialize(
        keras.losses.serialize(cls(2.0, standardize=True))
    )
    assert restored.standardize is True


# --- DecoupledKD ---------------------------------------------------------------------


def labels_for(t, seed=0):
    return np.random.default_rng(seed).integers(0, t.shape[-1], len(t))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_target_class_part_alone_matches_numpy(temperature):
    t, s = logits(40), logits(41)
    y = labels_for(t)
    loss = kd.losses.DecoupledKD(temperature, target_weight=2.0, non_target_weight=0)
    expected = np_dkd(t, s, y, temperature, 2.0, 0.0)
    assert float(loss(t, s, labels=y)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_non_target_part_alone_matches_numpy(temperature):
    t, s = logits(42), logits(43)
    y = labels_for(t)
    loss = kd.losses.DecoupledKD(temperature, target_weight=0, non_target_weight=3.0)
    expected = np_dkd(t, s, y, temperature, 0.0, 3.0)
    assert float(loss(t, s, labels=y)) == pytest.approx(expected, rel=1e-5)


def test_dkd_defaults_match_numpy_and_the_paper_decomposition_of_kd():
    t, s = logits(44), logits(45)
    y = labels_for(t)
    assert float(kd.losses.DecoupledKD()(t, s, labels=y)) == pytest.approx(
        np_dkd(t, s, y), rel=1e-5
    )
    # Zhao et al., Eq. 7: KD = TCKD + (1 - p_target) * NCKD, per sample
    per = kd.losses.DecoupledKD(2.0, 1.0, 1.0, reduction="none")
    tckd = kd.losses.DecoupledKD(2.0, 1.0, 0.0, reduction="none")(t, s, labels=y)
    nckd = np.asarray(per(t, s, labels=y)) - np.asarray(tckd)
    p_target = np_softmax(t, 2.0)[np.arange(len(y)), y]
    kl = kd.losses.KLDivergence(2.0, reduction="none")(t, s)
    np.testing.assert_allclose(tckd + (1 - p_target) * nckd, kl, rtol=1e-4)


def test_dkd_labels_may_be_sparse_column_or_one_hot():
    t, s = logits(46), logits(47)
    y = labels_for(t)
    loss = kd.losses.DecoupledKD()
    expected = np_dkd(t, s, y)
    for labels in (y, y[:, None], np.eye(5)[y], y.astype("float32")):
        assert float(loss(t, s, labels=labels)) == pytest.approx(expected, rel=1e-5)


def test_dkd_without_labels_uses_the_teachers_top_class():
    t, s = logits(48), logits(49)
    top = np.argmax(t, -1)
    got = float(kd.losses.DecoupledKD()(t, s))
    assert got == pytest.approx(np_dkd(t, s, top), rel=1e-5)
    y = (top + 1) % 5  # a different class must give a different loss
    assert got != pytest.approx(np_dkd(t, s, y), rel=1e-2)


def test_dkd_sample_weights_and_sequence_outputs():
    t, s = logits(50, (3, 4, 5)), logits(51, (3, 4, 5))
    y = np.random.default_rng(1).integers(0, 5, (3, 4))
    w = np.array([[0.0], [1.0], [2.0]], "float32")  # one per sequence
    got = kd.losses.DecoupledKD(2.0)(t, s, sample_weight=w, labels=y)
    tckd, nckd = np_dkd_parts(t.reshape(-1, 5), s.reshape(-1, 5), y.ravel(), 2.0)
    per = 4.0 * (tckd + 8.0 * nckd) * np.repeat(w, 4)
    assert float(got) == pytest.approx(per.mean(), rel=1e-5)


def test_dkd_is_finite_for_huge_and_constant_logits():
    t = np.array([[1000.0, -1000.0, 0.0], [0.0, 0.0, 0.0]], "float32")
    s = np.array([[-1000.0, 1000.0, 0.0], [0.0, 0.0, 0.0]], "float32")
    value, grad = gradient(kd.losses.DecoupledKD(1.0), t, s, labels=[0, 2])
    assert np.isfinite(float(value)) and float(value) > 100
    assert np.all(np.isfinite(grad))


def test_dkd_warmup_scales_by_the_step_counter():
    t, s = logits(52), logits(53)
    y = labels_for(t)
    full = np_dkd(t, s, y)
    loss = kd.losses.DecoupledKD(warmup_steps=4)
    for taken, factor in [(0, 0.25), (2, 0.75), (3, 1.0), (50, 1.0)]:
        loss.step_counter = taken
        assert float(loss(t, s, labels=y)) == pytest.approx(factor * full, rel=1e-5)
    counter = tf.Variable(1, dtype=tf.int64)
    loss.step_counter = counter
    step = tf.function(lambda: loss(t, s, labels=y))
    assert float(step()) == pytest.approx(0.5 * full, rel=1e-5)
    counter.assign(2)  # read at run time: no retracing needed
    assert float(step()) == pytest.approx(0.75 * full, rel=1e-5)


def test_dkd_warmup_without_a_step_counter_says_how_to_set_one():
    loss = kd.losses.DecoupledKD(warmup_steps=10)
    with pytest.raises(ValueError, match=r"warmup_steps=10.*step_counter"):
        loss(logits(54), logits(55))
    assert float(kd.losses.DecoupledKD(warmup_steps=0)(logits(54), logits(55))) > 0


def test_dkd_rejects_labels_of_the_wrong_shape_and_a_single_class():
    with pytest.raises(ValueError, match=r"`labels`.*Received: labels of shape"):
        kd.losses.DecoupledKD()(logits(56), logits(57), labels=np.zeros((12, 3)))
    with pytest.raises(ValueError, match="at least 2 classes"):
        kd.losses.DecoupledKD()(logits(56, (4, 1)), logits(57, (4, 1)))


# --- all three: Keras integration, precision, config, arguments ----------------------

NEW_LOSSES = [
    lambda: kd.losses.DIST(temperature=2.0),
    lambda: kd.losses.KLDivergence(2.0, standardize=True),
    lambda: kd.losses.DecoupledKD(temperature=2.0),
]


@pytest.mark.parametrize("make", NEW_LOSSES)
def test_float16_inputs_give_a_float32_loss(make):
    t, s = logits(60).astype("float16"), logits(61).astype("float16")
    value = make()(t, s)
    assert value.dtype == "float32" and np.isfinite(float(value))


@pytest.mark.parametrize("make", NEW_LOSSES)
def test_loss_is_float32_under_a_mixed_float16_policy(make):
    keras.mixed_precision.set_global_policy("mixed_float16")
    value = make()(logits(60), logits(61))
    assert value.dtype == "float32"


@pytest.mark.parametrize("make", NEW_LOSSES)
def test_usable_on_precomputed_teacher_logits_in_a_plain_keras_model(make):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    teacher_logits = (x @ rng.normal(size=(4, 3))).astype("float32") * 2
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=make())
    before = model.evaluate(x, teacher_logits, batch_size=64, verbose=0)
    model.fit(x, teacher_logits, epochs=30, batch_size=16, verbose=0)
    after = model.evaluate(x, teacher_logits, batch_size=64, verbose=0)
    assert after < 0.5 * before


@pytest.mark.parametrize(
    "make, reference",
    [
        (kd.losses.DIST, lambda t, s, T: np_dist(t, s, T)),
        (kd.losses.DecoupledKD, lambda t, s, T: np_dkd(t, s, np.argmax(t, -1), T)),
    ],
)
def test_temperature_variable_drives_the_new_losses(make, reference):
    # what keras_kd.callbacks.TemperatureSchedule assigns between steps
    t, s = logits(64), logits(65)
    loss = make(temperature=2.0)
    step = tf.function(lambda: loss(t, s))
    loss.temperature_variable()
    assert float(step()) == pytest.approx(reference(t, s, 2.0), rel=1e-5)
    loss.temperature = 5.0
    assert float(step()) == pytest.approx(reference(t, s, 5.0), rel=1e-5)


def test_config_round_trips():
    losses = [
        kd.losses.DIST(3.0, beta=0.5, gamma=2.0, standardize=True, name="d"),
        kd.losses.DecoupledKD(
            2.0, target_weight=0.5, non_target_weight=4.0, warmup_steps=7
        ),
        kd.losses.KLDivergence(5.0, standardize=True),
        kd.losses.SoftTargetCrossEntropy(5.0, standardize=True),
    ]
    t, s = logits(62), logits(63)
    losses[1].step_counter = 3
    for loss in losses:
        serialized = keras.losses.serialize(loss)
        assert serialized["registered_name"] == f"keras_kd>{type(loss).__name__}"
        restored = keras.losses.deserialize(serialized)
        assert type(restored) is type(loss)
        assert restored.get_config() == loss.get_config()
        if isinstance(restored, kd.losses.DecoupledKD):
            assert restored.step_counter is None  # runtime state, not config
            restored.step_counter = 3
        assert float(restored(t, s)) == pytest.approx(float(loss(t, s)), rel=1e-6)


def test_registered_names_are_unchanged_by_the_losses_package():
    for name in ("KLDivergence", "SoftTargetCrossEntropy", "DIST", "DecoupledKD"):
        cls = keras.saving.get_registered_object(f"keras_kd>{name}")
        assert cls is getattr(kd.losses, name)
        assert keras.saving.get_registered_name(cls) == f"keras_kd>{name}"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(beta=-0.5), ValueError, r"`beta` must be in \[0.0, inf\).*beta=-0.5"),
        (dict(gamma="1"), TypeError, r"`gamma` must be a number.*gamma='1'"),
        (dict(beta=True), TypeError, r"`beta`.*beta=True"),
        (dict(beta=0, gamma=0.0), ValueError, r"`beta`, `gamma` cannot all be 0"),
        (dict(standardize=1), TypeError, r"`standardize` must be True or False"),
        (dict(temperature=0), ValueError, r"`temperature` must be greater than 0"),
    ],
)
def test_dist_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        kd.losses.DIST(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target_weight=-1), ValueError, r"`target_weight`.*target_weight=-1"),
        (dict(non_target_weight=None), TypeError, r"`non_target_weight`.*None"),
        (
            dict(target_weight=0, non_target_weight=0),
            ValueError,
            r"`target_weight`, `non_target_weight` cannot all be 0",
        ),
        (dict(warmup_steps=-1), ValueError, r"`warmup_steps`.*at least 0.*=-1"),
        (dict(warmup_steps=2.5), TypeError, r"`warmup_steps` must be an integer"),
        (dict(warmup_steps=True), TypeError, r"`warmup_steps`.*True"),
        (dict(standardize="yes"), TypeError, r"`standardize`"),
    ],
)
def test_dkd_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        kd.losses.DecoupledKD(**kwargs)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), ("3", TypeError)])
def test_dkd_step_counter_must_be_a_count(bad, error):
    with pytest.raises(error, match="`step_counter`"):
        kd.losses.DecoupledKD().step_counter = bad


def test_kl_standardize_must_be_a_boolean():
    with pytest.raises(TypeError, match=r"`standardize`.*standardize='yes'"):
        kd.losses.KLDivergence(2.0, standardize="yes")
