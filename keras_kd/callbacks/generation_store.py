"""The finished generations' weights, kept for teachers and for resuming.

`SelfDistillation` needs every finished generation's student weights: the
next generation's teacher is rebuilt from them, and `restore_best` loads the
best of them. With a directory, the store also keeps them on disk with the
generation plan's state, so that a run which `keras.callbacks.BackupAndRestore`
resumes finds the right teacher. Every file is written atomically (to a
temporary name, flushed to disk, renamed) and every file handle is closed.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from keras_kd import _utils

STATE_FILE = "self_distillation.json"


def _weights_file(generation: int) -> str:
    return f"generation_{generation}.npz"


class GenerationStore:
    """Each finished generation's student weights: in memory, and on disk
    when a directory is given.

    Files in `directory`: `generation_<g>.npz` (the weights of generation
    `g`, in order) and `self_distillation.json` (the plan's state, which
    names the finished generations).

    Args:
        directory: None (memory only) or the directory to keep the files in;
            created when the first file is written.
    """

    def __init__(self, directory=None):
        self.directory = None if directory is None else os.fspath(directory)
        self._weights = {}

    def __contains__(self, generation: int) -> bool:
        return generation in self._weights

    def put(self, generation: int, weights) -> None:
        """Keeps a copy of `generation`'s weights (a list of arrays)."""
        self._weights[generation] = [np.array(w) for w in weights]

    def get(self, generation: int) -> list:
        """The weights of `generation` (the stored arrays, not a copy)."""
        if generation not in self._weights:
            raise KeyError(
                f"No weights are stored for generation {generation}; "
                f"stored: {sorted(self._weights)}."
            )
        return self._weights[generation]

    def save(self, state: dict, generation: int | None = None) -> None:
        """Writes `generation`'s weights (if given) and the plan's `state`.

        Does nothing without a directory. The weights file is written before
        the state that names it, so the state never names a missing file.
        """
        if self.directory is None:
            return
        if generation is not None:
            buffer = io.BytesIO()
            np.savez(buffer, *self.get(generation))
            _utils.write_atomically(
                self._path(_weights_file(generation)), buffer.getvalue()
            )
        _utils.write_atomically(
            self._path(STATE_FILE), json.dumps(state).encode("utf-8")
        )

    def load(self):
        """Reads back what `save` wrote.

        Returns:
            The plan's state, with the weights of every generation it names
            as finished now in the store; None when there is no directory or
            nothing was saved in it.
        """
        if self.directory is None or not os.path.exists(self._path(STATE_FILE)):
            return None
        with open(self._path(STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        for generation in state["finished"]:
            with np.load(self._path(_weights_file(generation))) as archive:
                self._weights[generation] = [
                    archive[f"arr_{i}"] for i in range(len(archive.files))
                ]
        return state

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)
