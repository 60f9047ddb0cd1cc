"""Writes the saved models that test_distiller.py and test_online.py load.

The `.keras` files under `tests/data/<flavour>/` were written by keras-kd as
it was before the online Distiller moved to `keras_kd/online.py` (commit
f9c61a8), one set per Keras flavour:

    python tests/data/make_saved_models.py                         # keras3
    TF_USE_LEGACY_KERAS=1 python tests/data/make_saved_models.py   # tf_keras

Do not rerun it to "refresh" them: their point is to have been saved by the
old code. Each `<name>.keras` has a `<name>.npz` beside it with what the old
code computed from the file: the inputs, `predict`, the teacher's (or each
peer's) outputs, `evaluate`'s logs, and the logs and weights after one
`train_on_batch` on the loaded model.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import keras_kd as kd
from keras_kd import backend
from keras_kd.backend import keras

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), backend.FLAVOUR)


def mlp(hidden, name, activation=None):
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(3, activation=activation),
        ],
        name=name,
    )


def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    return x, y


def sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def offline(activation=None):
    teacher = mlp(8, "teacher", activation)
    d = kd.Distiller(teacher=teacher, student=mlp(4, "student"))
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=sce(),
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(3.0),
        alpha=0.3,
    )
    return d


def online():
    d = kd.Distiller(
        teacher=mlp(8, "teacher"),
        student=mlp(4, "student"),
        train_teacher=True,
        teacher_alpha=0.5,
    )
    d.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=sce(),
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(2.0),
        alpha=0.6,
    )
    return d


def mutual():
    m = kd.MutualLearning([mlp(6, "peer0"), mlp(6, "peer1")])
    m.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=sce(),
        metrics=["accuracy"],
        temperature=2.0,
        alpha=0.4,
    )
    return m


def record(name, model, parts, compiled_after_load=True):
    x, y = data()
    keras.utils.set_random_seed(0)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(HERE, f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    out = {"x": x, "y": y, "predict": loaded.predict(x, verbose=0)}
    for part, model_part in parts(loaded).items():
        out[f"{part}_predict"] = model_part.predict(x, verbose=0)
    if not compiled_after_load:  # the old MutualLearning saved no compile config
        np.savez(os.path.join(HERE, f"{name}.npz"), **out)
        print(name, os.path.getsize(path), "bytes")
        return
    logs = loaded.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    for key, value in logs.items():
        out[f"evaluate/{key}"] = np.float64(value)
    logs = loaded.train_on_batch(x[:16], y[:16], return_dict=True)
    for key, value in logs.items():
        out[f"step/{key}"] = np.float64(value)
    for part, model_part in parts(loaded).items():
        for i, w in enumerate(model_part.get_weights()):
            out[f"step_weights/{part}/{i}"] = w
    np.savez(os.path.join(HERE, f"{name}.npz"), **out)
    print(name, os.path.getsize(path), "bytes", sorted(logs))


def teacher_and_student(d):
    return {"teacher": d.teacher, "student": d.student}


def peers(m):
    return {f"peer{i}": p for i, p in enumerate(m.peers)}


def main():
    os.makedirs(HERE, exist_ok=True)
    keras.utils.set_random_seed(1)
    record("offline_distiller", offline(), teacher_and_student)
    keras.utils.set_random_seed(2)
    record("softmax_teacher_distiller", offline("softmax"), teacher_and_student)
    keras.utils.set_random_seed(3)
    record("online_distiller", online(), teacher_and_student)
    keras.utils.set_random_seed(4)
    record("mutual_learning", mutual(), peers, compiled_after_load=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
