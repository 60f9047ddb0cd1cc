import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras_kd as kd
from conftest import np_kl, np_log_softmax
from keras_kd.backend import keras


def logits(seed, shape=(5, 4), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 20.0])
def test_kl_divergence_matches_numpy_with_t_squared_scaling(temperature):
    t, s = logits(0), logits(1)
    got = float(kd.losses.KLDivergence(temperature=temperature)(t, s))
    assert got == pytest.approx(np_kl(t, s, temperature), rel=1e-5, abs=1e-6)


def test_kl_divergence_t_squared_factor_is_applied():
    # Same softened distributions at T=2 and T=4 once the logits are scaled:
    # only the T^2 factor differs, so the ratio is exactly (4/2)^2.
    t, s = logits(0), logits(1)
    at_2 = float(kd.losses.KLDivergence(temperature=2.0)(t, s))
    at_4 = float(kd.losses.KLDivergence(temperature=4.0)(2 * t, 2 * s))
    assert at_4 / at_2 == pytest.approx(4.0, rel=1e-5)


def test_probability_teacher_gives_the_same_loss_as_its_logits():
    t, s = logits(0), logits(1)
    probs = np.exp(np_log_softmax(t)).astype("float32")
    from_probs = kd.losses.KLDivergence(temperature=4.0, teacher_from_logits=False)
    from_logits = kd.losses.KLDivergence(temperature=4.0)
    assert float(from_probs(probs, s)) == pytest.approx(
        float(from_logits(t, s)), rel=1e-4
    )
    # Treating the probabilities as logits would be silently wrong.
    assert float(from_logits(probs, s)) != pytest.approx(
        float(from_logits(t, s)), rel=1e-2
    )


