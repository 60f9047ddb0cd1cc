"""Shared fixtures: tiny models and data, one Keras flavour per process.

The flavour is chosen by `TF_USE_LEGACY_KERAS` before TensorFlow is
imported; CI runs the suite once per flavour.
"""

import json
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from keras_kd import backend
from keras_kd.backend import keras

legacy_only = pytest.mark.skipif(
    not backend.LEGACY, reason="tf_keras flavour only (TF_USE_LEGACY_KERAS=1)"
)
keras3_only = pytest.mark.skipif(backend.LEGACY, reason="Keras 3 flavour only")


def pytest_report_header(config):
    """Which keras_kd and which Keras the run tests (CI runs the suite against
    an editable checkout and against the installed wheel)."""
    import tensorflow as tf

    import keras_kd

    return (
        f"keras_kd {keras_kd.__version__} from {os.path.dirname(keras_kd.__file__)}; "
        f"{backend.FLAVOUR} flavour (keras {keras.__version__}, "
        f"tensorflow {tf.__version__})"
    )


def pytest_collection_modifyitems(config, items):
    """Marks `slow` every test of tests/test_example*.py: they run the examples
    end to end. CI's oldest-versions section deselects them (`-m "not slow"`)."""
    for item in items:
        if item.path.name.startswith("test_example"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.mixed_precision.set_global_policy("float32")


def make_mlp(hidden, n_in=8, n_out=3, activation=None, name=None, dropout=0.0):
    layers = [keras.Input((n_in,)), keras.layers.Dense(hidden, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_out, activation=activation))
    return keras.Sequential(layers, name=name)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    return x, y


def np_log_softmax(z, axis=-1):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def np_kl(teacher_logits, student_logits, temperature):
    """Reference: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over samples."""
    lt = np_log_softmax(np.asarray(teacher_logits) / temperature)
    ls = np_log_softmax(np.asarray(student_logits) / temperature)
    per = (np.exp(lt) * (lt - ls)).sum(-1) * temperature**2
    return per.mean()


def hard_loss():
    """The hard-label loss the tests use: sparse CE on logits."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def twins(hidden, name, **kwargs):
    """Two MLPs with the same architecture and the same initial weights."""
    a = make_mlp(hidden, name=name + "_a", **kwargs)
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    return a, b


def trained_teacher(x, y, hidden=32, activation=None, epochs=3):
    """A small MLP teacher fitted on `(x, y)`."""
    teacher = make_mlp(hidden, activation=activation, name="teacher")
    teacher.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=activation is None),
    )
    teacher.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return teacher


SAVED_MODELS = os.path.join(os.path.dirname(__file__), "data", backend.FLAVOUR)


def saved_model(name):
    """A `.keras` file saved by keras-kd 0.1 (tests/data/make_saved_models.py),
    loaded, and what that version computed from it.

    The tf_keras files were written by tf_keras 2.21, whose `InputLayer`
    config has an `optional` key that older tf_keras refuses: a limit of
    tf_keras's format (newer files, older reader), not of keras-kd, so those
    tests skip under older tf_keras (CI's oldest-versions job).
    """
    if backend.LEGACY:
        import tf_keras

        version = tuple(int(p) for p in tf_keras.__version__.split(".")[:2])
        if version < (2, 21):
            pytest.skip(
                f"tf_keras {tf_keras.__version__} cannot read files saved by "
                "tf_keras 2.21 (InputLayer's `optional` key)"
            )
    model = keras.saving.load_model(os.path.join(SAVED_MODELS, f"{name}.keras"))
    with np.load(os.path.join(SAVED_MODELS, f"{name}.npz")) as archive:
        reference = {key: archive[key] for key in archive.files}
    return model, reference


def assert_behaves_as_saved(model, reference, parts):
    """`model` predicts, evaluates and takes a training step as the version
    that saved it did. `parts` names its sub-models (teacher, peers...)."""
    x, y = reference["x"], reference["y"]
    close = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), reference["predict"], **close
    )
    for name, part in parts.items():
        np.testing.assert_allclose(
            part.predict(x, verbose=0), reference[f"{name}_predict"], **close
        )
    stages = [
        stage
        for stage in ("evaluate", "step")
        if any(key.startswith(stage + "/") for key in reference)
    ]  # none for the MutualLearning of 0.1, which saved no compile arguments
    for stage in stages:
        if stage == "evaluate":
            logs = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
        else:
            logs = model.train_on_batch(x[:16], y[:16], return_dict=True)
        expected = {
            key.split("/", 1)[1]: float(value)
            for key, value in reference.items()
            if key.startswith(stage + "/")
        }
        assert set(logs) == set(expected), stage
        for key, value in expected.items():
            assert float(logs[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), (
                stage,
                key,
            )
    for name, part in parts.items():
        for i, weight in enumerate(part.get_weights() if stages else []):
            np.testing.assert_allclose(
                weight, reference[f"step_weights/{name}/{i}"], **close
            )


def run_litert(path, x):
    """`(outputs, input_detail)` of a `.tflite` file run on `x` by LiteRT's API.

    An independent route to keras-kd's own runner (which uses signature
    runners): one batched invocation, quantizing an int8 input and
    dequantizing an int8 output by the scales stored in the file.
    """
    import warnings

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the install
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=os.fspath(path))
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], (len(x),) + tuple(x.shape[1:]))
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    scale, zero_point = detail["quantization"]
    if scale:  # a quantized (int8) input: float x quantized by its scale
        info = np.iinfo(detail["dtype"])
        x = np.asarray(x, np.float32)
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    # Else the input's own type (float32 features, int32 token ids).
    interpreter.set_tensor(detail["index"], np.asarray(x).astype(detail["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"]).astype(np.float64)
    if out["dtype"] != np.float32:
        scale, zero_point = out["quantization"]
        y = (y - zero_point) * scale
    return y, detail


def two_output_model(hidden, name):
    """A Functional MLP with two outputs, "a" (3 logits) and "b" (5 logits)."""
    inputs = keras.Input((8,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    a = keras.layers.Dense(3, name="a")(h)
    b = keras.layers.Dense(5, name="b")(h)
    return keras.Model(inputs, [a, b], name=name)


# References for DIST (Huang et al. 2022), logit standardization (Sun et al.
# 2024) and DKD (Zhao et al. 2022), written from the papers in float64 numpy.


def np_softmax(z, temperature=1.0):
    return np.exp(np_log_softmax(np.asarray(z, np.float64) / temperature))


def np_standardize(z):
    """Sun et al. 2024: z-score with the sample standard deviation (ddof=1)."""
    z = np.asarray(z, np.float64)
    std = z.std(axis=-1, ddof=1, keepdims=True)
    return (z - z.mean(axis=-1, keepdims=True)) / (std + 1e-7)


def np_pearson(a, b, weights=None):
    """Pearson correlation by `np.cov` (weighted by `aweights`); 0 where a
    vector is constant, as in DIST's reference code."""
    c = np.cov(a, b, aweights=weights)
    return 0.0 if c[0, 0] * c[1, 1] == 0 else c[0, 1] / np.sqrt(c[0, 0] * c[1, 1])


def np_dist_parts(t, s, temperature, weights=None):
    """(per-sample inter-class terms, batch intra-class term) of DIST."""
    pt, ps = np_softmax(t, temperature), np_softmax(s, temperature)
    pt, ps = pt.reshape(-1, pt.shape[-1]), ps.reshape(-1, ps.shape[-1])
    inter = np.array([1 - np_pearson(ps[i], pt[i]) for i in range(len(ps))])
    classes = range(ps.shape[1])
    intra = 1 - np.mean([np_pearson(ps[:, j], pt[:, j], weights) for j in classes])
    return inter, intra


def np_dist(t, s, temperature=1.0, beta=1.0, gamma=1.0, weights=None):
    """DIST with Keras's default reduction: mean_i w_i * per-sample value."""
    inter, intra = np_dist_parts(t, s, temperature, weights)
    per = temperature**2 * (beta * inter + gamma * intra)
    w = np.ones_like(per) if weights is None else np.asarray(weights, np.float64)
    return np.mean(w * per)


def np_dkd_parts(t, s, labels, temperature):
    """Per-sample (TCKD, NCKD) of Zhao et al. 2022, from the probabilities."""
    pt, ps = np_softmax(t, temperature), np_softmax(s, temperature)
    tckd, nckd = [], []
    for i, k in enumerate(labels):
        bt = np.array([pt[i, k], 1 - pt[i, k]])
        bs = np.array([ps[i, k], 1 - ps[i, k]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        others = np.arange(pt.shape[1]) != k
        qt = pt[i, others] / pt[i, others].sum()
        qs = ps[i, others] / ps[i, others].sum()
        nckd.append(np.sum(qt * np.log(qt / qs)))
    return np.array(tckd), np.array(nckd)


def np_dkd(t, s, labels, temperature=4.0, target_weight=1.0, non_target_weight=8.0):
    tckd, nckd = np_dkd_parts(t, s, labels, temperature)
    per = temperature**2 * (target_weight * tckd + non_target_weight * nckd)
    return per.mean()


EXAMPLES_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    """The module of `examples/<name>.py`, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, EXAMPLES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_options(args, *flags, **options):
    """`args` with `--name value` options replaced or added, then `flags`."""
    args = list(args)
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = str(value)
        else:
            args += [flag, str(value)]
    return args + list(flags)


def readme_snippet(section: str) -> dict:
    """Runs the first Python block after the README heading `section` in
    this process's Keras flavour; returns its namespace."""
    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    code = readme.split(section, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    # the flavour of this process (`import keras` is Keras 3 under tf_keras too)
    code = code.replace("import keras, ", "from keras_kd.backend import keras\nimport ")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(tmp_path, script_text, workers=2, timeout=240, args=None):
    """Runs `script_text` as one process without `TF_CONFIG` ("single") and as
    `workers` MultiWorkerMirroredStrategy workers on 127.0.0.1 ("worker0",
    ...), all at once; returns what each saved to its `<name>.npz`.

    Each process gets `argv = [npz path, "single" | "worker", *args(name)]`.
    Output goes to `<name>.log` in `tmp_path` (files, not pipes, so that no
    process blocks on a full pipe while the others wait for it in a
    collective). It stops at the first failure (the other workers would wait
    in a collective until the deadline); a process still running then, or at
    `timeout` seconds, is killed, and the logs' tails are in the error.
    """
    script = tmp_path / "worker.py"
    script.write_text(script_text)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(workers)]}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    runs = {"single": dict(env)}
    for i in range(workers):
        config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
        runs[f"worker{i}"] = dict(env, TF_CONFIG=json.dumps(config))
    processes = {}
    try:
        for name, run_env in runs.items():
            role = "single" if name == "single" else "worker"
            argv = [str(script), str(tmp_path / f"{name}.npz"), role]
            argv += [str(a) for a in (args(name) if args else [])]
            with open(tmp_path / f"{name}.log", "w") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, *argv],
                    env=run_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + timeout
        codes = dict.fromkeys(processes)
        while time.monotonic() < deadline:
            codes = {name: p.poll() for name, p in processes.items()}
            if all(code == 0 for code in codes.values()) or any(
                code not in (None, 0) for code in codes.values()
            ):
                break
            time.sleep(0.2)
    finally:
        for process in processes.values():  # nothing outlives the test
            if process.poll() is None:
                process.kill()
                process.wait()
    if any(code != 0 for code in codes.values()):
        tails = [
            f"--- {name}: exit code {codes[name]} (None: killed)\n"
            + (tmp_path / f"{name}.log").read_text()[-3000:]
            for name in runs
        ]
        raise AssertionError("a process failed\n" + "\n".join(tails))
    results = {}
    for name in runs:
        with np.load(tmp_path / f"{name}.npz") as archive:
            results[name] = {key: archive[key] for key in archive.files}
    return results
