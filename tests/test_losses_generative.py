"""ReverseKL, GeneralizedJSD, SkewKL and TotalVariation against numpy.

Each reference is written from its paper in float64 numpy, with probabilities
(not log-probabilities) and plain `np.log` of the mixtures: GKD's generalized
JSD (Agarwal et al. 2024, eq. 1), DistiLLM's skew KL and skew reverse KL (Ko
et al. 2024, eqs. 3-4), total variation, MiniLLM's reverse KL. The masked
means over real tokens are checked through a `Distiller` on padded
`(batch, time, vocab)` outputs.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from conftest import np_softmax
from keras_kd.backend import keras


def logits(seed, shape=(12, 7), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def np_kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def np_jsd(t, s, beta, temperature=1.0):
    p, q = np_softmax(t, temperature), np_softmax(s, temperature)
    m = beta * p + (1 - beta) * q
    return temperature**2 * (beta * np_kl(p, m) + (1 - beta) * np_kl(q, m))


def np_skew(t, s, skew, reverse, temperature=1.0):
    p, q = np_softmax(t, temperature), np_softmax(s, temperature)
    if reverse:
        return temperature**2 * np_kl(q, (1 - skew) * p + skew * q)
    return temperature**2 * np_kl(p, skew * p + (1 - skew) * q)


def np_tv(t, s, temperature=1.0):
    p, q = np_softmax(t, temperature), np_softmax(s, temperature)
    return temperature**2 * 0.5 * np.abs(p - q).sum(-1)


def np_uld(t, s, temperature=1.0):
    """Boizard et al.'s reference: sort each, pad the shorter with zeros, L1."""
    p = -np.sort(-np_softmax(t, temperature), axis=-1)
    q = -np.sort(-np_softmax(s, temperature), axis=-1)
    size = max(p.shape[-1], q.shape[-1])
    pad = lambda a: np.concatenate(
        [a, np.zeros(a.shape[:-1] + (size - a.shape[-1],))], axis=-1
    )
    return temperature**2 * np.abs(pad(p) - pad(q)).sum(-1)


def np_reverse_kl(t, s, temperature=1.0):
    p, q = np_softmax(t, temperature), np_softmax(s, temperature)
    return temperature**2 * np_kl(q, p)


def np_forward_kl(t, s, temperature=1.0):
    p, q = np_softmax(t, temperature), np_softmax(s, temperature)
    return temperature**2 * np_kl(p, q)


