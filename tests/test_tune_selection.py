"""Tests for `kd.tune`'s budget of trials and its margin over the baseline.

The paired tests are checked on rigged per-example vectors against numpy
computed here another way; then through `tune` itself, on data rigged so
that the answer is known (see tests/test_tune.py): labels `argmax(x @ W)`,
a teacher right on every input, training labels shuffled so that the
labels alone teach nothing.
"""

import itertools
import math

import numpy as np
import pytest

from _tune_rig import N_IN, N_OUT, hard_loss, mapping, split, student_fn
from keras_kd.backend import keras, tf

pytest.importorskip("keras_tuner")

from keras_kd._tune_selection import (
    correct,
    mcnemar,
    paired_z,
    per_example_losses,
)
from keras_kd.tune import BUDGET_RECIPES, TuneResult, tune

SEED = 0
LR = 0.05
Z = 1.645


# ---------------------------------------------------------------------------
# The tests on per-example values
# ---------------------------------------------------------------------------


def _rigged_pairs(n, b, c, seed=0):
    """Correctness of a baseline and a trial on `n` examples: `b` only the
    baseline gets right, `c` only the trial, the rest split between both
    right and both wrong; in a shuffled order."""
    both = (n - b - c) // 2
    base = [True] * b + [False] * c + [True] * both + [False] * (n - b - c - both)
    trial = [False] * b + [True] * c + [True] * both + [False] * (n - b - c - both)
    order = np.random.default_rng(seed).permutation(n)
    return np.array(base)[order], np.array(trial)[order]


@pytest.mark.parametrize(
    "n, b, c",
    [
        (100, 10, 18),  # better by 8 examples; the margin is 8.7: noise
        (100, 10, 25),  # better by 15; the margin is 9.7: significant
        (250, 0, 1),  # one image better: 0.4 points, the margin 0.66 points
        (250, 0, 3),  # 3 > 1.645 * sqrt(3) = 2.85
        (250, 0, 2),  # 2 < 1.645 * sqrt(2) = 2.33
        (100, 20, 10),  # worse
        (100, 0, 0),  # the same verdicts
    ],
)
def test_mcnemar_margin_and_decision(n, b, c):
    base, trial = _rigged_pairs(n, b, c)
    # Independently: the 2x2 table of verdicts, and the accuracies' gain.
    table = np.zeros((2, 2), int)
    for u, v in zip(base.astype(int), trial.astype(int)):
        table[u, v] += 1
    only_base, only_trial = table[1, 0], table[0, 1]
    assert (only_base, only_trial) == (b, c)
    gain = trial.mean() - base.mean()
    expected_margin = Z * math.sqrt(only_base + only_trial) / n

    result = mcnemar(base, trial)
    assert result.margin == pytest.approx(expected_margin, rel=1e-12)
    # Replaces the baseline iff the accuracy gain exceeds the margin.
    assert result.significant == (gain > expected_margin)
    z = (only_trial - only_base) / math.sqrt(b + c) if b + c else 0.0
    assert result.significant == (z > Z)


def test_mcnemar_gain_against_margin_on_random_verdicts():
    rng = np.random.default_rng(1)
    decisions = set()
    for _ in range(200):
        n = int(rng.integers(20, 300))
        base = rng.random(n) < 0.7
        trial = np.where(rng.random(n) < 0.15, ~base, base)  # some flipped
        trial |= rng.random(n) < rng.uniform(0, 0.2)  # some more right
        result = mcnemar(base, trial)
        discordant = np.sum(base != trial)
        assert result.margin == pytest.approx(Z * np.sqrt(discordant) / n)
        assert result.significant == (trial.mean() - base.mean() > result.margin)
        decisions.add(result.significant)
    assert decisions == {True, False}  # the vectors exercised both outcomes


