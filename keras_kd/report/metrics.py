"""The figures of a report, computed in numpy from predictions and labels.

Each function takes probabilities of shape `(num_samples, num_classes)` (use
`to_probabilities` for logits) and integer labels (or one-hot rows). They are
public as `kd.report.expected_calibration_error`,
`kd.report.negative_log_likelihood` and `kd.report.agreement`.
"""

from __future__ import annotations

import numpy as np

from keras_kd._utils import PROB_EPSILON, check_int

# Rows that are non-negative and sum to 1 within this are taken as
# probabilities; anything else is taken as logits and softmaxed.
PROBABILITY_TOLERANCE = 1e-3


def _matrix(values, argument: str) -> np.ndarray:
    """`values` as a finite float64 matrix `(num_samples, num_classes >= 2)`."""
    if values is None or isinstance(values, (str, bytes)):
        raise TypeError(
            f"Argument `{argument}` must be an array of shape (num_samples, "
            f"num_classes). Received: {argument}={values!r}."
        )
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(
            f"Argument `{argument}` must have shape (num_samples, num_classes) "
            f"with num_classes >= 2. Received: {argument} of shape {array.shape}."
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"Argument `{argument}` holds no samples (shape {array.shape}). "
            "Expected at least one row."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"Argument `{argument}` holds values that are not finite (NaN or "
            "inf). Expected finite probabilities or logits."
        )
    return array


def _probabilities(values, argument: str) -> np.ndarray:
    array = _matrix(values, argument)
    if not is_probabilities(array):
        raise ValueError(
            f"Argument `{argument}` must hold probabilities: non-negative rows "
            f"summing to 1 (within {PROBABILITY_TOLERANCE}). Received rows "
            f"summing to {array.sum(-1)[:3].round(4).tolist()}..., with minimum "
            f"{array.min():.4g}. Pass logits through `kd.report.to_probabilities`."
        )
    return array


def is_probabilities(values) -> bool:
    """Whether every row is non-negative and sums to 1 within 1e-3."""
    array = np.asarray(values, dtype=np.float64)
    return bool(
        np.all(array >= 0.0)
        and np.all(np.abs(array.sum(-1) - 1.0) <= PROBABILITY_TOLERANCE)
    )


def to_probabilities(outputs) -> np.ndarray:
    """A model's outputs as probabilities: kept if they are, else softmaxed.

    Args:
        outputs: an array `(num_samples, num_classes)` of logits or
            probabilities (rows non-negative and summing to 1 within 1e-3).

    Returns:
        float64 probabilities of the same shape.
    """
    array = _matrix(outputs, "outputs")
    if is_probabilities(array):
        return array
    shifted = array - array.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def labels_of(labels, num_samples: int, num_classes: int, argument: str = "labels"):
    """Integer class indices from integer labels or one-hot rows.

    Raises:
        ValueError: if the count differs from `num_samples` or a label is not
            a class index in `[0, num_classes)`.
    """
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == num_classes and num_classes > 1:
        array = array.argmax(-1)  # one-hot
    elif array.ndim > 1 and array.size == num_samples:
        array = array.reshape(-1)  # (num_samples, 1)
    if array.ndim != 1 or array.shape[0] != num_samples:
        raise ValueError(
            f"Argument `{argument}` must hold one label per sample ({num_samples}"
            f"). Received: {argument} of shape {np.shape(labels)}."
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(
                f"Argument `{argument}` must hold integer class indices. "
                f"Received non-integer values such as {array[:3].tolist()}."
            )
    elif array.dtype.kind not in "iub":
        raise TypeError(
            f"Argument `{argument}` must hold integer class indices. "
            f"Received: {argument} of dtype {array.dtype}."
        )
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= num_classes)
    if np.any(bad):
        raise ValueError(
            f"Argument `{argument}` holds labels outside the {num_classes} "
            f"classes [0, {num_classes - 1}]: e.g. {array[bad][:3].tolist()}."
        )
    return array