# --- values against numpy ----------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_reverse_kl_matches_numpy(temperature):
    t, s = logits(0), logits(1)
    got = kd.losses.ReverseKL(temperature)(t, s)
    assert float(got) == pytest.approx(
        np_reverse_kl(t, s, temperature).mean(), rel=1e-5
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_numpy(beta, temperature):
    t, s = logits(2), logits(3)
    got = kd.losses.GeneralizedJSD(beta=beta, temperature=temperature)(t, s)
    expected = np_jsd(t, s, beta, temperature).mean()
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_jsd_beta_0_is_forward_kl_and_beta_1_reverse_kl_exactly(temperature):
    t, s = logits(4), logits(5)
    forward = kd.losses.KLDivergence(temperature)(t, s)
    reverse = kd.losses.ReverseKL(temperature)(t, s)
    # Exactly the same float32 computation, as TRL special-cases them.
    assert float(kd.losses.GeneralizedJSD(0.0, temperature)(t, s)) == float(forward)
    assert float(kd.losses.GeneralizedJSD(1.0, temperature)(t, s)) == float(reverse)
    assert float(forward) == pytest.approx(
        np_forward_kl(t, s, temperature).mean(), rel=1e-5
    )
    # Near the ends the mixture form itself goes to 0 (hence the special cases).
    assert float(kd.losses.GeneralizedJSD(1e-6, temperature)(t, s)) < 1e-4


def test_jsd_is_bounded_by_log_2_at_beta_one_half():
    t = logits(6, scale=30.0)
    s = -t  # nearly disjoint supports
    value = float(kd.losses.GeneralizedJSD(0.5)(t, s))
    assert 0.5 < value <= np.log(2) + 1e-6


@pytest.mark.parametrize("skew", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("reverse", [False, True])
def test_skew_kl_matches_numpy(skew, reverse):
    t, s = logits(7), logits(8)
    got = kd.losses.SkewKL(skew=skew, reverse=reverse, temperature=1.5)(t, s)
    expected = np_skew(t, s, skew, reverse, 1.5).mean()
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_skew_zero_is_plain_kl_and_the_name_says_which():
    t, s = logits(9), logits(10)
    assert float(kd.losses.SkewKL(0.0)(t, s)) == pytest.approx(
        float(kd.losses.KLDivergence(1.0)(t, s)), rel=1e-6
    )
    assert float(kd.losses.SkewKL(0.0, reverse=True)(t, s)) == pytest.approx(
        float(kd.losses.ReverseKL()(t, s)), rel=1e-6
    )
    assert kd.losses.SkewKL().name == "skew_kl"
    assert kd.losses.SkewKL(reverse=True).name == "skew_reverse_kl"


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_total_variation_matches_numpy(temperature):
    t, s = logits(11), logits(12)
    got = kd.losses.TotalVariation(temperature)(t, s)
    assert float(got) == pytest.approx(np_tv(t, s, temperature).mean(), rel=1e-5)


LOSSES = {
    "reverse_kl": (
        lambda: kd.losses.ReverseKL(2.0),
        lambda t, s: np_reverse_kl(t, s, 2),
    ),
    "jsd": (
        lambda: kd.losses.GeneralizedJSD(0.3, 2.0),
        lambda t, s: np_jsd(t, s, 0.3, 2),
    ),
    "skew": (
        lambda: kd.losses.SkewKL(0.2, temperature=2.0),
        lambda t, s: np_skew(t, s, 0.2, False, 2),
    ),
    "skew_reverse": (
        lambda: kd.losses.SkewKL(0.2, reverse=True, temperature=2.0),
        lambda t, s: np_skew(t, s, 0.2, True, 2),
    ),
    "tv": (lambda: kd.losses.TotalVariation(2.0), lambda t, s: np_tv(t, s, 2)),
    "uld": (
        lambda: kd.losses.UniversalLogitDistance(2.0),
        lambda t, s: np_uld(t, s, 2),
    ),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_when_the_student_agrees_and_positive_otherwise(name):
    make, _ = LOSSES[name]
    t = logits(13)
    assert abs(float(make()(t, t))) < 1e-6
    assert float(make()(t, logits(14))) > 1e-3


@pytest.mark.parametrize("name", list(LOSSES))
def test_sequence_outputs_reduce_per_position_and_take_sample_weights(name):
    make, reference = LOSSES[name]
    t, s = logits(15, (3, 5, 6)), logits(16, (3, 5, 6))
    weights = np.random.default_rng(0).uniform(0, 2, (3, 5)).astype("float32")
    per_position = make().__class__.from_config(
        {**make().get_config(), "reduction": "none"}
    )(t, s)
    np.testing.assert_allclose(per_position, reference(t, s), rtol=1e-5, atol=1e-7)
    weighted = make()(t, s, sample_weight=weights)
    expected = (reference(t, s) * weights).sum() / weights.size
    assert float(weighted) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_are_finite_for_huge_and_disjoint_logits(name):
    make, _ = LOSSES[name]
    t = logits(17, scale=200.0)
    s = tf.Variable(-t)
    with tf.GradientTape() as tape:
        value = make()(t, s)
    grad = tape.gradient(value, s)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("name", list(LOSSES))
def test_float16_inputs_give_a_float32_loss(name):
    make, reference = LOSSES[name]
    t, s = logits(18), logits(19)
    got = make()(t.astype("float16"), s.astype("float16"))
    assert got.dtype == tf.float32
    expected = reference(t.astype("float16"), s.astype("float16")).mean()
    assert float(got) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", list(LOSSES))
def test_probability_inputs_give_the_loss_of_their_logits(name):
    make, _ = LOSSES[name]
    t, s = logits(20), logits(21)
    config = make().get_config()
    from_probs = make().__class__.from_config(
        {
            **config,
            "teacher_from_logits": False,
            "student_from_logits": False,
            "temperature": 1.0,
        }
    )
    at_one = make().__class__.from_config({**config, "temperature": 1.0})
    got = from_probs(np_softmax(t).astype("float32"), np_softmax(s).astype("float32"))
    assert float(got) == pytest.approx(float(at_one(t, s)), rel=1e-4)


@pytest.mark.parametrize("sizes", [(11, 7), (7, 11), (7, 7)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_matches_numpy_across_vocabulary_sizes(sizes, temperature):
    t, s = logits(26, (2, 3, sizes[0])), logits(27, (2, 3, sizes[1]))
    loss = kd.losses.UniversalLogitDistance(temperature)
    expected = np_uld(t, s, temperature).mean()
    assert float(loss(t, s)) == pytest.approx(expected, rel=1e-5)
    # A permutation of either vocabulary changes nothing: only ranks count.
    perm = np.random.default_rng(0).permutation(sizes[1])
    assert float(loss(t, s[..., perm])) == pytest.approx(expected, rel=1e-5)


# --- serialization, schedules, arguments ------------------------------------------


@pytest.mark.parametrize("name", list(LOSSES))
def test_config_round_trips_through_keras(name):
    make, _ = LOSSES[name]
    loss = make()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    t, s = logits(22), logits(23)
    assert float(restored(t, s)) == float(loss(t, s))


@pytest.mark.parametrize("name", list(LOSSES))
def test_temperature_variable_drives_them(name):
    make, _ = LOSSES[name]
    loss = make()
    t, s = logits(24), logits(25)
    loss.temperature_variable()
    loss.temperature = 1.0
    at_one = make().__class__.from_config({**make().get_config(), "temperature": 1.0})
    assert float(loss(t, s)) == pytest.approx(float(at_one(t, s)), rel=1e-6)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: kd.losses.GeneralizedJSD(beta=1.5),
            ValueError,
            r"`beta` must be in \[0.0, 1.0\]",
        ),
        (
            lambda: kd.losses.GeneralizedJSD(beta="half"),
            TypeError,
            "`beta` must be a number",
        ),
        (
            lambda: kd.losses.SkewKL(skew=1.0),
            ValueError,
            r"`skew` must be in \[0.0, 1.0\)",
        ),
        (lambda: kd.losses.SkewKL(skew=-0.1), ValueError, "Received: skew=-0.1"),
        (lambda: kd.losses.SkewKL(reverse="yes"), TypeError, "reverse"),
        (lambda: kd.losses.ReverseKL(temperature=0), ValueError, "temperature"),
        (lambda: kd.losses.TotalVariation(temperature=-1.0), ValueError, "temperature"),
    ],
)
def test_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- in a Distiller: token-level, masked means -------------------------------------

VOCAB = 9


def token_lm(width, name, mask_zero):
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(
        VOCAB,
        width,
        mask_zero=mask_zero,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1),
    )(inputs)
    h = keras.layers.Dense(width, activation="tanh")(h)
    outputs = keras.layers.Dense(
        VOCAB, kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=2)
    )(h)
    return keras.Model(inputs, outputs, name=name)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("kind", ["keras_mask", "sample_weight"])