@pytest.mark.parametrize("shift, significant", [(0.01, False), (0.2, True)])
def test_paired_z_on_losses(shift, significant):
    """Per-example losses: the trial lower by `shift` on average, with noise
    of std 0.5 over 100 examples, so a margin near 1.645 * 0.5 / 10."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0.5, 2.0, size=100)
    noise = rng.normal(0.0, 0.5, size=100)
    trial = base - shift - (noise - noise.mean())  # mean improvement: shift
    d = [float(u - v) for u, v in zip(base, trial)]  # improvement (lower loss)
    mean = sum(d) / len(d)
    variance = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    expected_margin = Z * math.sqrt(variance) / math.sqrt(len(d))

    result = paired_z(base, trial, lower_is_better=True)
    assert result.margin == pytest.approx(expected_margin, rel=1e-9)
    assert mean == pytest.approx(shift)
    assert result.significant == (mean > expected_margin) == significant
    # The same values read as "higher is better": the trial is worse.
    assert not paired_z(base, trial, lower_is_better=False).significant


def test_paired_z_needs_two_examples():
    result = paired_z([1.0], [0.0])
    assert result.margin == math.inf and not result.significant


def _keras_per_example(fn, y, y_pred, **kwargs):
    return np.asarray(fn(tf.constant(y), tf.constant(y_pred), **kwargs)).reshape(-1)


def test_per_example_correctness_is_the_keras_metrics():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 4)).astype("float32")
    labels = rng.integers(0, 4, size=50)
    one_hot = np.eye(4, dtype="float32")[rng.integers(0, 4, size=50)]
    probs = rng.random((50, 1)).astype("float32")
    binary = (rng.random(50) < 0.5).astype("float32")
    cases = [
        ("sparse", labels, logits, keras.metrics.sparse_categorical_accuracy),
        ("sparse", labels[:, None], logits, keras.metrics.sparse_categorical_accuracy),
        ("categorical", one_hot, logits, keras.metrics.categorical_accuracy),
        ("binary", binary[:, None], probs, keras.metrics.binary_accuracy),
        # "accuracy": Keras's choice from the shapes.
        ("auto", labels, logits, keras.metrics.sparse_categorical_accuracy),
        ("auto", one_hot, logits, keras.metrics.categorical_accuracy),
        ("auto", binary[:, None], probs, keras.metrics.binary_accuracy),
    ]
    for kind, y, y_pred, fn in cases:
        ours = correct(kind, y, y_pred)
        assert ours.shape == (50,)
        np.testing.assert_array_equal(ours, _keras_per_example(fn, y, y_pred) == 1)
    # A BinaryAccuracy's threshold is read, as Keras reads it.
    np.testing.assert_array_equal(
        correct("binary", binary[:, None], probs, threshold=0.8),
        _keras_per_example(
            keras.metrics.binary_accuracy, binary[:, None], probs, threshold=0.8
        )
        == 1,
    )


def test_per_example_losses_average_to_the_keras_loss():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(20, 5, 3)).astype("float32")  # a sequence
    labels = rng.integers(0, 3, size=(20, 5))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    none = type(loss).from_config(dict(loss.get_config(), reduction="none"))
    values = per_example_losses(none, labels, logits)
    assert values.shape == (20,)
    # numpy: log-softmax cross-entropy, averaged per example
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(values, -picked.mean(-1), rtol=1e-5)
    assert values.mean() == pytest.approx(float(loss(labels, logits)), rel=1e-5)


# ---------------------------------------------------------------------------
# The ranked recipes
# ---------------------------------------------------------------------------


def test_budget_recipes_cover_the_grid_once():
    keys = ("objective", "temperature", "alpha")
    seen = [tuple(r[k] for k in keys) for r in BUDGET_RECIPES]
    grid = itertools.product(
        ("dist", "kl", "standardized_kl"), (1.0, 2.0, 4.0), (0.5, 0.9, 1.0)
    )
    assert sorted(seen) == sorted(grid) and len(set(seen)) == 27
    assert all(r["mixup"] is False for r in BUDGET_RECIPES)
    assert seen[:3] == [("dist", 4.0, 0.5), ("kl", 4.0, 0.5), ("dist", 2.0, 1.0)]


# ---------------------------------------------------------------------------
# Through `tune`
# ---------------------------------------------------------------------------


def _teacher():
    teacher = keras.Sequential([keras.Input((N_IN,)), keras.layers.Dense(N_OUT)])
    teacher.set_weights([mapping() * 10.0, np.zeros(N_OUT, "float32")])
    return teacher


@pytest.fixture(scope="module")
def rig():
    """Training batches with shuffled labels (a dataset: no shuffling in
    `fit`, so the baseline can be replayed) and numpy validation data."""
    x, y = split(256, 1)
    y_shuffled = np.random.default_rng(2).permutation(y)
    train = tf.data.Dataset.from_tensor_slices((x, y_shuffled)).batch(64)
    return train, split(128, 3)


def _tune(train, val, **kwargs):
    settings = dict(loss=hard_loss(), optimizer=keras.optimizers.Adam(LR), seed=SEED)
    settings.update(kwargs)
    return tune(_teacher(), student_fn, train, val, batch_size=64, **settings)


def _replayed_baseline(train, epochs):
    """The baseline, trained again as plain Keras trains it."""
    keras.utils.set_random_seed(SEED)
    model = student_fn()
    model.compile(optimizer=keras.optimizers.Adam(LR), loss=hard_loss())
    keras.utils.set_random_seed(SEED)
    model.fit(train, epochs=epochs, shuffle=False, verbose=0)
    return model


def _check_consistent(result: TuneResult):
    """The returned trial agrees with the records' margins and verdicts."""
    sign = 1.0 if result.mode == "max" else -1.0
    distilled = result.trials[1:]
    for t in distilled:
        gain = sign * (t["score"] - result.baseline_score)
        assert isinstance(t["margin"], float) and isinstance(t["significant"], bool)
        if t["significant"]:
            assert gain > t["margin"] >= 0.0
    chosen = result.config
    if chosen["is_baseline"]:
        assert not any(t["significant"] for t in distilled)
    else:
        assert chosen["significant"]
        assert sign * (chosen["score"] - result.baseline_score) > chosen["margin"]
        cleared = [sign * t["score"] for t in distilled if t["significant"]]
        assert sign * chosen["score"] == max(cleared)
    best = max(distilled, key=lambda t: sign * t["score"])
    assert result.margin == best["margin"]
    assert sum(t["selected"] for t in result.trials) == 1


