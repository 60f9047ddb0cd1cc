"""The tasks of the default-recipe study (`benchmarks/recipes.py --study`).

Nine classification tasks of three kinds, every one offline: data that ships
with scikit-learn or Python, MNIST from a local TFDS data dir, and tasks
generated here whose difficulty is set by their noise. Each task has a
teacher and two student sizes, "10%" and "1%" of the teacher's parameters
(the study records the exact share).

Each task is a `Task`: `load(data_dir)` returns `(fit, val, test,
num_classes)` as numpy `(x, y)` pairs (the validation split is held out of
the training data; nothing is chosen on the test split), `teacher()` a new
teacher, `student(size)` a new student of `"10%"` or `"1%"`, and the
training settings of each.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_kd import data, models
from keras_kd.backend import keras

L = keras.layers


@dataclasses.dataclass
class Task:
    name: str
    kind: str  # "images", "sequences", "tabular"
    source: str
    load: object
    teacher: object
    student: object
    teacher_epochs: int
    epochs: int
    lr: float = 1e-3
    batch: int = 64
    teacher_lr: float = 1e-3


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _split(x, y, val, test, seed=0):
    """Shuffles once with `seed`, then `(fit, val, test)` of the given sizes."""
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    n_fit = len(x) - val - test
    return (
        (x[:n_fit], y[:n_fit]),
        (x[n_fit : n_fit + val], y[n_fit : n_fit + val]),
        (x[n_fit + val :], y[n_fit + val :]),
    )


def load_digits(data_dir=None):
    (x, y), test, _, _ = data.load_image_classification("digits")
    fit, val = data.split_validation(x, y, 300)
    return fit, val, test, 10


def load_mnist(data_dir=None):
    (x, y), (x_te, y_te), _, _ = data.load_image_classification(
        "mnist", data_dir=data_dir, max_train=6_000, max_test=2_000
    )
    fit, val = data.split_validation(x, y, 1_000)
    return fit, val, (x_te, y_te), 10


def load_gratings(data_dir=None, n=4_000, size=16, classes=8, noise=0.8):
    """Oriented gratings: the class is the orientation (`classes` steps of
    180 degrees), with a random phase, spatial frequency and contrast, in
    Gaussian noise. A convolution sees it at once; a pixel MLP must learn
    every phase."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, classes, n)
    angle = np.pi * y / classes + rng.normal(0, 0.05, n)
    freq = rng.uniform(0.5, 1.1, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(0.5, 1.0, n)
    r = np.arange(size) - size / 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    img = contrast[:, None, None] * np.sin(
        freq[:, None, None] * proj + phase[:, None, None]
    )
    img = img + noise * rng.normal(size=img.shape)
    x = img[..., None].astype("float32")
    fit, val, test = _split(x, y, 600, 1_000)
    return fit, val, test, classes


def load_signal(data_dir=None, n=4_000, length=128, classes=8, noise=0.6):
    """1-D signals: the class is a waveform (sine, square, sawtooth, bursts)
    crossed with one of two frequency bands, with a random phase, amplitude
    and frequency inside the band, in Gaussian noise."""
    rng = np.random.default_rng(12)
    y = rng.integers(0, classes, n)
    wave, band = y % 4, y // 4
    f = np.where(band == 0, rng.uniform(2, 4, n), rng.uniform(6, 9, n))
    t = np.arange(length) / length
    ph = 2 * np.pi * (f[:, None] * t[None] + rng.uniform(0, 1, n)[:, None])
    s = np.sin(ph)
    sig = np.select(
        [wave[:, None] == 0, wave[:, None] == 1, wave[:, None] == 2],
        [s, np.sign(s), 2 * ((ph / (2 * np.pi)) % 1) - 1],
        s * (np.sin(ph / 4) > 0.3),
    )
    sig = rng.uniform(0.6, 1.2, n)[:, None] * sig + noise * rng.normal(size=sig.shape)
    x = sig[..., None].astype("float32")
    fit, val, test = _split(x, y, 600, 1_000)
    return fit, val, test, classes


def load_pydoc(data_dir=None, window=64, topics=8):
    """Which of Python's help topics (`pydoc_data.topics`, the longest
    `topics`) a `window`-character snippet comes from. Each topic's text is
    cut in order: the first 70% to train, then validation, then test, so no
    snippet overlaps another split's."""
    from pydoc_data.topics import topics as texts

    names = sorted(texts, key=lambda k: -len(texts[k]))[:topics]
    parts = {"fit": [], "val": [], "test": []}
    for label, name in enumerate(names):
        codes = np.frombuffer(texts[name].encode("ascii", "replace"), np.uint8)
        codes = np.minimum(codes, 127).astype("int32")
        cut = [0, int(0.7 * len(codes)), int(0.85 * len(codes)), len(codes)]
        for part, lo, hi in zip(parts, cut[:-1], cut[1:]):
            starts = np.arange(lo, hi - window, window)
            for s in starts:
                parts[part].append((codes[s : s + window], label))
    out = []
    for i, part in enumerate(parts):
        xs = np.stack([p[0] for p in parts[part]])
        ys = np.array([p[1] for p in parts[part]], "int32")
        order = np.random.default_rng(13 + i).permutation(len(xs))
        out.append((xs[order], ys[order]))
    return out[0], out[1], out[2], topics


def load_motifs(data_dir=None, n=4_000, length=48, vocab=16, classes=8):
    """Token sequences: the class is which of `classes` 3-token motifs is
    planted at a random place; every sequence also holds the motifs' tokens
    scattered singly (so counting tokens does not tell the class: their
    order does) and 15% of its tokens replaced at random."""
    rng = np.random.default_rng(14)
    motifs = np.stack([rng.choice(vocab, 3, replace=False) for _ in range(classes)])
    y = rng.integers(0, classes, n)
    x = rng.integers(0, vocab, (n, length))
    for i in range(n):
        where = rng.integers(0, length - 3)
        x[i, where : where + 3] = motifs[y[i]]
        other = motifs[rng.integers(0, classes)]
        spots = rng.choice(length, 3, replace=False)
        spots = spots[(spots < where) | (spots >= where + 3)]
        x[i, spots] = other[: len(spots)][::-1]
    flip = rng.random(x.shape) < 0.15
    x = np.where(flip, rng.integers(0, vocab, x.shape), x).astype("int32")
    fit, val, test = _split(x, y, 600, 1_000)
    return fit, val, test, classes


def load_clusters(data_dir=None):
    """scikit-learn's `make_classification`: 8 classes of 3 clusters each in
    12 informative of 20 features, 2% of labels flipped."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=4_000,
        n_features=20,
        n_informative=12,
        n_redundant=4,
        n_classes=8,
        n_clusters_per_class=3,
        flip_y=0.02,
        class_sep=1.2,
        random_state=15,
    )
    fit, val, test = _split(x.astype("float32"), y, 600, 1_000)
    return _standardize(fit, val, test) + (8,)


def load_quantiles(data_dir=None):
    """scikit-learn's `make_gaussian_quantiles`: 6 nested shells of a 10-D
    Gaussian (the class is the distance from the centre), plus 10 noise
    features."""
    from sklearn.datasets import make_gaussian_quantiles

    rng = np.random.default_rng(16)
    x, y = make_gaussian_quantiles(
        n_samples=4_000, n_features=10, n_classes=6, random_state=16
    )
    x = np.concatenate([x, rng.normal(size=(len(x), 10))], axis=1)
    fit, val, test = _split(x.astype("float32"), y, 600, 1_000)
    return _standardize(fit, val, test) + (6,)


def load_breast_cancer(data_dir=None):
    """scikit-learn's Wisconsin breast cancer set (569 tumours, 30 features,
    2 classes)."""
    from sklearn.datasets import load_breast_cancer as load

    x, y = load(return_X_y=True)
    fit, val, test = _split(x.astype("float32"), y, 114, 171)
    return _standardize(fit, val, test) + (2,)


def _standardize(fit, val, test):
    mean, std = fit[0].mean(0), fit[0].std(0) + 1e-6
    return tuple(((x - mean) / std, y) for x, y in (fit, val, test))


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def conv1d(shape, classes, filters, hidden, embed=None, name="conv1d"):
    """Two Conv1D ReLU layers (kernel 5, the second strided), global max
    pooling, a Dense ReLU layer, logits; token inputs are embedded first."""
    inputs = keras.Input(shape, dtype="int32" if embed else "float32")
    x = inputs
    if embed:
        x = L.Embedding(embed[0], embed[1])(x)
    x = L.Conv1D(filters, 5, padding="same", activation="relu")(x)
    x = L.Conv1D(2 * filters, 5, strides=2, padding="same", activation="relu")(x)
    x = L.GlobalMaxPooling1D()(x)
    x = L.Dense(hidden, activation="relu")(x)
    return keras.Model(inputs, L.Dense(classes)(x), name=name)


def bag(shape, classes, embed, hidden, name="bag"):
    """Embedding, mean over positions, a Dense ReLU layer, logits: a token
    student that cannot see order."""
    inputs = keras.Input(shape, dtype="int32")
    x = L.Embedding(embed[0], embed[1])(inputs)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(hidden, activation="relu")(x)
    return keras.Model(inputs, L.Dense(classes)(x), name=name)


def _mlp(shape, classes, hidden, **kw):
    return models.mlp(shape, classes, hidden=hidden, **kw)


TASKS = {
    "digits": Task(
        "digits",
        "images",
        "scikit-learn digits 8x8",
        load_digits,
        lambda s, c: models.cnn(s, c, name="teacher"),
        lambda s, c, size: _mlp(s, c, {"10%": 200, "1%": 20}[size]),
        teacher_epochs=30,
        epochs=25,
        lr=1e-2,
    ),
    "mnist": Task(
        "mnist",
        "images",
        "MNIST (first 6,000 training images)",
        load_mnist,
        lambda s, c: _mlp(s, c, (512, 512), dropout=0.3, jitter=2, name="teacher"),
        lambda s, c, size: _mlp(s, c, {"10%": 85, "1%": 8}[size]),
        teacher_epochs=15,
        epochs=10,
        batch=128,
        teacher_lr=1e-3,
    ),
    "gratings": Task(
        "gratings",
        "images",
        "generated oriented gratings 16x16 in noise",
        load_gratings,
        lambda s, c: models.cnn(s, c, filters=16, hidden=64, name="teacher"),
        lambda s, c, size: _mlp(s, c, {"10%": 50, "1%": 5}[size]),
        teacher_epochs=20,
        epochs=20,
        batch=128,
    ),
    "signal": Task(
        "signal",
        "sequences",
        "generated 1-D waveforms in noise",
        load_signal,
        lambda s, c: conv1d(s, c, 32, 128, name="teacher"),
        lambda s, c, size: conv1d(
            s, c, {"10%": 8, "1%": 2}[size], {"10%": 32, "1%": 8}[size]
        ),
        teacher_epochs=30,
        epochs=20,
        batch=128,
    ),
    "pydoc": Task(
        "pydoc",
        "sequences",
        "pydoc_data help topics, 64-character snippets",
        load_pydoc,
        lambda s, c: conv1d(s, c, 64, 128, embed=(128, 32), name="teacher"),
        lambda s, c, size: conv1d(
            s,
            c,
            {"10%": 16, "1%": 3}[size],
            {"10%": 32, "1%": 8}[size],
            embed=(128, {"10%": 8, "1%": 3}[size]),
        ),
        teacher_epochs=15,
        epochs=20,
        batch=128,
    ),
    "motifs": Task(
        "motifs",
        "sequences",
        "generated token sequences, planted motifs",
        load_motifs,
        lambda s, c: conv1d(s, c, 32, 128, embed=(16, 16), name="teacher"),
        lambda s, c, size: conv1d(
            s,
            c,
            {"10%": 8, "1%": 2}[size],
            {"10%": 24, "1%": 8}[size],
            embed=(16, {"10%": 8, "1%": 2}[size]),
        ),
        teacher_epochs=20,
        epochs=20,
        batch=128,
    ),
    "clusters": Task(
        "clusters",
        "tabular",
        "scikit-learn make_classification, 8 classes",
        load_clusters,
        lambda s, c: _mlp(s, c, (256, 256), dropout=0.2, name="teacher"),
        lambda s, c, size: _mlp(s, c, {"10%": (64, 64), "1%": 24}[size]),
        teacher_epochs=60,
        epochs=30,
        batch=128,
    ),
    "quantiles": Task(
        "quantiles",
        "tabular",
        "scikit-learn make_gaussian_quantiles, 6 shells",
        load_quantiles,
        lambda s, c: _mlp(s, c, (256, 256), dropout=0.2, name="teacher"),
        lambda s, c, size: _mlp(s, c, {"10%": (64, 64), "1%": 24}[size]),
        teacher_epochs=60,
        epochs=30,
        batch=128,
    ),
    "breast_cancer": Task(
        "breast_cancer",
        "tabular",
        "scikit-learn breast cancer (569 tumours)",
        load_breast_cancer,
        lambda s, c: _mlp(s, c, (64, 64), dropout=0.2, name="teacher"),
        lambda s, c, size: _mlp(s, c, {"10%": 20, "1%": 2}[size]),
        teacher_epochs=60,
        epochs=60,
        batch=64,
    ),
}
