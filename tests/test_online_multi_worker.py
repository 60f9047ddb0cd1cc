"""Online distillation under MultiWorkerMirroredStrategy: two workers, one result.

As tests/test_multi_worker.py does for the Distiller: two worker processes on
127.0.0.1 (one CPU replica each) and a third without a strategy train an
`OnlineDistiller` (teacher and student both learn) and a `MutualLearning`
cohort of two peers on the same global batch. Each worker's evaluation and
training logs and every weight of every model must equal the single
process's, to float tolerance, and the two workers must hold the same
weights to the last bit. See conftest.run_workers for how the processes run
and tests/test_multi_worker.py for why the data is sharded by DATA.
"""

import textwrap

import numpy as np
import pytest

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
    w = rng.uniform(0.5, 1.5, size=64).astype("float32")

    def dataset():
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)
        return data.with_options(options)

    def mlp(h, name):
        # The L2 penalty checks that regularization losses are scaled per
        # replica across workers too.
        return keras.Sequential([
            keras.Input((8,)),
            keras.layers.Dense(h, activation="relu",
                               kernel_regularizer=keras.regularizers.L2(0.01)),
            keras.layers.Dense(3)], name=name)

    def train(kind):
        keras.utils.set_random_seed(0)
        init = [mlp(16, "a").get_weights(), mlp(4, "b").get_weights()]
        sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        with scope():
            a, b = mlp(16, "a"), mlp(4, "b")
            a.set_weights(init[0])
            b.set_weights(init[1])
            if kind == "online":
                model = kd.OnlineDistiller(teacher=a, student=b, teacher_alpha=0.3)
                model.compile(optimizer=keras.optimizers.SGD(0.1), loss=sce,
                              metrics=["accuracy"], alpha=0.5,
                              distillation_loss=kd.losses.KLDivergence(2.0))
            else:
                model = kd.MutualLearning([a, b])
                model.compile(optimizer=keras.optimizers.SGD(0.1), loss=sce,
                              metrics=["accuracy"], temperature=2.0, alpha=0.5)
        logs = model.evaluate(dataset(), verbose=0, return_dict=True)
        history = model.fit(dataset(), epochs=2, verbose=0)
        results = {"initial/a/0": init[0][0], "initial/b/0": init[1][0]}
        for key, value in logs.items():
            results[f"evaluate/{key}"] = np.float64(value)
        for key, values in history.history.items():
            results[f"fit/{key}"] = np.asarray(values, np.float64)
        for part, m in (("a", a), ("b", b)):
            for i, weight in enumerate(m.get_weights()):
                results[f"weights/{part}/{i}"] = weight
        return {f"{kind}:{key}": value for key, value in results.items()}

    # Both kinds in the same processes, one after the other (one cluster:
    # each process's start and TensorFlow's import cost about 5 s).
    results = {"replicas": np.int64(strategy.num_replicas_in_sync)}
    for kind in ("online", "mutual"):
        results.update(train(kind))
    np.savez(out, **results)
    print("DONE")
    """
)

TIMEOUT = 300  # seconds for all three processes; each takes about 20

# What each kind must report (every one of them compared across processes).
EXPECTED_LOGS = {
    "online": {"loss", "hard_loss", "distillation_loss", "teacher_loss", "accuracy"},
    "mutual": {"loss", "peer_0_loss", "peer_1_loss", "accuracy", "peer_0_accuracy"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every process's results, both kinds; run once for the module."""
    results = run_workers(tmp_path_factory.mktemp("workers"), WORKER_SCRIPT, 2, TIMEOUT)
    replicas = {name: int(result.pop("replicas")) for name, result in results.items()}
    assert replicas == {"single": 1, "worker0": 2, "worker1": 2}
    return results


@pytest.mark.parametrize("kind", ["online", "mutual"])
def test_two_workers_give_the_result_of_one_process(kind, runs):
    prefix = f"{kind}:"
    results = {
        name: {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)}
        for name, result in runs.items()
    }
    single = results.pop("single")
    for stage in ("evaluate", "fit"):
        logged = {key.split("/", 1)[1] for key in single if key.startswith(stage)}
        assert EXPECTED_LOGS[kind] <= logged, (stage, logged)
    for part in ("a", "b"):  # teacher and student, or both peers, learnt
        assert not np.allclose(
            single[f"weights/{part}/0"], single[f"initial/{part}/0"]
        ), f"{part} did not train"
    for worker, result in results.items():
        assert set(result) == set(single)
        for key, value in single.items():
            np.testing.assert_allclose(
                result[key], value, rtol=1e-4, atol=1e-5, err_msg=f"{worker}: {key}"
            )
    # The workers hold one model: their weights agree to the last bit.
    for key, value in results["worker0"].items():
        if key.startswith("weights/"):
            np.testing.assert_array_equal(results["worker1"][key], value, err_msg=key)
