"""A distillation killed mid-epoch resumes to an uninterrupted run's weights.

The run is a small script (written to `tmp_path`) in a subprocess, so that it
can be killed for real: with fixed seeds and deterministic ops, its first
invocation trains once straight through (the reference), then again with
`kd.callbacks.BackupAndRestore(save_freq=2)` and kills itself with SIGKILL
one batch after a backup; the second invocation runs the same `fit`, which
resumes from the backup. The reference is the uninterrupted run's weights,
computed by the same code without a backup in the way. Four subprocesses in
all (each pays TensorFlow's import).

In-process: a crash in the middle of writing a backup leaves the previous
backup loadable, and a backup that does not fit the model is refused.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_kd as kd
from conftest import hard_loss, make_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    import keras_kd as kd
    from keras_kd.backend import keras, tf

    mode, kind, out = sys.argv[1], sys.argv[2], sys.argv[3]
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")  # 6 batches of 16
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    # plain: 4 epochs, killed in epoch 1; generations: 3 x 2 epochs, killed
    # in epoch 2, the first of generation 2 (its student freshly initialised).
    epochs, kill_epoch = (4, 1) if kind == "plain" else (6, 2)
    kill_batch = 4  # a backup after batches 1, 3 and 5: batch 4 is lost


    def mlp(hidden, name):
        return keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(hidden, activation="relu"),
             keras.layers.Dense(3)], name=name)


    def build():
        keras.utils.set_random_seed(7)
        teacher = mlp(16, "teacher") if kind == "plain" else None
        distiller = kd.Distiller(teacher=teacher, student=mlp(6, "student"))
        distiller.compile(
            optimizer=keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            distillation_loss=kd.losses.KLDivergence(2.0), alpha=0.5)
        return distiller


    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == (kill_epoch, kill_batch):
                os.kill(os.getpid(), signal.SIGKILL)


    def train(directory, backup=True, kill=False):
        callbacks = []
        if kind == "generations":
            callbacks.append(kd.callbacks.SelfDistillation(
                generations=3, epochs_per_generation=2, seed=11, verbose=0,
                backup_dir=os.path.join(directory, "generations")))
        if backup:
            callbacks.append(kd.callbacks.BackupAndRestore(
                os.path.join(directory, "state"), save_freq=2))
        if kill:
            callbacks.append(Kill())
        distiller = build()
        history = distiller.fit(x, y, epochs=epochs, batch_size=16,
                                shuffle=False, verbose=0, callbacks=callbacks)
        return distiller.student.get_weights(), history.history


    if mode == "first":
        weights, _ = train(os.path.join(out, "straight"), backup=False)
        np.savez(os.path.join(out, "straight.npz"), *weights)
        train(os.path.join(out, "run"), kill=True)
        sys.exit(3)  # not killed
    weights, history = train(os.path.join(out, "run"))
    np.savez(os.path.join(out, "resumed.npz"), *weights)
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({k: [float(v) for v in vs] for k, vs in history.items()}, f)
    """
)