def bin_edges(num_bins: int = 15) -> np.ndarray:
    """The `num_bins + 1` edges of the equal-width confidence bins on [0, 1].

    Bin `k` holds the top-1 confidences `c` with `edges[k] <= c < edges[k+1]`;
    the last bin also holds `c == 1.0`.
    """
    num_bins = check_int(num_bins, "num_bins", minimum=1, what="confidence bins")
    # k / num_bins exactly (correctly rounded), not linspace's k * step.
    return np.arange(num_bins + 1) / num_bins


def reliability_bins(probs, labels, num_bins: int = 15) -> dict:
    """Per-bin counts, accuracy and mean confidence of the top-1 predictions.

    Args:
        probs: probabilities, shape `(num_samples, num_classes)`.
        labels: integer labels (or one-hot rows).
        num_bins: equal-width bins over [0, 1] (see `bin_edges`).

    Returns:
        A dict of plain lists: "edges" (`num_bins + 1`), "count", "accuracy"
        and "confidence" (`num_bins` each; accuracy and confidence are None
        for an empty bin).
    """
    probs = _probabilities(probs, "probs")
    labels = labels_of(labels, len(probs), probs.shape[1])
    edges = bin_edges(num_bins)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    index = np.clip(
        np.searchsorted(edges, confidence, side="right") - 1, 0, num_bins - 1
    )
    result = {"edges": edges.tolist(), "count": [], "accuracy": [], "confidence": []}
    for k in range(num_bins):
        members = index == k
        n = int(members.sum())
        result["count"].append(n)
        result["accuracy"].append(float(correct[members].mean()) if n else None)
        result["confidence"].append(float(confidence[members].mean()) if n else None)
    return result


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence (Guo et al. 2017).

    `ECE = sum_k |B_k| / N * |accuracy(B_k) - confidence(B_k)|` over
    `num_bins` equal-width bins of the top-1 probability: bin `k` holds
    confidences in `[k / num_bins, (k + 1) / num_bins)`, the last bin also
    holds 1.0. 0 is perfect calibration; a model that is right 70% of the
    time while saying 90% has an ECE near 0.2.

    Args:
        probs: probabilities, shape `(num_samples, num_classes)`.
        labels: integer labels `(num_samples,)`, or one-hot rows.
        num_bins: the number of equal-width confidence bins.

    Returns:
        The ECE, a float in [0, 1].

    Raises:
        ValueError: if `probs` are not probabilities, or labels do not match.

    Example:

    ```python
    probs = kd.report.to_probabilities(student.predict(x_test))
    ece = kd.report.expected_calibration_error(probs, y_test)
    ```
    """
    bins = reliability_bins(probs, labels, num_bins)
    total = sum(bins["count"])
    return float(
        sum(
            n / total * abs(acc - conf)
            for n, acc, conf in zip(bins["count"], bins["accuracy"], bins["confidence"])
            if n
        )
    )


def negative_log_likelihood(probs, labels) -> float:
    """Mean negative log-probability of the true class.

    `NLL = mean_i -log(max(p_i[y_i], 1e-7))`: the clip keeps a confident
    mistake (probability 0 for the true class) finite, at about 16.1.

    Args:
        probs: probabilities, shape `(num_samples, num_classes)`.
        labels: integer labels `(num_samples,)`, or one-hot rows.

    Returns:
        The mean NLL in nats, a float >= 0.

    Example:

    ```python
    nll = kd.report.negative_log_likelihood(probs, y_test)
    ```
    """
    probs = _probabilities(probs, "probs")
    labels = labels_of(labels, len(probs), probs.shape[1])
    true = probs[np.arange(len(probs)), labels]
    return float(np.mean(-np.log(np.clip(true, PROB_EPSILON, 1.0))))


def agreement(probs_a, probs_b) -> float:
    """The share of samples on which two models' top-1 classes are equal.

    Args:
        probs_a: probabilities or logits of one model, `(num_samples,
            num_classes)`.
        probs_b: the other model's, of the same shape.

    Returns:
        A float in [0, 1].

    Example:

    ```python
    kd.report.agreement(teacher.predict(x), student.predict(x))
    ```
    """
    a = _matrix(probs_a, "probs_a")
    b = _matrix(probs_b, "probs_b")
    if a.shape != b.shape:
        raise ValueError(
            "Arguments `probs_a` and `probs_b` must have the same shape. "
            f"Received: {a.shape} and {b.shape}."
        )
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def accuracy(probs, labels) -> float:
    """Top-1 accuracy."""
    probs = _matrix(probs, "probs")
    labels = labels_of(labels, len(probs), probs.shape[1])
    return float(np.mean(probs.argmax(-1) == labels))


def per_class_accuracy(probs, labels) -> list:
    """Top-1 accuracy of each true class; None for a class with no samples."""
    probs = _matrix(probs, "probs")
    labels = labels_of(labels, len(probs), probs.shape[1])
    correct = probs.argmax(-1) == labels
    result = []
    for c in range(probs.shape[1]):
        members = labels == c
        result.append(float(correct[members].mean()) if members.any() else None)
    return result


def predictive_entropy(probs) -> np.ndarray:
    """The entropy of each sample's predicted distribution, in nats.

    `H(p) = -sum_k p_k log p_k` (with `0 log 0 = 0`): 0 for a one-hot
    prediction, `log(num_classes)` for a uniform one. Higher entropy is less
    confidence; out-of-distribution inputs should get more of it.

    Args:
        probs: probabilities, shape `(num_samples, num_classes)` (use
            `to_probabilities` for logits).

    Returns:
        float64 entropies, shape `(num_samples,)`.

    Example:

    ```python
    entropy = kd.report.predictive_entropy(
        kd.report.to_probabilities(student.predict(x_ood)))
    ```
    """
    probs = _probabilities(probs, "probs")
    positive = probs > 0.0
    terms = np.where(positive, probs * np.log(np.where(positive, probs, 1.0)), 0.0)
    return np.maximum(-terms.sum(-1), 0.0)


def _scores(values, argument: str) -> np.ndarray:
    if values is None or isinstance(values, (str, bytes)):
        raise TypeError(
            f"Argument `{argument}` must be a 1-D array of scores. Received: "
            f"{argument}={values!r}."
        )
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"Argument `{argument}` must be a non-empty 1-D array of scores. "
            f"Received: {argument} of shape {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"Argument `{argument}` holds values that are not finite (NaN or "
            "inf). Expected finite scores."
        )
    return array


def auroc(negative_scores, positive_scores) -> float:
    """Area under the ROC curve of scores separating two groups.

    The probability that a random positive scores higher than a random
    negative, ties counted half: the Mann-Whitney statistic
    `(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`, with `R_pos` the sum
    of the positives' ranks among all scores (tied scores share their mean
    rank). 1.0 separates them perfectly, 0.5 is chance.

    Args:
        negative_scores: scores of the negatives, a 1-D array (e.g. the
            predictive entropy on in-distribution inputs).
        positive_scores: scores of the positives (e.g. the entropy on
            out-of-distribution inputs: higher entropy, more likely OOD).

    Returns:
        The AUROC, a float in [0, 1].

    Raises:
        ValueError: if either group is empty or holds non-finite scores.

    Example:

    ```python
    kd.report.auroc(kd.report.predictive_entropy(p_test),
                    kd.report.predictive_entropy(p_ood))
    ```
    """
    negatives = _scores(negative_scores, "negative_scores")
    positives = _scores(positive_scores, "positive_scores")
    scores = np.concatenate([negatives, positives])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Ranks from 1: a group of tied scores takes the mean of the ranks it spans.
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    positive_ranks = mean_rank[inverse.reshape(-1)[len(negatives) :]]
    n_pos, n_neg = len(positives), len(negatives)
    statistic = positive_ranks.sum() - n_pos * (n_pos + 1) / 2.0
    return float(statistic / (n_pos * n_neg))
