"""kd.report's metrics (ECE, NLL, agreement, per-class) against numpy references."""

import numpy as np
import pytest

import keras_kd as kd
from keras_kd.report import metrics
from keras_kd.report.history import loss_keys, normalize_history
from keras_kd.report.plots import history_series

# A fixed hand-made set: 8 samples, 3 classes. Confidences hit a bin edge
# (0.4 = 6/15), exactly 1.0, and 1/3.
PROBS = np.array(
    [
        [1.0, 0.0, 0.0],  # conf 1.0 -> last bin, right
        [0.4, 0.3, 0.3],  # conf 0.4 -> bin 6 (edge), right
        [0.2, 0.4, 0.4],  # conf 0.4 (tie: argmax is class 1), wrong (label 2)
        [0.1, 0.85, 0.05],  # right
        [0.05, 0.9, 0.05],  # wrong (label 0)
        [1 / 3, 1 / 3, 1 / 3],  # conf 1/3 -> bin 5, right (argmax 0)
        [0.3, 0.1, 0.6],  # right
        [0.0, 0.5, 0.5],  # true class has p = 0 (label 0): NLL clipped
    ]
)
LABELS = np.array([0, 0, 2, 1, 0, 0, 2, 0])


def np_ece(probs, labels, num_bins):
    """Reference: bins [k/B, (k+1)/B), 1.0 in the last, written independently."""
    probs = np.asarray(probs, np.float64)
    conf = probs.max(1)
    pred = probs.argmax(1)
    total = 0.0
    for k in range(num_bins):
        lo, hi = k / num_bins, (k + 1) / num_bins
        inside = (conf >= lo) & (conf < hi)
        if k == num_bins - 1:
            inside |= conf == 1.0
        if inside.any():
            acc = np.mean(pred[inside] == labels[inside])
            total += inside.sum() / len(conf) * abs(acc - conf[inside].mean())
    return total


def np_nll(probs, labels):
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.maximum(p, 1e-7))))


@pytest.mark.parametrize("num_bins", [1, 5, 10, 15])
def test_ece_matches_numpy_reference(num_bins):
    got = kd.report.expected_calibration_error(PROBS, LABELS, num_bins=num_bins)
    assert got == pytest.approx(np_ece(PROBS, LABELS, num_bins), abs=1e-12)


def test_ece_by_hand_on_four_samples():
    # 15 bins. Conf 0.95 (bin 14, right), 0.95 (bin 14, wrong): |0.5 - 0.95|
    # over half the samples; 0.6 (bin 9, right): |1 - 0.6|; 0.5 (bin 7,
    # wrong): |0 - 0.5|. ECE = 0.5 * 0.45 + 0.25 * 0.4 + 0.25 * 0.5 = 0.45.
    probs = [[0.95, 0.05], [0.95, 0.05], [0.4, 0.6], [0.5, 0.5]]
    labels = [0, 1, 1, 1]
    assert kd.report.expected_calibration_error(probs, labels) == pytest.approx(0.45)


def test_ece_bin_edges_put_one_in_last_bin_and_edges_in_upper_bin():
    bins = metrics.reliability_bins(PROBS, LABELS, num_bins=15)
    assert bins["edges"][6] == 0.4 and bins["edges"][-1] == 1.0
    assert len(bins["count"]) == 15 and sum(bins["count"]) == 8
    assert bins["count"][14] == 1 and bins["accuracy"][14] == 1.0  # conf 1.0
    assert bins["count"][6] == 2 and bins["accuracy"][6] == 0.5  # conf 0.4 twice
    assert bins["count"][5] == 1  # conf 1/3 in [1/3, 0.4)
    assert bins["accuracy"][0] is None and bins["confidence"][0] is None


def test_perfectly_calibrated_model_has_zero_ece():
    probs = np.array([[0.75, 0.25]] * 4)
    assert kd.report.expected_calibration_error(probs, [0, 0, 0, 1]) == 0.0