def test_probability_student_is_accepted():
    t, s = logits(0), logits(1)
    s_probs = np.exp(np_log_softmax(s)).astype("float32")
    loss = kd.losses.KLDivergence(temperature=3.0, student_from_logits=False)
    assert float(loss(t, s_probs)) == pytest.approx(np_kl(t, s, 3.0), rel=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_soft_target_cross_entropy_matches_numpy(temperature):
    t, s = logits(2), logits(3)
    lt = np_log_softmax(t / temperature)
    ls = np_log_softmax(s / temperature)
    expected = (-(np.exp(lt) * ls).sum(-1) * temperature**2).mean()
    got = float(kd.losses.SoftTargetCrossEntropy(temperature)(t, s))
    assert got == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_and_kl_differ_by_teacher_entropy():
    t, s = logits(4), logits(5)
    T = 3.0
    lt = np_log_softmax(t / T)
    entropy = (-(np.exp(lt) * lt).sum(-1) * T**2).mean()
    ce = float(kd.losses.SoftTargetCrossEntropy(T)(t, s))
    kl = float(kd.losses.KLDivergence(T)(t, s))
    assert ce - kl == pytest.approx(entropy, rel=1e-4)


def test_sequence_outputs_average_over_positions():
    t, s = logits(6, (2, 7, 11)), logits(7, (2, 7, 11))
    got = float(kd.losses.KLDivergence(2.0)(t, s))
    assert got == pytest.approx(
        np_kl(t.reshape(-1, 11), s.reshape(-1, 11), 2.0), rel=1e-5
    )


def test_reduction_none_gives_per_sample_values():
    t, s = logits(8), logits(9)
    per = kd.losses.KLDivergence(2.0, reduction="none")(t, s)
    assert tuple(per.shape) == (5,)
    lt, ls = np_log_softmax(t / 2), np_log_softmax(s / 2)
    np.testing.assert_allclose(per, (np.exp(lt) * (lt - ls)).sum(-1) * 4, rtol=1e-5)


def test_huge_logits_stay_finite():
    t = np.array([[1000.0, -1000.0, 0.0]], "float32")
    s = np.array([[-1000.0, 1000.0, 0.0]], "float32")
    value = float(kd.losses.KLDivergence(1.0)(t, s))
    assert np.isfinite(value) and value > 1000


def test_loss_is_float32_for_float16_inputs():
    t, s = logits(0).astype("float16"), logits(1).astype("float16")
    value = kd.losses.KLDivergence(2.0)(t, s)
    assert value.dtype == "float32"


@pytest.mark.parametrize(
    "cls", [kd.losses.KLDivergence, kd.losses.SoftTargetCrossEntropy]
)
def test_config_round_trip(cls):
    loss = cls(temperature=7.5, teacher_from_logits=False)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is cls
    assert restored.temperature == 7.5 and restored.teacher_from_logits is False
    t, s = np.abs(logits(0)) / 10, logits(1)
    t = t / t.sum(-1, keepdims=True)
    assert float(restored(t, s)) == pytest.approx(float(loss(t, s)))


@pytest.mark.parametrize("bad", [0, 0.0, -1.0])
def test_non_positive_temperature_is_rejected(bad):
    with pytest.raises(
        ValueError,
        match=r"`temperature` must be greater than 0.*temperature=" + str(bad),
    ):
        kd.losses.KLDivergence(temperature=bad)


@pytest.mark.parametrize("bad", ["4", None, True])
def test_non_numeric_temperature_is_rejected(bad):
    with pytest.raises(TypeError, match="`temperature`"):
        kd.losses.SoftTargetCrossEntropy(temperature=bad)


def test_from_logits_flags_must_be_booleans():
    with pytest.raises(TypeError, match="teacher_from_logits"):
        kd.losses.KLDivergence(teacher_from_logits="yes")


def test_usable_in_a_plain_keras_model():
    # A student fitted directly on precomputed teacher logits, no Distiller.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    teacher_logits = (x @ rng.normal(size=(4, 3))).astype("float32") * 2
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss=kd.losses.KLDivergence(2.0)
    )
    before = model.evaluate(x, teacher_logits, verbose=0)
    model.fit(x, teacher_logits, epochs=30, batch_size=16, verbose=0)
    after = model.evaluate(x, teacher_logits, verbose=0)
    assert after < 0.2 * before


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(np.float32, (3, 5), elements=st.floats(-30, 30, width=32)),
    hnp.arrays(np.float32, (3, 5), elements=st.floats(-30, 30, width=32)),
    st.floats(0.5, 30.0),
)
def test_kl_is_non_negative_and_zero_on_itself(t, s, temperature):
    loss = kd.losses.KLDivergence(temperature=temperature)
    assert float(loss(t, s)) >= -1e-4
    assert abs(float(loss(t, t))) < 1e-4
    assert float(loss(t, s)) == pytest.approx(
        np_kl(t, s, temperature), rel=1e-3, abs=1e-3
    )


def test_as_loss_returns_a_loss_unchanged():
    loss = kd.losses.KLDivergence(3.0)
    assert kd.losses.as_loss(loss) is loss


def test_as_loss_gives_a_function_keras_reduction_and_sample_weights():
    t, s = logits(0), logits(1)

    def per_sample(y_true, y_pred):
        return tf.reduce_sum((y_true - y_pred) ** 2, axis=-1)

    loss = kd.losses.as_loss(per_sample)
    assert isinstance(loss, keras.losses.Loss)
    squared = ((t.astype(np.float64) - s) ** 2).sum(-1)
    assert float(loss(t, s)) == pytest.approx(squared.mean(), rel=1e-5)
    w = np.linspace(0.0, 2.0, len(t))
    assert float(loss(t, s, sample_weight=w)) == pytest.approx(
        (squared * w).mean(), rel=1e-5
    )


def test_as_loss_by_name_wraps_the_keras_function():
    p = np.array([[0.2, 0.8], [0.5, 0.5]], np.float32)
    q = np.array([[0.4, 0.6], [0.9, 0.1]], np.float32)
    loss = kd.losses.as_loss("kl_divergence")
    assert isinstance(loss, keras.losses.Loss)
    expected = (p * np.log(p / q)).sum(-1).mean()
    assert float(loss(p, q)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "bad, error", [("adam", ValueError), (3, TypeError), (keras.losses.Loss, TypeError)]
)
def test_as_loss_rejects_what_is_not_a_loss(bad, error):
    with pytest.raises(
        error, match=r"`distillation_loss`.*Received: distillation_loss="
    ):
        kd.losses.as_loss(bad, "distillation_loss")
