"""`BackupAndRestore` that writes atomically and resumes mid-epoch exactly.

Keras's own callbacks fall short of a run that a kill can interrupt at any
moment. Keras 3's `keras.callbacks.BackupAndRestore` writes
`latest.weights.h5` in place and then, separately, the JSON that names the
epoch: a kill during either write leaves a half-written file or weights that
do not match the epoch. It also resumes a checkpoint saved mid-epoch
(`save_freq=N`) at the start of that epoch, so the batches already trained on
are trained on again. tf_keras's writes whole TensorFlow checkpoints, but
resumes mid-epoch by skipping step numbers, not batches: the resumed epoch
sees its first batches instead of its last ones.

This callback keeps the whole training state (the model's weights, the
optimizer's variables, the epoch and the batch) in one `.npz` file written
to a temporary name and renamed (`os.replace`), and on resume skips the
batches of the interrupted epoch that were already trained on, drawing them
from the data without training. With fixed seeds, deterministic ops and the
same order of batches in each epoch, a run killed at any moment and resumed
ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile

import numpy as np

from keras_kd import _utils, backend
from keras_kd.backend import keras

STATE_FILE = "training_state.npz"
PREVIOUS_FILE = "training_state.previous.npz"


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state atomically; resumes where a run stopped.

    A drop-in for `keras.callbacks.BackupAndRestore` (same arguments) that a
    kill at any moment cannot corrupt, and that resumes a run interrupted in
    the middle of an epoch at the next batch. Use it to make long
    distillations survive preemption: run the same script again and `fit`
    continues from the last backup.

    * **Atomic.** The model's weights, the optimizer's variables, the epoch
      and the batch go into one file, `training_state.npz` in `backup_dir`,
      written to a temporary name, flushed and renamed: the file is always
      the previous complete backup or the new complete one.
    * **Exact mid-epoch resume.** With `save_freq=N`, the resumed `fit`
      draws the batches of the interrupted epoch that were already trained
      on from the data without training on them (the first resumed epoch's
      logged metrics cover the batches after the backup). For the resumed
      run to match an uninterrupted one, each epoch must yield its batches
      in the same order (numpy data with `shuffle=False`, or a dataset whose
      order does not depend on global random state) and ops must be
      deterministic (`keras.utils.set_random_seed`,
      `tf.config.experimental.enable_op_determinism()`). Layers that draw
      random numbers in training (dropout) continue from a fresh random
      state. Mid-epoch resume needs `steps_per_execution=1`.
    * **Never a diverged backup.** A state with non-finite weights or a
      non-finite `loss` in the logs is not saved: the previous backup stays,
      and (as after any run that did not finish) is kept at the end of
      `fit`, e.g. after `keras.callbacks.TerminateOnNaN` stopped the run.

    With `keras_kd.callbacks.SelfDistillation`, put it after
    `SelfDistillation` in the callbacks and give that callback a
    `backup_dir` too (a different directory).

    Args:
        backup_dir: the directory of the backup (created when needed); use
            it for this run's backups only.
        save_freq: `"epoch"` (a backup at the end of each epoch) or an
            integer N >= 1 (a backup every N batches).
        double_checkpoint: also keep the previous backup, as
            `training_state.previous.npz`, restored if the latest cannot be
            read.
        delete_checkpoint: delete the backup when `fit` ends normally (a
            run stopped on a non-finite loss keeps it).

    Example:

    ```python
    backup = kd.callbacks.BackupAndRestore("/tmp/run1", save_freq=100)
    distiller.fit(train_ds, epochs=20, callbacks=[backup])
    # killed? run the same script again: fit resumes at the next batch.
    ```
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError(
                "Argument `backup_dir` must be a directory path (a non-empty "
                f"str or os.PathLike). Received: backup_dir={backup_dir!r}."
            )
        if save_freq != "epoch":
            if isinstance(save_freq, str):
                raise ValueError(
                    "Argument `save_freq` must be 'epoch' or a number of "
                    f"batches. Received: save_freq={save_freq!r}."
                )
            _utils.check_int(save_freq, "save_freq", 1, "batches between backups")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = _utils.check_bool(
            double_checkpoint, "double_checkpoint"
        )
        self.delete_checkpoint = _utils.check_bool(
            delete_checkpoint, "delete_checkpoint"
        )
        self._epoch = 0
        self._since_save = 0
        self._resume_at = None  # (epoch, last batch trained) of a mid-epoch backup
        self._reload = None  # the state to load again once the epoch begins
        self._skipping = None  # the train function replaced while skipping
        self._diverged = False

    @property
    def path(self) -> str:
        """The backup file, `backup_dir/training_state.npz`."""
        return os.path.join(self.backup_dir, STATE_FILE)

    # -- Keras hooks -------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._since_save = 0
        self._diverged = False
        state = self._read()
        if state is None:
            return
        self._load(state)
        epoch, batch = state["meta"]["epoch"], state["meta"]["batch"]
        backend.set_initial_epoch(self.model, epoch)
        if batch >= 0:
            spe = backend.steps_per_execution(self.model)
            if spe != 1:
                raise ValueError(
                    "BackupAndRestore resumes a backup taken mid-epoch (batch "
                    f"{batch} of epoch {epoch}) only with steps_per_execution=1. "
                    f"Received: steps_per_execution={spe}. Compile with "
                    "steps_per_execution=1, or use save_freq='epoch'."
                )
            self._resume_at = (epoch, batch)
            self._reload = state  # callbacks before this one may reset it

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._reload is not None:
            # SelfDistillation (before this callback) may have re-initialised
            # the student for a new generation: the backup, taken later in
            # this epoch, wins.
            self._load(self._reload)
            self._reload = None

    def on_train_batch_begin(self, batch, logs=None):
        skip = (
            self._resume_at is not None
            and self._epoch == self._resume_at[0]
            and batch <= self._resume_at[1]
        )
        if skip and self._skipping is None:
            self._skipping = backend.replace_train_function(
                self.model, backend.batch_skipping_train_function(self.model)
            )
        elif not skip and self._skipping is not None:
            backend.replace_train_function(self.model, self._skipping)
            self._skipping = None
            self._resume_at = None

    def on_train_batch_end(self, batch, logs=None):
        if self._skipping is not None or self.save_freq == "epoch":
            return
        self._since_save += 1
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self._skipping is not None:  # every batch of the epoch was skipped
            backend.replace_train_function(self.model, self._skipping)
            self._skipping = None
            self._resume_at = None
        if self.save_freq == "epoch":
            self._save(epoch + 1, -1, logs)

    def on_train_end(self, logs=None):
        backend.set_initial_epoch(self.model, None)
        if self._skipping is not None:
            backend.replace_train_function(self.model, self._skipping)
            self._skipping = None
        if self.delete_checkpoint and not self._diverged:
            for name in (STATE_FILE, PREVIOUS_FILE):
                path = os.path.join(self.backup_dir, name)
                if os.path.exists(path):
                    os.remove(path)
            if os.path.isdir(self.backup_dir) and not os.listdir(self.backup_dir):
                os.rmdir(self.backup_dir)

    # -- the state file ------------------------------------------------------

    def _variables(self):
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        optimizer_variables = []
        if optimizer is not None:
            backend.build_optimizer(optimizer, model.trainable_variables)
            optimizer_variables = list(optimizer.variables)
        return list(model.weights), optimizer_variables

    def _save(self, epoch, batch, logs):
        weights, optimizer_variables = self._variables()
        arrays = {}
        for prefix, variables in (
            ("model", weights),
            ("optimizer", optimizer_variables),
        ):
            for i, variable in enumerate(variables):
                arrays[f"{prefix}_{i}"] = np.asarray(variable.numpy())
        loss = (logs or {}).get("loss")
        finite_loss = loss is None or np.all(np.isfinite(np.asarray(loss, float)))
        if not finite_loss or not all(
            np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f"
        ):
            if not self._diverged:
                warnings.warn(
                    f"BackupAndRestore: the training state at epoch {epoch}, "
                    f"batch {batch} is not finite (loss={loss}); the backup in "
                    f"{self.backup_dir!r} keeps the last finite state.",
                    UserWarning,
                    stacklevel=2,
                )
            self._diverged = True
            return
        meta = {
            "epoch": int(epoch),
            "batch": int(batch),
            "model": len(weights),
            "optimizer": len(optimizer_variables),
        }
        arrays["meta"] = np.array(json.dumps(meta))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        if self.double_checkpoint and os.path.exists(self.path):
            os.replace(self.path, os.path.join(self.backup_dir, PREVIOUS_FILE))
        _utils.write_atomically(self.path, buffer.getvalue())

    def _read(self):
        """The newest readable backup as `{"meta": ..., "model": [...],
        "optimizer": [...]}`, or None."""
        candidates = [self.path]
        if self.double_checkpoint:
            candidates.append(os.path.join(self.backup_dir, PREVIOUS_FILE))
        errors = []
        for path in candidates:
            if not os.path.exists(path):
                continue
            try:
                with np.load(path) as archive:
                    meta = json.loads(str(archive["meta"]))
                    return {
                        "meta": meta,
                        "model": [archive[f"model_{i}"] for i in range(meta["model"])],
                        "optimizer": [
                            archive[f"optimizer_{i}"] for i in range(meta["optimizer"])
                        ],
                    }
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                errors.append(f"{path}: {type(e).__name__}: {e}")
        if errors:
            raise ValueError(
                f"Argument `backup_dir`={self.backup_dir!r} holds no readable "
                f"backup ({'; '.join(errors)}). Expected a file written by "
                "keras_kd.callbacks.BackupAndRestore, or an empty directory."
            )
        return None

    def _load(self, state):
        weights, optimizer_variables = self._variables()
        for what, variables, values in (
            ("model weights", weights, state["model"]),
            ("optimizer variables", optimizer_variables, state["optimizer"]),
        ):
            shapes = [tuple(v.shape) for v in variables]
            saved = [tuple(a.shape) for a in values]
            if shapes != saved:
                raise ValueError(
                    f"The backup in `backup_dir`={self.backup_dir!r} does not "
                    f"fit this model: it holds {len(saved)} {what} of shapes "
                    f"{saved}; the model has {len(shapes)} of shapes {shapes}. "
                    "Expected the model and optimizer of the interrupted run "
                    "(or an empty `backup_dir`)."
                )
            for variable, value in zip(variables, values):
                variable.assign(value)