def test_budget_of_trials_with_the_paired_accuracy_margin(rig, capsys):
    train, (xv, yv) = rig
    result = _tune(train, (xv, yv), budget=2, max_epochs=3, verbose=1)
    assert result.selection == "paired"
    # Exactly the baseline and the first two ranked recipes, no Hyperband.
    assert [t["trial_id"] for t in result.trials] == ["baseline", "r00", "r01"]
    keys = ("objective", "temperature", "alpha", "mixup")
    for t, recipe in zip(result.trials[1:], BUDGET_RECIPES):
        assert {k: t[k] for k in keys} == recipe
        assert (t["epochs"], t["initial_epoch"]) == (3, 0)
    assert result.trials[0]["margin"] is None
    _check_consistent(result)
    # The rig: a perfect teacher, labels that teach nothing.
    assert not result.config["is_baseline"]

    # The selected trial's margin, from numpy: McNemar between the replayed
    # baseline and the returned student.
    base = _replayed_baseline(train, 3).predict(xv, verbose=0).argmax(-1) == yv
    mine = result.student.predict(xv, verbose=0).argmax(-1) == yv
    assert base.mean() == pytest.approx(result.baseline_score)
    discordant = np.sum(base != mine)
    assert result.config["margin"] == pytest.approx(Z * np.sqrt(discordant) / 128)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("margin" in line for line in lines[1:])
    table = result.table().splitlines()
    assert "margin" in table[0] and "cleared" in table[0]
    assert f"{result.config['margin']:.4f}" in next(
        line for line in table if "<- returned" in line
    )


def test_paired_hard_loss_margin_on_a_reshuffled_dataset(rig):
    """The validation batches come in a new order each pass: the baseline's
    and the trial's per-example losses must still be paired."""
    train, (xv, yv) = rig
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).shuffle(128, seed=5).batch(32)
    result = _tune(
        train, val, budget=1, max_epochs=3, monitor="val_hard_loss", mode="min"
    )
    assert result.selection == "paired"
    _check_consistent(result)
    assert not result.config["is_baseline"]  # the rig: a clear win

    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="none"
    )
    base = np.asarray(loss(yv, _replayed_baseline(train, 3).predict(xv, verbose=0)))
    mine = np.asarray(loss(yv, result.student.predict(xv, verbose=0)))
    assert base.mean() == pytest.approx(result.baseline_score, rel=1e-4)
    d = base - mine
    expected = Z * d.std(ddof=1) / np.sqrt(d.size)
    assert result.config["margin"] == pytest.approx(expected, rel=1e-3)


def test_margin_one_always_returns_the_baseline(rig):
    """No accuracy gains more than 1.0: even a clear win is refused."""
    train, val = rig
    result = _tune(train, val, budget=1, max_epochs=2, margin=1.0)
    assert result.selection == "fixed" and result.margin == 1.0
    assert result.config["is_baseline"]
    assert result.trials[1]["score"] > result.baseline_score  # it did win
    assert not result.trials[1]["significant"]
    _check_consistent(result)


