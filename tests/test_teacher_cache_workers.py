"""The teacher-output cache computed by two workers (MultiWorkerMirroredStrategy).

Two worker processes on 127.0.0.1 (free ports, a `TF_CONFIG` each) call
`kd.data.with_teacher_outputs(..., path=...)` on one shared directory under
the strategy's scope: each runs the teacher on every other teacher batch and
writes its own shards and partial manifest; both then read back the whole
cache. A third process without a strategy computes the reference cache in
another directory. Each process saves what its dataset yields; the
comparisons are made here. Only `with_teacher_outputs` runs under the
strategy (no `fit`), so the test needs no Keras patch in either flavour.
"""

import hashlib
import json
import os
import textwrap

import numpy as np
import pytest

from conftest import run_workers

WORKER_SCRIPT = textwrap.dedent(
    """
    import contextlib
    import os
    import sys
    import tensorflow as tf

    out, role, directory = sys.argv[1], sys.argv[2], sys.argv[3]
    if role == "worker":  # first of all: the cluster, from TF_CONFIG
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        scope = strategy.scope
    else:  # the reference: one process, no strategy
        strategy, scope = tf.distribute.get_strategy(), contextlib.nullcontext

    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=100)
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    teacher.set_weights([np.random.default_rng(1).normal(0, 0.5, w.shape)
                         .astype("float32") for w in teacher.get_weights()])

    def everything(dataset):
        batch = next(iter(dataset.batch(1000)))
        return [np.asarray(v) for v in tf.nest.flatten(batch)]

    results = {"replicas": np.int64(strategy.num_replicas_in_sync)}
    runs = {
        # 7 teacher batches of 16 (the last of 4): 4 for worker 0, 3 for 1
        "plain": dict(batch_size=16, max_shard_bytes=2000),
        "views": dict(batch_size=16, augmentation=kd.augment.jitter(1, seed=3),
                      views=2, seed=5, dtype="float16"),
    }
    for name, kwargs in runs.items():
        path = os.path.join(directory, name)
        with scope():
            cached = kd.data.with_teacher_outputs(teacher, (x, y), path=path,
                                                  **kwargs)
        for i, value in enumerate(everything(cached)):
            results[f"{name}/{i}"] = value
        if name == "views":  # the views drawn again: the stored ones
            for i, value in enumerate(everything(cached)):
                results[f"{name}/again/{i}"] = value
    with scope():  # without path: each worker computes everything
        cached = kd.data.with_teacher_outputs(teacher, (x, y), batch_size=16)
    for i, value in enumerate(everything(cached)):
        results[f"memory/{i}"] = value
    np.savez(out, **results)
    print("DONE")
    """
)

TIMEOUT = 120  # seconds for all three processes; each takes about 6


def _run(tmp_path, workers=2):
    """The reference and `workers` workers at once (conftest.run_workers):
    the workers share `tmp_path / "shared"`, the reference writes to
    `tmp_path / "single"`."""

    def directory(name):
        return [tmp_path / ("single" if name == "single" else "shared")]

    return run_workers(tmp_path, WORKER_SCRIPT, workers, TIMEOUT, args=directory)


def _files(directory):
    return sorted(f for f in os.listdir(directory) if not f.startswith("."))


def test_two_workers_split_the_teacher_pass_and_read_the_whole_cache(tmp_path):
    results = _run(tmp_path)
    replicas = {name: int(result.pop("replicas")) for name, result in results.items()}
    assert replicas == {"single": 1, "worker0": 2, "worker1": 2}

    # Each worker wrote its own shards and partial manifest; together they
    # hold every example, worker 0 the batches 0, 2, 4, 6 and worker 1 the
    # batches 1, 3, 5 (of 16 examples, the last of 4).
    shared = tmp_path / "shared" / "plain"
    files = _files(shared)
    assert "manifest.json" in files
    assert "manifest-w00000.json" in files and "manifest-w00001.json" in files
    assert not [f for f in files if f.startswith("shard-0")], files
    manifest = json.loads((shared / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["num_examples"] == 100
    per_worker = {}
    for shard in manifest["shards"]:
        assert shard["file"].startswith(f"shard-w{shard['worker']:05d}-")
        assert shard["file"] in files
        content = (shared / shard["file"]).read_bytes()  # checksummed by its worker
        assert shard["size_bytes"] == len(content)
        assert shard["sha256"] == hashlib.sha256(content).hexdigest()
        per_worker[shard["worker"]] = (
            per_worker.get(shard["worker"], 0) + (shard["examples"])
        )
    assert per_worker == {0: 3 * 16 + 4, 1: 3 * 16}
    for index in (0, 1):
        partial = json.loads((shared / f"manifest-w{index:05d}.json").read_text())
        assert partial["count"] == per_worker[index]
        assert all(f"-w{index:05d}-" in s["file"] for s in partial["shards"])
    shard_files = [f for f in files if f.endswith(".tfrecord")]
    assert len(shard_files) == len(manifest["shards"]) > 2  # several per worker
    views = json.loads((tmp_path / "shared" / "views" / "manifest.json").read_text())
    assert views["views"] == 2 and views["seed"] == 5 and views["workers"] == 2

    # Both workers read back the whole cache: the reference's, in its order.
    single = results.pop("single")
    assert int(single["plain/0"].shape[0]) == 100
    for worker, result in results.items():
        assert set(result) == set(single), worker
        for key, value in single.items():
            assert result[key].dtype == value.dtype, f"{worker}: {key}"
            if value.dtype.kind == "f" and key.endswith(("/2", "/again/2")):
                np.testing.assert_allclose(  # the teacher's outputs
                    result[key], value, rtol=1e-5, atol=1e-6, err_msg=f"{worker}: {key}"
                )
            else:  # x and y: identical, in the same order
                np.testing.assert_array_equal(result[key], value, f"{worker}: {key}")

    # One process without a strategy reads the workers' cache back as well.
    import keras_kd as kd
    from keras_kd.backend import keras, tf

    teacher = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    teacher.set_weights(  # as the script sets them
        [
            np.random.default_rng(1).normal(0, 0.5, w.shape).astype("float32")
            for w in teacher.get_weights()
        ]
    )
    cached = kd.data.with_teacher_outputs(teacher, None, path=shared)
    got = tf.nest.flatten(next(iter(cached.batch(1000))))
    for i, value in enumerate(got):
        np.testing.assert_array_equal(np.asarray(value), single[f"plain/{i}"])


def test_other_strategies_compute_the_cache_as_one_process(data, tmp_path):
    import keras_kd as kd
    from conftest import make_mlp
    from keras_kd.backend import tf

    x, y = data
    teacher = make_mlp(8, name="teacher")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        cached = kd.data.with_teacher_outputs(
            teacher, (x, y), batch_size=16, path=tmp_path / "in_scope"
        )
    given = kd.data.with_teacher_outputs(
        teacher, (x, y), batch_size=16, path=tmp_path / "given", strategy=strategy
    )
    for directory in ("in_scope", "given"):
        assert _files(tmp_path / directory) == ["manifest.json", "shard-00000.tfrecord"]
    expected = teacher.predict(x, verbose=0)
    for dataset in (cached, given):
        got = next(iter(dataset.batch(100)))
        np.testing.assert_array_equal(got.x, x)
        np.testing.assert_allclose(got.teacher_outputs, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="Argument `strategy`"):
        kd.data.with_teacher_outputs(teacher, (x, y), strategy="mirrored")