def test_nll_matches_reference_and_clips_a_zero_probability():
    got = kd.report.negative_log_likelihood(PROBS, LABELS)
    assert got == pytest.approx(np_nll(PROBS, LABELS), rel=1e-12)
    assert np.isfinite(got)
    one = kd.report.negative_log_likelihood([[0.0, 1.0]], [0])
    assert one == pytest.approx(-np.log(1e-7))


def test_agreement_matches_reference_on_logits_and_probabilities():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    expected = np.mean(a.argmax(1) == b.argmax(1))
    assert kd.report.agreement(a, b) == pytest.approx(expected)
    assert kd.report.agreement(a, a) == 1.0


def test_one_hot_labels_give_the_same_figures():
    one_hot = np.eye(3)[LABELS]
    assert kd.report.expected_calibration_error(
        PROBS, one_hot
    ) == kd.report.expected_calibration_error(PROBS, LABELS)
    assert kd.report.negative_log_likelihood(
        PROBS, one_hot
    ) == kd.report.negative_log_likelihood(PROBS, LABELS)


def test_per_class_accuracy_and_missing_class():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    assert metrics.per_class_accuracy(probs, [0, 1, 1]) == [1.0, 0.5, None]
    assert metrics.accuracy(probs, [0, 1, 1]) == pytest.approx(2 / 3)


def test_to_probabilities_softmaxes_logits_and_keeps_probabilities():
    logits = np.array([[2.0, -1.0, 0.5], [100.0, 0.0, -100.0]])
    z = logits - logits.max(1, keepdims=True)
    expected = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(kd.report.to_probabilities(logits), expected)
    np.testing.assert_array_equal(kd.report.to_probabilities(PROBS), PROBS)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (
            lambda: kd.report.expected_calibration_error([[2.0, -1.0]], [0]),
            ValueError,
            "probabilities",
        ),
        (
            lambda: kd.report.expected_calibration_error(PROBS, LABELS, num_bins=0),
            ValueError,
            "num_bins",
        ),
        (
            lambda: kd.report.expected_calibration_error(PROBS, LABELS, num_bins=2.5),
            TypeError,
            "num_bins",
        ),
        (
            lambda: kd.report.negative_log_likelihood(PROBS, LABELS + 1),
            ValueError,
            "outside the 3 classes",
        ),
        (
            lambda: kd.report.negative_log_likelihood(PROBS, LABELS[:5]),
            ValueError,
            "one label per sample",
        ),
        (
            lambda: kd.report.negative_log_likelihood(np.zeros((0, 3)), []),
            ValueError,
            "no samples",
        ),
        (lambda: kd.report.agreement(PROBS, PROBS[:, :2]), ValueError, "same shape"),
        (
            lambda: kd.report.agreement([[np.nan, 1.0]], [[0.0, 1.0]]),
            ValueError,
            "not finite",
        ),
        (lambda: kd.report.agreement("probs", PROBS), TypeError, "probs_a"),
    ],
)
def test_metric_arguments_are_checked(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_history_forms_become_generations():
    one = {"loss": [3.0, 2.0], "val_loss": [3.5, 2.5], "accuracy": [0.1, 0.2]}
    two = {"loss": [1.5], "distillation_loss": [0.7]}
    segments = normalize_history([one, two])
    assert len(segments) == 2
    assert loss_keys(segments) == ["loss", "val_loss", "distillation_loss"]
    series, boundaries = history_series(segments)
    assert boundaries == [2]
    assert series["loss"] == [3.0, 2.0, 1.5]
    assert np.isnan(series["val_loss"][2]) and np.isnan(series["distillation_loss"][0])
    # One SelfDistillation History: split where "generation" changes.
    single = {"loss": [4.0, 3.0, 2.0, 1.0], "generation": [1, 1, 2, 2]}
    split = normalize_history(single)
    assert [s["loss"] for s in split] == [[4.0, 3.0], [2.0, 1.0]]
    # generation_results: one point per generation.
    results = [{"generation": g, "metrics": {"loss": 1.0 / g}} for g in (1, 2)]
    assert normalize_history(results) == [{"loss": [1.0, 0.5]}]
    with pytest.raises(TypeError, match="history"):
        normalize_history("history.json")
    with pytest.raises(ValueError, match="empty list"):
        normalize_history([])