def test_margin_zero_is_the_strict_rule_over_recipes_inside_the_space(rig):
    train, val = rig
    space = {"objective": ["kl", "standardized_kl"], "alpha": [0.5]}
    result = _tune(train, val, budget=2, max_epochs=1, margin=0.0, search_space=space)
    inside = [
        r
        for r in BUDGET_RECIPES
        if r["objective"] in space["objective"] and r["alpha"] == 0.5
    ]
    keys = ("objective", "temperature", "alpha", "mixup")
    assert [{k: t[k] for k in keys} for t in result.trials[1:]] == inside[:2]
    assert result.selection == "fixed"
    for t in result.trials[1:]:
        assert t["margin"] == 0.0
        assert t["significant"] == (t["score"] > result.baseline_score)
    strictly_better = [t for t in result.trials[1:] if t["significant"]]
    expected = max(strictly_better, key=lambda t: t["score"], default=None)
    assert result.config["trial_id"] == (
        "baseline" if expected is None else expected["trial_id"]
    )
    _check_consistent(result)


def test_auto_margin_is_fixed_zero_where_pairing_cannot_work(rig):
    """Top-2 accuracy gives no paired verdicts: 'auto' means 0.0 there."""
    train, val = rig
    result = _tune(
        train,
        val,
        budget=1,
        max_epochs=1,
        metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")],
        monitor="val_top2",
    )
    assert result.selection == "fixed"
    assert result.trials[1]["margin"] == 0.0
    _check_consistent(result)


# ---------------------------------------------------------------------------
# Bad arguments, refused before training
# ---------------------------------------------------------------------------

DATA = split(32, 1)


def _untouched_train_data():
    """A dataset that records whether training read it."""
    read = []

    def rows():
        read.append(True)
        yield from zip(*DATA)

    spec = (tf.TensorSpec((N_IN,), tf.float32), tf.TensorSpec((), tf.int64))
    return tf.data.Dataset.from_generator(rows, output_signature=spec).batch(8), read


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"budget": 0}, ValueError, r"`budget`.*at least 1.*budget=0"),
        ({"budget": -3}, ValueError, r"`budget`.*budget=-3"),
        ({"budget": True}, TypeError, r"`budget`.*budget=True"),
        ({"budget": 2.0}, TypeError, r"`budget`.*budget=2\.0"),
        ({"budget": 28}, ValueError, r"`budget`.*only 27"),
        (
            {"budget": 2, "search_space": {"mixup": [True]}},
            ValueError,
            r"`budget`.*only 0",
        ),
        (
            {"budget": 10, "search_space": {"objective": "dist", "alpha": 0.9}},
            ValueError,
            r"`budget`.*only 3",
        ),
        ({"budget": 2, "factor": 2}, ValueError, r"given twice.*factor=2"),
        ({"budget": 2, "max_trials": 2}, ValueError, r"given twice.*max_trials"),
        ({"budget": 2, "max_epochs": 0}, ValueError, "`max_epochs`"),
        ({"margin": -0.1}, ValueError, r"`margin`.*margin=-0\.1"),
        ({"margin": float("nan")}, ValueError, r"`margin`.*margin=nan"),
        ({"margin": "noise"}, ValueError, r"`margin`.*margin='noise'"),
        ({"margin": True}, TypeError, r"`margin`.*margin=True"),
        ({"margin": None}, TypeError, r"`margin`.*margin=None"),
        (
            {"margin": "paired", "metrics": ["mse"], "monitor": "val_mse"},
            ValueError,
            r"`margin`.*'val_mse'",
        ),
        (
            {"margin": "paired", "validation_data": (*DATA, np.ones(32))},
            ValueError,
            r"`margin`.*sample weights",
        ),
        (
            # a loss that averages the batch itself: no per-example values
            {
                "margin": "paired",
                "monitor": "val_hard_loss",
                "mode": "min",
                "loss": lambda y, p: tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(y, p, from_logits=True)
                ),
            },
            ValueError,
            r"`margin`.*one value per batch",
        ),
    ],
)
def test_bad_budget_and_margin_are_refused_before_training(kwargs, error, match):
    train, read = _untouched_train_data()
    arguments = dict(
        teacher=_teacher(),
        student_fn=student_fn,
        train_data=train,
        validation_data=DATA,
        loss=hard_loss(),
    )
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        tune(**arguments)
    assert not read