def _run(tmp_path, mode, kind):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    return subprocess.run(
        [sys.executable, str(script), mode, kind, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _weights(path):
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


@pytest.mark.parametrize(
    "kind, resumed_epochs, generations",
    [("plain", 3, None), ("generations", 4, [2, 2, 3, 3])],
)
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(
    tmp_path, kind, resumed_epochs, generations
):
    import json

    first = _run(tmp_path, "first", kind)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    state = tmp_path / "run" / "state" / "training_state.npz"
    assert state.exists()
    with np.load(state) as archive:  # the backup after batch 3 of the kill epoch
        meta = json.loads(str(archive["meta"]))
    assert (meta["epoch"], meta["batch"]) == ((1, 3) if kind == "plain" else (2, 3))

    second = _run(tmp_path, "resume", kind)
    assert second.returncode == 0, second.stderr[-3000:]
    with open(tmp_path / "history.json") as f:
        history = json.load(f)
    assert len(history["loss"]) == resumed_epochs  # started in the killed epoch
    if generations is not None:
        assert history["generation"] == generations
    straight = _weights(tmp_path / "straight.npz")
    resumed = _weights(tmp_path / "resumed.npz")
    assert len(straight) == len(resumed)
    for a, b in zip(resumed, straight):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The run finished: its backup is deleted.
    assert not state.exists()


# ---------------------------------------------------------------------------
# In-process: atomic writes, refused backups
# ---------------------------------------------------------------------------


def _distiller():
    d = kd.Distiller(teacher=make_mlp(8, name="teacher"), student=make_mlp(4))
    d.compile(optimizer="adam", loss=hard_loss())
    return d


class _CrashingFile:
    """A file that writes half of what it is given, then fails (a kill)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError("simulated crash in the middle of a write")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_crash_while_writing_a_backup_leaves_the_previous_one(
    data, tmp_path, monkeypatch
):
    x, y = data
    backup_dir = tmp_path / "backup"
    d = _distiller()
    backup = kd.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[backup])
    after_one_epoch = [np.array(w.numpy()) for w in d.weights]
    previous = (backup_dir / "training_state.npz").read_bytes()

    real_fdopen = os.fdopen
    monkeypatch.setattr(
        os, "fdopen", lambda *a, **k: _CrashingFile(real_fdopen(*a, **k))
    )
    with pytest.raises(OSError, match="simulated crash"):
        d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[backup])
    monkeypatch.undo()

    # The backup is the previous one, byte for byte; no temporary is left.
    assert sorted(os.listdir(backup_dir)) == ["training_state.npz"]
    assert (backup_dir / "training_state.npz").read_bytes() == previous
    reader = kd.callbacks.BackupAndRestore(backup_dir)
    reader.set_model(_distiller())
    state = reader._read()
    assert (state["meta"]["epoch"], state["meta"]["batch"]) == (1, -1)
    for saved, expected in zip(state["model"], after_one_epoch):
        np.testing.assert_array_equal(saved, expected)
    fresh = _distiller()
    history = fresh.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[kd.callbacks.BackupAndRestore(backup_dir)],
    )
    assert len(history.history["loss"]) == 1  # resumed after epoch 1
    assert not backup_dir.exists()  # deleted once the run finished


def test_a_backup_of_another_model_is_refused(data, tmp_path):
    x, y = data
    d = _distiller()
    backup = kd.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[backup])
    other = kd.Distiller(teacher=make_mlp(8), student=make_mlp(5))
    other.compile(optimizer="adam", loss=hard_loss())
    with pytest.raises(ValueError, match=r"`backup_dir`.*does not fit this model"):
        other.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[backup])


def test_a_corrupt_backup_is_refused_with_its_path(data, tmp_path):
    x, y = data
    (tmp_path / "training_state.npz").write_bytes(b"PK\x03\x04 half a file")
    with pytest.raises(ValueError, match=r"`backup_dir`.*no readable backup"):
        _distiller().fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[kd.callbacks.BackupAndRestore(tmp_path)],
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(backup_dir=""), ValueError, r"`backup_dir`.*Received: backup_dir=''"),
        (dict(backup_dir=3), ValueError, r"`backup_dir`.*Received: backup_dir=3"),
        (dict(backup_dir="b", save_freq=0), ValueError, r"`save_freq`.*save_freq=0"),
        (dict(backup_dir="b", save_freq="batch"), ValueError, r"`save_freq`.*'batch'"),
        (dict(backup_dir="b", save_freq=1.5), TypeError, r"`save_freq`.*1.5"),
        (
            dict(backup_dir="b", delete_checkpoint="no"),
            TypeError,
            r"`delete_checkpoint`",
        ),
    ],
)
def test_backup_and_restore_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kd.callbacks.BackupAndRestore(**kwargs)
