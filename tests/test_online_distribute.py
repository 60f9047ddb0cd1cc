"""Online distillation under tf.distribute and under mixed precision.

`MutualLearning` and `OnlineDistiller` give one device's result on two
replicas (padded sequences, and mixed_float16), and under `mixed_float16`
each peer's loss is scaled and its gradients unscaled as Keras does for a
plain model: a step follows the float32 one, an overflowing step is skipped.
The two-replica checks need logical devices configured before TensorFlow
starts, so they run in a fresh interpreter (in this pytest process's flavour).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp, np_log_softmax
from keras_kd.backend import keras

# ---------------------------------------------------------------------------
# Two replicas against one device
# ---------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    kind = sys.argv[1]
    rng = np.random.default_rng(0)
    if kind == "mutual_mixed":
        keras.mixed_precision.set_global_policy("mixed_float16")
        x = rng.normal(size=(64, 8)).astype("float32")
        y = rng.integers(0, 3, 64)
        weights = None

        def make(width, name):
            return keras.Sequential([
                keras.Input((8,)),
                keras.layers.Dense(width, activation="relu", name=f"{name}_hidden"),
                keras.layers.Dense(3)], name=name)
    else:
        x = rng.integers(1, 9, (64, 8))
        # Padding repeats every 16 rows, so that each replica's half of a
        # batch of 32 holds as many real tokens as the other (each averages
        # over its own).
        for i in range(64):
            x[i, 8 - i % 16 // 3:] = 0
        y = rng.integers(1, 9, (64, 8))
        weights = (x > 0).astype("float32")

        def make(width, name):
            inputs = keras.Input((8,), dtype="int32")
            h = keras.layers.Embedding(9, width, name=f"{name}_emb")(inputs)
            h = keras.layers.Dense(width, activation="tanh", name=f"{name}_hidden")(h)
            return keras.Model(inputs, keras.layers.Dense(9)(h), name=name)

    def build(a, b):
        sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if kind.startswith("mutual"):
            m = kd.MutualLearning([a, b])
            m.compile(optimizer=keras.optimizers.SGD(0.1), loss=sce,
                      metrics=["accuracy"], temperature=2.0, alpha=0.5)
            return m
        d = kd.OnlineDistiller(teacher=a, student=b, teacher_alpha=0.3)
        d.compile(optimizer=keras.optimizers.SGD(0.1), loss=sce,
                  distillation_loss=kd.losses.KLDivergence(2.0), alpha=0.5)
        return d

    keras.utils.set_random_seed(0)
    init = [make(8, "a").get_weights(), make(4, "b").get_weights()]
    results = {}
    strategies = {
        "default": tf.distribute.get_strategy(),
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    }
    for name, strategy in strategies.items():
        with strategy.scope():
            a, b = make(8, "a"), make(4, "b")
            a.set_weights(init[0])
            b.set_weights(init[1])
            model = build(a, b)
        logs = model.evaluate(x, y, sample_weight=weights, batch_size=32, verbose=0,
                              return_dict=True)
        history = model.fit(x, y, sample_weight=weights, batch_size=32, epochs=2,
                            shuffle=False, verbose=0)
        results[name] = (logs, {k: v[-1] for k, v in history.history.items()},
                         a.get_weights() + b.get_weights())
    assert strategies["mirrored"].num_replicas_in_sync == 2
    rtol, atol = (2e-3, 1e-3) if kind == "mutual_mixed" else (1e-4, 1e-5)
    one, two = results["default"], results["mirrored"]
    for i in (0, 1):
        assert set(one[i]) == set(two[i])
        for key in one[i]:
            # float16 logits on two replicas may round a near tie the other
            # way: an accuracy may differ by a sample or two
            slack = 2 / 64 if kind == "mutual_mixed" and "accuracy" in key else 0
            np.testing.assert_allclose(two[i][key], one[i][key], rtol=rtol,
                                       atol=slack, err_msg=key)
    for w, (p, q) in enumerate(zip(one[2], two[2])):
        np.testing.assert_allclose(q, p, rtol=rtol, atol=atol, err_msg=str(w))
        assert np.all(np.isfinite(q))
    for model_init, trained in ((init[0], one[2][:len(init[0])]),
                                (init[1], one[2][len(init[0]):])):
        assert any(not np.allclose(p, q) for p, q in zip(model_init, trained)), (
            "a model did not train")
    print("SAME")
    """
)


