"""What the commands read and write: model files and output paths.

Each check runs before any training and raises `UsageError` naming the
command-line argument, what it received and what it expects. The data
(`--data`, `--split`) is read by `keras_kd.cli._data`.
"""

from __future__ import annotations

import os
import re
import zipfile

from keras_kd.cli._args import UsageError
from keras_kd.cli._data import flag as _flag

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _h5_config(path: str):
    import h5py

    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    if isinstance(config, bytes):
        config = config.decode("utf-8")
    return config


def _check_model_file(path: str, argument: str) -> None:
    flag = _flag(argument)
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory; expected a .keras model file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MODEL_SUFFIXES:
        raise UsageError(
            f"{flag} {path}: expected a .keras model file (or .h5), got a "
            f"{suffix or 'file without suffix'}"
        )
    if suffix == ".keras":
        ok = zipfile.is_zipfile(path)
        if ok:
            with zipfile.ZipFile(path) as archive:
                ok = "config.json" in archive.namelist()
    else:
        with open(path, "rb") as f:
            ok = f.read(8) == _HDF5_SIGNATURE
    if not ok:
        raise UsageError(
            f"{flag} {path}: not a Keras model file (a {suffix} file saved by "
            f"`model.save`)"
        )


def _needs_unsafe(path: str) -> bool:
    """Whether the file holds a `Lambda` layer (Python code, run on load)."""
    if path.lower().endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode("utf-8", "replace")
    else:
        config = _h5_config(path) or ""
    return bool(re.search(r'"class_name":\s*"Lambda"', config))


def load_model(path, argument: str, unsafe: bool = False):
    """Loads a Keras model file given on the command line.

    Args:
        path: the file, `.keras` (or `.h5` / `.hdf5`, the legacy format).
        argument: the command-line argument it came from, for messages.
        unsafe: allow a model whose loading runs Python code (a `Lambda`
            layer); refused otherwise (Keras's `safe_mode=True`).

    Returns:
        The loaded, uncompiled `keras.Model`.

    Raises:
        UsageError: a missing file, a file that is not a Keras model, a model
            needing unsafe deserialization without `unsafe`, or one that the
            installed Keras cannot load.
    """
    from keras_kd.backend import FLAVOUR, keras

    path = os.fspath(path)
    flag = _flag(argument)
    _check_model_file(path, argument)
    if not unsafe and _needs_unsafe(path):
        # tf_keras loads Lambda layers from .h5 files even in safe mode;
        # this check refuses them in both flavours and both formats.
        raise UsageError(
            f"{flag} {path}: the model has a Lambda layer, whose loading runs "
            f"Python code from the file; pass --unsafe if you trust it "
            f"(Keras's safe_mode=False)"
        )
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as e:  # Keras raises many types; all mean "cannot load"
        detail = " ".join(str(e).split())[:300]
        raise UsageError(
            f"{flag} {path}: could not be loaded by {FLAVOUR} "
            f"({type(e).__name__}: {detail})"
        ) from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{flag} {path}: holds a {type(model).__name__}, not a model")
    return model


def check_output_path(path, argument: str, suffixes) -> str:
    """Checks a file the command will write: suffix and existing directory.

    Args:
        path: the file to write.
        argument: the command-line argument, for messages.
        suffixes: the accepted suffixes, e.g. `(".tflite",)`.

    Returns:
        The path as a `str`.
    """
    path = os.fspath(path)
    flag = _flag(argument)
    if not path.lower().endswith(tuple(suffixes)):
        raise UsageError(
            f"{flag} {path}: expected a file name ending in {' or '.join(suffixes)}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{flag} {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory")
    return path