def test_distiller_averages_over_real_tokens_only(name, kind):
    make, reference = LOSSES[name]
    rng = np.random.default_rng(3)
    x = rng.integers(1, VOCAB, (3, 7))
    x[0, 3:] = 0
    x[1, 5:] = 0
    weights = (x > 0).astype("float32")
    mask_zero = kind == "keras_mask"
    d = kd.Distiller(token_lm(8, "t", mask_zero), token_lm(4, "s", mask_zero))
    d.compile("sgd", distillation_loss=make(), alpha=1.0)
    logs = d.evaluate(
        x,
        x,
        sample_weight=None if mask_zero else weights,
        batch_size=3,
        verbose=0,
        return_dict=True,
    )
    zt = d.teacher.predict(x, verbose=0).astype(np.float64)
    zs = d.student.predict(x, verbose=0).astype(np.float64)
    per_token = reference(zt, zs)
    expected = (per_token * weights).sum() / weights.sum()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    assert not np.isclose(expected, per_token.mean(), rtol=1e-3)


def test_uld_distils_between_different_vocabularies_in_a_distiller():
    rng = np.random.default_rng(5)
    x = rng.integers(1, VOCAB, (4, 6))
    x[0, 4:] = 0
    weights = (x > 0).astype("float32")
    teacher = token_lm(8, "t", False)
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 4)(inputs)
    student = keras.Model(inputs, keras.layers.Dense(VOCAB + 5)(h), name="s")
    d = kd.Distiller(teacher, student)
    d.compile("sgd", distillation_loss=kd.losses.UniversalLogitDistance(), alpha=1.0)
    logs = d.evaluate(x, x, sample_weight=weights, verbose=0, return_dict=True)
    zt = d.teacher.predict(x, verbose=0).astype(np.float64)
    zs = d.student.predict(x, verbose=0).astype(np.float64)
    per_token = np_uld(zt, zs)
    expected = (per_token * weights).sum() / weights.sum()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    d.fit(x, x, sample_weight=weights, epochs=1, verbose=0)
    # Other losses refuse outputs of different vocabularies, at compile.
    with pytest.raises(ValueError, match=r"UniversalLogitDistance.*"):
        d.compile("sgd", distillation_loss=kd.losses.KLDivergence(), alpha=1.0)
    # Classification outputs of different sizes are still refused at once.
    with pytest.raises(ValueError, match=r"teacher output shape \(None, 3\)"):
        kd.Distiller(
            keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]),
            keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)]),
        )


def test_a_generative_objective_trains_a_student_and_saves_with_it(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(1, VOCAB, (16, 6))
    d = kd.Distiller(token_lm(8, "t", False), token_lm(4, "s", False))
    d.compile(
        keras.optimizers.Adam(0.05),
        distillation_loss=kd.losses.GeneralizedJSD(beta=0.5),
        alpha=1.0,
    )
    before = d.evaluate(x, x, verbose=0, return_dict=True)["distillation_loss"]
    d.fit(x, x, epochs=5, batch_size=8, verbose=0)
    after = d.evaluate(x, x, verbose=0, return_dict=True)["distillation_loss"]
    assert after < before
    path = tmp_path / "distiller.keras"
    d.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.distillation_loss, kd.losses.GeneralizedJSD)
    assert restored.distillation_loss.beta == 0.5


def test_docstring_examples_run():
    import doctest

    from keras_kd.losses import generative

    result = doctest.testmod(generative)
    assert result.attempted >= 5 and result.failed == 0
