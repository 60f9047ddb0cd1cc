"""The tiny task `tests/test_tune.py` and `tests/test_tune_selection.py`
share: labels from a fixed linear map of 8 features to 3 classes, and the
student every trial builds."""

import numpy as np

from keras_kd.backend import keras

N_IN, N_OUT = 8, 3


def mapping():
    return np.random.default_rng(7).normal(size=(N_IN, N_OUT)).astype("float32")


def split(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, N_IN)).astype("float32")
    return x, (x @ mapping()).argmax(-1).astype("int64")


def student_fn():
    return keras.Sequential(
        [
            keras.Input((N_IN,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(N_OUT),
        ]
    )


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
