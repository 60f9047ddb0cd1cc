"""kd.report.compare(..., ood_data=...): entropies and AUROC against numpy.

The models are bias-free Dense layers with fixed weights, so their logits on
any input are `x @ W`, computed independently in numpy.
"""

import json

import numpy as np
import pytest

import keras_kd as kd
from keras_kd.backend import keras, tf

sklearn_metrics = pytest.importorskip("sklearn.metrics")

NUM_FEATURES, NUM_CLASSES = 6, 4
RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, NUM_FEATURES)).astype("float32")
Y = RNG.integers(0, NUM_CLASSES, size=40)
X_OOD = (3.0 * RNG.normal(size=(30, NUM_FEATURES))).astype("float32")
WEIGHTS = {
    "teacher": RNG.normal(size=(NUM_FEATURES, NUM_CLASSES)),
    # The student: the teacher's weights, scaled up (sharper, surer).
    "student": None,
    "baseline": RNG.normal(size=(NUM_FEATURES, NUM_CLASSES)),
}
WEIGHTS["student"] = 3.0 * WEIGHTS["teacher"]


def fixed_model(weights, name):
    model = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,)),
            keras.layers.Dense(NUM_CLASSES, use_bias=False),
        ],
        name=name,
    )
    model.layers[-1].set_weights([np.asarray(weights, "float32")])
    return model


@pytest.fixture
def models():
    return {name: fixed_model(w, name) for name, w in WEIGHTS.items()}


def np_entropy(x, weights):
    z = np.asarray(x, np.float64) @ np.asarray(weights, np.float32).astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return -(p * np.log(p)).sum(-1)


def np_auroc(negatives, positives):
    """Mann-Whitney by brute force: every (positive, negative) pair."""
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return (greater + 0.5 * ties) / (len(positives) * len(negatives))


def test_entropies_and_auroc_match_numpy_and_sklearn(models):
    report = kd.report.compare(
        models["teacher"],
        models["student"],
        (X, Y),
        baseline=models["baseline"],
        ood_data=X_OOD,
        latency_runs=0,
    )
    assert report.ood["num_samples"] == len(X_OOD)
    assert set(report.ood["models"]) == {"teacher", "student", "baseline"}
    for name, row in report.ood["models"].items():
        inside = np_entropy(X, WEIGHTS[name])
        outside = np_entropy(X_OOD, WEIGHTS[name])
        assert row["entropy_in"] == pytest.approx(inside.mean(), abs=1e-5)
        assert row["entropy_ood"] == pytest.approx(outside.mean(), abs=1e-5)
        labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
        sk = sklearn_metrics.roc_auc_score(labels, np.r_[inside, outside])
        assert row["auroc"] == pytest.approx(sk, abs=1e-3)
        assert row["auroc"] == pytest.approx(np_auroc(inside, outside), abs=1e-3)


def test_auroc_counts_ties_half_and_matches_sklearn():
    assert kd.report.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert kd.report.auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert kd.report.auroc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert kd.report.auroc([0.0, 1.0], [1.0]) == 0.75
    rng = np.random.default_rng(1)
    negatives = rng.integers(0, 6, 200).astype(float)  # many ties
    positives = rng.integers(2, 9, 150).astype(float)
    labels = np.r_[np.zeros(200), np.ones(150)]
    expected = sklearn_metrics.roc_auc_score(labels, np.r_[negatives, positives])
    assert kd.report.auroc(negatives, positives) == pytest.approx(expected, abs=1e-12)
    assert kd.report.auroc(negatives, positives) == pytest.approx(
        np_auroc(negatives, positives), abs=1e-12
    )


def test_predictive_entropy_of_known_distributions():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(
        kd.report.predictive_entropy(probs), [0.0, np.log(3), np.log(2)], atol=1e-12
    )
    with pytest.raises(ValueError, match="`probs` must hold probabilities"):
        kd.report.predictive_entropy([[2.0, -1.0]])


