"""keras_kd.ensemble: the log of the mean probability, against numpy."""

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp, np_kl, np_log_softmax
from keras_kd.backend import keras
from keras_kd.ensemble import Ensemble, log_mean_probs, member_log_probs


def _softmax(z):
    return np.exp(np_log_softmax(z))


def _np_log_mean_prob(probabilities, weights=None):
    """log(sum_k w_k p_k / sum_k w_k), directly in probability space."""
    probabilities = np.asarray(probabilities, np.float64)
    weights = np.ones(len(probabilities)) if weights is None else np.asarray(weights)
    mean = np.tensordot(weights / weights.sum(), probabilities, axes=1)
    return np.log(mean)


def _random_logits(n_members, seed=0, shape=(5, 4)):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(scale=2.0, size=shape).astype("float32") for _ in range(n_members)
    ]


def test_log_mean_probs_is_the_log_of_the_mean_probability():
    logits = _random_logits(3)
    log_probs = [np_log_softmax(z).astype("float32") for z in logits]
    got = np.asarray(log_mean_probs(log_probs))
    expected = _np_log_mean_prob([_softmax(z) for z in logits])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # ...which is not the mean of the logits' log-softmax
    assert not np.allclose(got, np_log_softmax(np.mean(logits, axis=0)), atol=1e-3)


@pytest.mark.parametrize("weights", [[1.0, 3.0], [0.2, 0.2, 0.6], [2.0, 0.0, 1.0]])
def test_weighted_log_mean_probs(weights):
    logits = _random_logits(len(weights), seed=len(weights))
    log_probs = [np_log_softmax(z).astype("float32") for z in logits]
    got = np.asarray(log_mean_probs(log_probs, weights=weights))
    expected = _np_log_mean_prob([_softmax(z) for z in logits], weights)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_log_mean_probs_of_one_member_is_that_member():
    log_probs = [np_log_softmax(_random_logits(1)[0]).astype("float32")]
    np.testing.assert_allclose(
        np.asarray(log_mean_probs(log_probs)), log_probs[0], rtol=1e-6
    )


def test_log_mean_probs_stays_finite_for_huge_logits():
    a = np.array([[0.0, -1000.0]], np.float32)
    b = np.array([[-1000.0, 0.0]], np.float32)
    for weights in (None, [1.0, 1.0]):
        np.testing.assert_allclose(
            np.asarray(log_mean_probs([a, b], weights=weights)),
            [[np.log(0.5), np.log(0.5)]],
            rtol=1e-6,
        )


def test_member_log_probs_reads_logits_and_probabilities():
    (logits,) = _random_logits(1)
    probabilities = _softmax(logits).astype("float32")
    from_logits, from_probs = member_log_probs([logits, probabilities], [False, True])
    np.testing.assert_allclose(
        np.asarray(from_logits), np_log_softmax(logits), atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(from_probs), np.log(probabilities), rtol=1e-5, atol=1e-6
    )


def _members(activations):
    return [
        make_mlp(8 + 4 * i, activation=activation, name=f"member_{i}")
        for i, activation in enumerate(activations)
    ]


@pytest.mark.parametrize(
    "activations",
    [[None, None], ["softmax", "softmax"], ["softmax", None, "softmax"]],
    ids=["logits", "softmax", "mixed"],
)
def test_ensemble_output_is_the_log_mean_probability_of_its_members(activations, data):
    x, _ = data
    members = _members(activations)
    outputs = [member.predict(x, verbose=0) for member in members]
    probabilities = [
        out if activation == "softmax" else _softmax(out)
        for out, activation in zip(outputs, activations)
    ]
    got = np.asarray(Ensemble(members)(x))
    np.testing.assert_allclose(
        got, _np_log_mean_prob(probabilities), rtol=1e-5, atol=1e-5
    )


def test_weighted_ensemble(data):
    x, _ = data
    members = _members(["softmax", None])
    probabilities = [members[0].predict(x, verbose=0)]
    probabilities.append(_softmax(members[1].predict(x, verbose=0)))
    got = np.asarray(Ensemble(members, weights=[3, 1])(x))
    expected = _np_log_mean_prob(probabilities, [3.0, 1.0])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_an_ensemble_teaches_a_distiller(data):
    x, y = data
    members = _members(["softmax", None])
    ensemble = Ensemble(members)
    student = make_mlp(4, name="student")
    d = kd.Distiller(teacher=ensemble, student=student)
    d.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=hard_loss(),
        distillation_loss=kd.losses.KLDivergence(3.0),
    )
    logs = d.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    probabilities = [members[0].predict(x, verbose=0)]
    probabilities.append(_softmax(members[1].predict(x, verbose=0)))
    teacher_logits = _np_log_mean_prob(probabilities)
    expected = np_kl(teacher_logits, student.predict(x, verbose=0), 3.0)
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "members, weights, error, match",
    [
        ([], None, ValueError, "at least one"),
        (["model"], None, TypeError, r"members\[0\]"),
        (None, [1.0], ValueError, "one non-negative weight per member"),
        (None, [1.0, -1.0], ValueError, r"weights\[1\]"),
        (None, [0.0, 0.0], ValueError, "not all zero"),
        (None, [1.0, "a"], TypeError, r"weights\[1\]"),
    ],
)
def test_ensemble_rejects_bad_arguments(members, weights, error, match):
    if members is None:
        members = _members([None, None])
    with pytest.raises(error, match=match):
        Ensemble(members, weights=weights)
