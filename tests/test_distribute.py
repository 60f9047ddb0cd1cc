"""The Distiller under tf.distribute: two replicas give one replica's result.

Logical devices must be configured before TensorFlow starts, so the check
runs in a fresh interpreter (in the flavour of this pytest process).
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
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

    def mlp(h):
        return keras.Sequential([keras.Input((8,)),
                                 keras.layers.Dense(h, activation="relu"),
                                 keras.layers.Dense(3)])

    keras.utils.set_random_seed(0)
    teacher_w, student_w = mlp(16).get_weights(), mlp(4).get_weights()
    results = {}
    strategies = {
        "default": tf.distribute.get_strategy(),
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    }
    for name, strategy in strategies.items():
        with strategy.scope():
            t, s = mlp(16), mlp(4)
            t.set_weights(teacher_w)
            s.set_weights(student_w)
            d = kd.Distiller(teacher=t, student=s)
            d.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], alpha=0.5)
        logs = d.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
        history = d.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        results[name] = (logs, {k: v[0] for k, v in history.history.items()},
                         s.get_weights())
    assert strategies["mirrored"].num_replicas_in_sync == 2
    one, two = results["default"], results["mirrored"]
    for i in (0, 1):
        assert set(one[i]) == set(two[i])
        for key in one[i]:
            np.testing.assert_allclose(two[i][key], one[i][key], rtol=1e-4, err_msg=key)
    for a, b in zip(one[2], two[2]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    print("SAME")
    """
)


def test_mirrored_strategy_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]
