"""Which Keras keras-kd runs on.

keras-kd works with two flavours of Keras on TensorFlow:

* **Keras 3** (the default), the `keras` package with the TensorFlow backend.
* **tf_keras** (Keras 2), used when the environment variable
  `TF_USE_LEGACY_KERAS=1` is set before TensorFlow is imported. This is the
  switch TensorFlow itself reads, and the flavour that
  tensorflow-model-optimization (quantization- and pruning-aware training)
  needs.

Every other module of keras-kd takes `keras` from here, so one process never
mixes the two.
"""

from __future__ import annotations

import os

import tensorflow as tf

_TRUE = ("1", "true", "yes", "y", "on")


def use_legacy_keras() -> bool:
    """Returns whether `TF_USE_LEGACY_KERAS` asks for tf_keras (Keras 2)."""
    return os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in _TRUE


LEGACY = use_legacy_keras()

if LEGACY:
    try:
        import tf_keras as keras  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "TF_USE_LEGACY_KERAS=1 is set, so keras-kd uses tf_keras, which is "
            "not installed. Install it with `pip install keras-kd[optimize]` "
            "(or `pip install tf-keras`), or unset TF_USE_LEGACY_KERAS to use "
            "Keras 3."
        ) from e
    FLAVOUR = "tf_keras"
else:
    import keras  # noqa: F401

    FLAVOUR = "keras3"


def check_tensorflow_backend(where: str = "keras_kd") -> None:
    """Raises a `ValueError` unless Keras runs on the TensorFlow backend.

    Args:
        where: what is being built, for the message.
    """
    if LEGACY:
        return
    name = keras.backend.backend()
    if name != "tensorflow":
        raise ValueError(
            f"{where} needs the TensorFlow backend of Keras. Received: "
            f"keras.backend.backend()={name!r}. Set the environment variable "
            "KERAS_BACKEND=tensorflow before importing keras."
        )


def register_serializable(cls):
    """Registers `cls` for Keras serialization under the `keras_kd` package."""
    return keras.saving.register_keras_serializable(package="keras_kd")(cls)


def num_replicas() -> int:
    """Number of replicas of the current `tf.distribute` strategy."""
    return tf.distribute.get_strategy().num_replicas_in_sync


__all__ = [
    "FLAVOUR",
    "LEGACY",
    "check_tensorflow_backend",
    "keras",
    "num_replicas",
    "register_serializable",
    "tf",
    "use_legacy_keras",
]
