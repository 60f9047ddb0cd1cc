"""The Distiller under MultiWorkerMirroredStrategy: two workers, one result.

Two worker processes on 127.0.0.1 (one CPU replica each, free ports, a
`TF_CONFIG` per process) train a Distiller, with and without a feature tap
(an adapter), on the same global batch. Both must give what a third process
without a strategy gives: the same evaluation and training logs, and the
same student and adapter weights, to float tolerance. The three run at once,
each a fresh interpreter (the strategy must exist before TensorFlow runs
anything) in the flavour of this pytest process, which they inherit through
`TF_USE_LEGACY_KERAS`; they save their results and the comparisons are made
here.

Data: numpy arrays made into a `tf.data.Dataset` batched with the global
batch size, auto-sharded by DATA: `tf.distribute` rebatches each global
batch into per-replica ones and gives each worker its own, so a step's
gradient is the one of the whole global batch, as in the reference. FILE
sharding is impossible for in-memory data, and OFF makes every worker read
every row (checked: the results then differ from the reference).
"""

import textwrap

import numpy as np

from conftest import run_workers

WORKER_SCRIPT = textwrap.dedent(
    """
    import contextlib
    import sys
    import tensorflow as tf

    out, role = sys.argv[1], sys.argv[2]
    if role == "worker":  # first of all: the cluster, from TF_CONFIG
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        scope = strategy.scope
    else:  # the reference: one process, no strategy
        strategy, scope = tf.distribute.get_strategy(), contextlib.nullcontext

    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")

    def dataset():
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
        return data.with_options(options)

    def mlp(h):
        # The L2 penalty checks that regularization losses are scaled per
        # replica across workers too.
        return keras.Sequential([
            keras.Input((8,)),
            keras.layers.Dense(h, activation="relu", name="hidden",
                               kernel_regularizer=keras.regularizers.L2(0.01)),
            keras.layers.Dense(3)])

    keras.utils.set_random_seed(0)
    init = {"t": mlp(16).get_weights(), "s": mlp(4).get_weights()}

    results = {"replicas": np.int64(strategy.num_replicas_in_sync),
               "initial/0": init["s"][0]}
    for kind in ("logits", "features"):
        with scope():
            t, s = mlp(16), mlp(4)
            t.set_weights(init["t"])
            s.set_weights(init["s"])
            # a projected hint: an adapter takes the student's 4 units to 16
            hint = kd.FeatureMatch("hidden", "hidden")
            d = kd.Distiller(teacher=t, student=s,
                             features=[hint] if kind == "features" else [])
            draw = np.random.default_rng(1)  # the same adapter everywhere
            for adapter in d.adapters:
                adapter.set_weights([draw.normal(0, 0.3, w.shape).astype(w.dtype)
                                     for w in adapter.get_weights()])
            d.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], alpha=0.5,
                      distillation_loss=kd.losses.KLDivergence(2.0))
        logs = d.evaluate(dataset(), verbose=0, return_dict=True)
        history = d.fit(dataset(), epochs=2, verbose=0)
        weights = s.get_weights() + [w for a in d.adapters for w in a.get_weights()]
        for key, value in logs.items():
            results[f"{kind}/evaluate/{key}"] = np.float64(value)
        for key, values in history.history.items():
            results[f"{kind}/fit/{key}"] = np.asarray(values, np.float64)
        for i, w in enumerate(weights):
            results[f"{kind}/weights/{i}"] = w
    np.savez(out, **results)
    print("DONE")
    """
)

TIMEOUT = 240  # seconds for all three processes; each takes about 10


def _run(tmp_path, workers=2):
    """The reference and `workers` workers at once (conftest.run_workers)."""
    return run_workers(tmp_path, WORKER_SCRIPT, workers, TIMEOUT)


def test_two_workers_give_the_result_of_one_process(tmp_path):
    results = _run(tmp_path)
    replicas = {name: int(result.pop("replicas")) for name, result in results.items()}
    assert replicas == {"single": 1, "worker0": 2, "worker1": 2}
    single = results.pop("single")
    for kind in ("logits", "features"):
        assert f"{kind}/fit/loss" in single and f"{kind}/evaluate/loss" in single
        assert not np.allclose(single[f"{kind}/weights/0"], single["initial/0"]), (
            "the student did not train"
        )
    assert "features/fit/feature_loss" in single
    assert "features/weights/4" in single, "no adapter weights"
    for worker, result in results.items():
        assert set(result) == set(single)
        for key, value in single.items():
            np.testing.assert_allclose(
                result[key], value, rtol=1e-4, atol=1e-5, err_msg=f"{worker}: {key}"
            )
    # The workers hold one model: their weights agree to the last bit.
    for key, value in results["worker0"].items():
        if "/weights/" in key:
            np.testing.assert_array_equal(results["worker1"][key], value, err_msg=key)