def test_bias_section_says_the_sharper_student_is_more_confident_off_the_data(
    models, tmp_path
):
    report = kd.report.compare(
        models["teacher"],
        models["student"],
        (X, Y),
        baseline=models["baseline"],
        ood_data=X_OOD,
        latency_runs=0,
    )
    ood = report.ood
    assert ood["student_more_confident"] is True
    gap = (
        ood["models"]["student"]["entropy_ood"]
        - ood["models"]["teacher"]["entropy_ood"]
    )
    assert ood["entropy_gap"] == pytest.approx(gap) and gap < 0
    row = "OOD confidence: the student is more confident than its teacher"
    text, markdown, page = str(report), report.to_markdown(), report.to_html()
    for rendering in (text, markdown, page):
        assert row in rendering
        assert "Out-of-distribution inputs" in rendering
    # The row sits in the bias section: after its title.
    assert markdown.index(row) > markdown.index("## Where distillation made a class")
    assert f"{ood['models']['student']['auroc']:.4f}" in text
    written = report.save(tmp_path, formats=("json",))
    with open(written["json"]) as f:
        assert json.load(f)["ood"] == json.loads(json.dumps(ood))


def test_a_student_no_surer_than_its_teacher_is_said_so(models):
    # Swapped: the sharper model is the teacher now.
    report = kd.report.compare(
        models["student"], models["teacher"], (X, Y), ood_data=X_OOD, latency_runs=0
    )
    assert report.ood["student_more_confident"] is False
    assert set(report.ood["models"]) == {"teacher", "student"}
    row = "OOD confidence: the student is not more confident than its teacher"
    markdown = report.to_markdown()
    # No baseline: the bias section holds the OOD row alone.
    assert "## Where distillation made the student worse" in markdown
    for rendering in (str(report), markdown, report.to_html()):
        assert row in rendering


@pytest.mark.parametrize(
    "ood_data",
    [
        lambda: tf.data.Dataset.from_tensor_slices(X_OOD).batch(7),
        lambda: tf.data.Dataset.from_tensor_slices(X_OOD),
        lambda: (X_OOD,),
        lambda: (X_OOD, np.zeros(len(X_OOD))),  # labels are ignored
    ],
)
def test_ood_data_kinds_give_the_same_figures(models, ood_data):
    def figures(data):
        return kd.report.compare(
            models["teacher"],
            models["student"],
            (X, Y),
            ood_data=data,
            latency_runs=0,
            batch_size=8,
        ).ood

    expected, got = figures(X_OOD), figures(ood_data())
    assert got["num_samples"] == expected["num_samples"]
    for name, row in expected["models"].items():
        for key, value in row.items():
            assert got["models"][name][key] == pytest.approx(value, abs=1e-6)


def test_without_ood_data_the_report_has_no_ood_section(models):
    report = kd.report.compare(
        models["teacher"], models["student"], (X, Y), latency_runs=0
    )
    assert report.ood is None and report.to_dict()["ood"] is None
    for rendering in (str(report), report.to_markdown(), report.to_html()):
        assert "OOD confidence" not in rendering
        assert "Out-of-distribution" not in rendering


@pytest.mark.parametrize(
    "ood_data",
    [
        X_OOD[:, :4],  # too few features
        X_OOD[:, :, None],  # an extra axis
        X_OOD.reshape(-1, 2, 3),  # images, not vectors
    ],
)
def test_wrongly_shaped_ood_data_is_refused_before_anything_runs(models, ood_data):
    with pytest.raises(ValueError, match="Argument `ood_data` has samples of shape"):
        kd.report.compare(
            models["teacher"], models["student"], (X, Y), ood_data=ood_data
        )


def test_ood_data_of_the_wrong_type_or_empty_is_refused(models):
    with pytest.raises(TypeError, match="Argument `ood_data` must be samples"):
        kd.report.compare(models["teacher"], models["student"], (X, Y), ood_data="x")
    with pytest.raises(ValueError, match="`ood_data` yielded no samples"):
        kd.report.compare(
            models["teacher"], models["student"], (X, Y), ood_data=X_OOD[:0]
        )