@pytest.mark.parametrize(
    "kind", ["mutual_sequences", "online_sequences", "mutual_mixed"]
)
def test_two_replicas_give_the_result_of_one_device(kind):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------------------
# Mixed precision: loss scaling
# ---------------------------------------------------------------------------


def _loss_scale(optimizer):
    """The current loss scale (Keras 3: `dynamic_scale`, tf_keras: `loss_scale`)."""
    scale = getattr(optimizer, "dynamic_scale", None)
    if scale is None:
        scale = optimizer.loss_scale
    return float(np.asarray(scale))


def _np_softmax(z):
    return np.exp(np_log_softmax(z))


def _np_bias_step(z, other, y, lr, alpha, temperature):
    """Reference: the SGD step of a peer's output bias in one full-batch step.

    d/dz of `T**2 * KL(softmax(other/T) || softmax(z/T))` is
    `T * (softmax(z/T) - softmax(other/T))`; of the sparse cross-entropy,
    `softmax(z) - onehot(y)`; both averaged over the batch.
    """
    z, other = np.asarray(z, np.float64), np.asarray(other, np.float64)
    soft = temperature * (
        _np_softmax(z / temperature) - _np_softmax(other / temperature)
    )
    hard = _np_softmax(z) - np.eye(z.shape[-1])[y]
    return -lr * (alpha * soft + (1.0 - alpha) * hard).mean(0)


def _one_mutual_step(x, y, policy, initial, lr=0.5):
    keras.mixed_precision.set_global_policy(policy)
    peers = [make_mlp(8, name=f"peer{i}") for i in range(2)]
    for peer, weights in zip(peers, initial):
        peer.set_weights(weights)
    m = kd.MutualLearning(peers)
    m.compile(
        optimizer=keras.optimizers.SGD(lr), loss=hard_loss(), temperature=2.0, alpha=0.5
    )
    outputs = [np.asarray(p(x, training=True), np.float64) for p in peers]
    logs = m.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    return m, peers, outputs, {k: v[0] for k, v in logs.items()}


def test_mutual_step_under_mixed_float16_follows_the_float32_step(data):
    x, y = data
    initial = [make_mlp(8).get_weights() for _ in range(2)]
    runs = {p: _one_mutual_step(x, y, p, initial) for p in ("float32", "mixed_float16")}
    m, peers, outputs, logs = runs["mixed_float16"]
    assert peers[0](x[:1]).dtype == "float16"  # the policy is in force
    for optimizer in m.peer_optimizers:
        assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        assert _loss_scale(optimizer) == 2.0**15  # a finite step keeps the scale
    assert m.peer_optimizers[0] is m.optimizer
    assert m.peer_optimizers[1] is not m.optimizer
    for policy, tolerance in (("float32", 1e-4), ("mixed_float16", 1e-2)):
        m, peers, outputs, logs = runs[policy]
        for i, peer in enumerate(peers):
            # each peer's update, unscaled, against numpy's
            expected = _np_bias_step(outputs[i], outputs[1 - i], y, 0.5, 0.5, 2.0)
            moved = peer.get_weights()[3] - initial[i][3]
            np.testing.assert_allclose(moved, expected, rtol=tolerance, atol=1e-4)
    f32, f16 = runs["float32"], runs["mixed_float16"]
    assert set(f32[3]) == set(f16[3])
    for key in f32[3]:
        assert f16[3][key] == pytest.approx(f32[3][key], rel=5e-3), key
    for i in range(2):
        for start, a, b in zip(
            initial[i], f32[1][i].get_weights(), f16[1][i].get_weights()
        ):
            assert np.all(np.isfinite(b)) and b.dtype == np.float32
            step = np.abs(a - start).max()
            assert np.abs(a - b).max() <= 1e-2 * step + 1e-4


