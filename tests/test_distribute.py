"""The distillers under tf.distribute: two replicas give one replica's result.

Logical devices must be configured before TensorFlow starts, so the check
runs in a fresh interpreter (in the flavour of this pytest process).
"""

import os
import subprocess
import sys
import textwrap

import pytest

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

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, 64)

    def mlp(h, l2=0.0):
        # The L2 penalty checks that regularization losses are scaled per
        # replica as Keras scales them (else their gradient doubles).
        regularizer = keras.regularizers.L2(l2) if l2 else None
        return keras.Sequential([keras.Input((8,)),
                                 keras.layers.Dense(h, activation="relu",
                                                    kernel_regularizer=regularizer,
                                                    name="hidden"),
                                 keras.layers.Dense(3)])

    def build(kind, t, s):
        sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if kind == "mutual":
            m = kd.MutualLearning([t, s])
            m.compile(optimizer=keras.optimizers.SGD(0.1), loss=sce,
                      metrics=["accuracy"], temperature=2.0, alpha=0.5)
            return m
        online = kind == "online"
        extra = {}
        if kind == "features":  # a projected hint (an adapter) and two teachers
            t = [t, mlp(8)]
            extra = dict(teacher_weights=[1.0, 2.0], features=[
                kd.FeatureMatch("hidden", "hidden"),
                kd.FeatureMatch("hidden", "hidden", loss="cosine", teacher=1)])
        if online:
            d = kd.OnlineDistiller(teacher=t, student=s, teacher_alpha=0.3, **extra)
        else:
            d = kd.Distiller(teacher=t, student=s, **extra)
        d.compile(optimizer=keras.optimizers.SGD(0.1), loss=sce,
                  metrics=["accuracy"], alpha=0.5)
        return d

    kind = sys.argv[1]
    keras.utils.set_random_seed(0)
    teacher_w, student_w = mlp(16, 0.01).get_weights(), mlp(4, 0.01).get_weights()
    second_w, adapter_w = mlp(8).get_weights(), None
    results = {}
    strategies = {
        "default": tf.distribute.get_strategy(),
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    }
    for name, strategy in strategies.items():
        with strategy.scope():
            t, s = mlp(16, 0.01), mlp(4, 0.01)
            t.set_weights(teacher_w)
            s.set_weights(student_w)
            d = build(kind, t, s)
            if kind == "features":  # the same initial adapter in both runs
                d.teacher[1].set_weights(second_w)
                adapter_w = adapter_w or [a.get_weights() for a in d.adapters]
                for adapter, weights in zip(d.adapters, adapter_w):
                    adapter.set_weights(weights)
        logs = d.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
        history = d.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        adapters = [w for a in getattr(d, "adapters", []) for w in a.get_weights()]
        results[name] = (logs, {k: v[0] for k, v in history.history.items()},
                         s.get_weights() + t.get_weights() + adapters)
    assert strategies["mirrored"].num_replicas_in_sync == 2
    one, two = results["default"], results["mirrored"]
    for i in (0, 1):
        assert set(one[i]) == set(two[i])
        for key in one[i]:
            np.testing.assert_allclose(two[i][key], one[i][key], rtol=1e-4, err_msg=key)
    for a, b in zip(one[2], two[2]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    moved = any(not np.allclose(a, b) for a, b in zip(one[2][:4], student_w))
    assert moved, "the student did not train"
    print("SAME")
    """
)


@pytest.mark.parametrize("kind", ["offline", "online", "mutual", "features"])
def test_mirrored_strategy_matches_single_device(kind):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]


SEQUENCE_SCRIPT = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    rng = np.random.default_rng(0)
    x = rng.integers(1, 9, (64, 8))
    # Padding repeats every 16 rows, so that each replica's half of a batch of
    # 32 holds as many real tokens as the other (each averages over its own).
    for i in range(64):
        x[i, 8 - i % 16 // 3:] = 0
    y = rng.integers(1, 9, (64, 8))
    weights = (x > 0).astype("float32")

    def lm(width, name):
        inputs = keras.Input((8,), dtype="int32")
        h = keras.layers.Embedding(9, width, name=f"{name}_emb")(inputs)
        h = keras.layers.Dense(width, activation="tanh", name=f"{name}_hidden")(h)
        return keras.Model(inputs, keras.layers.Dense(9)(h), name=name)

    keras.utils.set_random_seed(0)
    init = {"t": lm(8, "t").get_weights(), "s": lm(4, "s").get_weights()}
    results, adapter_w = {}, None
    strategies = {
        "default": tf.distribute.get_strategy(),
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    }
    for name, strategy in strategies.items():
        with strategy.scope():
            t, s = lm(8, "t"), lm(4, "s")
            t.set_weights(init["t"])
            s.set_weights(init["s"])
            d = kd.Distiller(t, s, features=[kd.FeatureMatch("t_hidden", "s_hidden")])
            adapter_w = adapter_w or d.adapters[0].get_weights()
            d.adapters[0].set_weights(adapter_w)
            d.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      distillation_loss=kd.losses.KLDivergence(2.0), alpha=0.5)
        logs = d.evaluate(x, y, sample_weight=weights, batch_size=32, verbose=0,
                          return_dict=True)
        history = d.fit(x, y, sample_weight=weights, batch_size=32, epochs=1,
                        shuffle=False, verbose=0)
        results[name] = (logs, {k: v[0] for k, v in history.history.items()},
                         s.get_weights() + d.adapters[0].get_weights())
    one, two = results["default"], results["mirrored"]
    for i in (0, 1):
        for key in one[i]:
            np.testing.assert_allclose(two[i][key], one[i][key], rtol=1e-4, err_msg=key)
    for a, b in zip(one[2], two[2]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    print("SAME")
    """
)


def test_mirrored_strategy_with_padded_sequences_and_a_hidden_state_tap():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", SEQUENCE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]