def test_overflowing_mixed_float16_step_is_skipped_as_for_a_plain_model(data):
    x, y = data
    keras.mixed_precision.set_global_policy("mixed_float16")

    def scaled_sgd():  # a scale so large that float16 gradients overflow
        return keras.mixed_precision.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0**40
        )

    plain = make_mlp(8)
    plain.compile(optimizer=scaled_sgd(), loss=hard_loss())
    peers = [make_mlp(8) for _ in range(3)]
    m = kd.MutualLearning(peers)
    m.compile(optimizer=scaled_sgd(), loss=hard_loss(), alpha=0.5)
    before = [p.get_weights() for p in [plain] + peers]
    plain.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    logs = m.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])  # the loss itself is float32, finite
    assert _loss_scale(plain.optimizer) == 2.0**39
    for optimizer in m.peer_optimizers:
        assert _loss_scale(optimizer) == 2.0**39
    for model, old in zip([plain] + peers, before):
        for a, b in zip(old, model.get_weights()):
            np.testing.assert_array_equal(a, b)
    # Halving by halving the scale comes down to one that fits, and each
    # peer trains again, its weights finite.
    for _ in range(40):
        m.train_on_batch(x, y)
    for peer, old in zip(peers, before[1:]):
        assert any(not np.array_equal(a, b) for a, b in zip(old, peer.get_weights()))
        assert all(np.all(np.isfinite(w)) for w in peer.get_weights())
    assert all(_loss_scale(o) < 2.0**30 for o in m.peer_optimizers)


def test_a_step_overflowing_in_one_peer_is_skipped_for_that_peer_alone(data):
    x, y = data
    keras.mixed_precision.set_global_policy("mixed_float16")
    peers = [make_mlp(8) for _ in range(2)]
    # Peer 1's large output kernel overflows its float16 gradients (the
    # loss scale times the kernel), not its logits.
    weights = peers[1].get_weights()
    weights[2] = weights[2] * 1000.0
    peers[1].set_weights(weights)
    m = kd.MutualLearning(peers)
    m.compile(optimizer=keras.optimizers.SGD(0.01), loss=hard_loss(), alpha=0.5)
    assert np.all(np.isfinite(np.asarray(peers[1](x), np.float32)))
    before = [p.get_weights() for p in peers]
    m.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert _loss_scale(m.peer_optimizers[0]) == 2.0**15
    assert _loss_scale(m.peer_optimizers[1]) == 2.0**14
    assert any(
        not np.array_equal(a, b) for a, b in zip(before[0], peers[0].get_weights())
    )
    for a, b in zip(before[1], peers[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_peers_under_mixed_float16_get_loss_scaling_whatever_the_cohort_policy(data):
    x, y = data
    keras.mixed_precision.set_global_policy("mixed_float16")
    peers = [make_mlp(8) for _ in range(2)]
    keras.mixed_precision.set_global_policy("float32")
    m = kd.MutualLearning(peers)  # the cohort itself is float32
    m.compile(optimizer="sgd", loss=hard_loss())
    assert all(
        isinstance(o, keras.mixed_precision.LossScaleOptimizer)
        for o in m.peer_optimizers
    )
    m.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert all(np.all(np.isfinite(w)) for p in peers for w in p.get_weights())
    # A float32 cohort keeps plain optimizers.
    m = kd.MutualLearning([make_mlp(8), make_mlp(8)])
    m.compile(optimizer="sgd", loss=hard_loss())
    assert not any(
        isinstance(o, keras.mixed_precision.LossScaleOptimizer)
        for o in m.peer_optimizers
    )


def test_online_distiller_skips_an_overflowing_mixed_float16_step(data):
    x, y = data
    keras.mixed_precision.set_global_policy("mixed_float16")
    teacher, student = make_mlp(16), make_mlp(4)
    d = kd.OnlineDistiller(teacher=teacher, student=student)
    d.compile(
        optimizer=keras.mixed_precision.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0**40
        ),
        loss=hard_loss(),
        alpha=0.5,
    )
    before = teacher.get_weights() + student.get_weights()
    d.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert _loss_scale(d.optimizer) == 2.0**39
    for a, b in zip(before, teacher.get_weights() + student.get_weights()):
        np.testing.assert_array_equal(a, b)
    for _ in range(40):  # the scale comes down, halving by halving
        d.train_on_batch(x, y)
    after = teacher.get_weights() + student.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert all(np.all(np.isfinite(w)) for w in after)


def test_mixed_float16_cohort_round_trips_through_a_keras_file(data, tmp_path):
    x, y = data
    keras.mixed_precision.set_global_policy("mixed_float16")
    m = kd.MutualLearning([make_mlp(8), make_mlp(8)])
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss=hard_loss(), alpha=0.5)
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "cohort.keras")
    m.save(path)
    restored = keras.saving.load_model(path)
    assert all(
        isinstance(o, keras.mixed_precision.LossScaleOptimizer)
        for o in restored.peer_optimizers
    )
    np.testing.assert_array_equal(
        restored.predict(x, verbose=0), m.predict(x, verbose=0)
    )
    restored.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert all(np.all(np.isfinite(w)) for p in restored.peers for w in p.get_weights())
