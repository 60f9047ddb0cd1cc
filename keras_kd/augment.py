"""Consistent teaching: one augmented (and mixed) view for teacher and student.

Beyer et al. 2022 ("Knowledge distillation: a good teacher is patient and
consistent") found that a student learns most when the teacher labels
exactly the view the student trains on: the same crop, the same shift, the
same mixture of images (function matching). `keras_kd.Distiller` does this
with its `augmentation=` and `mixup=` arguments; this module holds the
mechanics, as small pure functions on a batch and two serializable helpers:

* `MixUp` (or `mixup(alpha)`): input mixup, `lam * x + (1 - lam) * x[perm]`
  with `lam ~ Beta(alpha, alpha)` drawn once per batch, folded so that
  `lam >= 0.5`.
* `Jitter` (or `jitter(pixels)`): a Keras layer that shifts each image by up
  to `pixels` pixels, filling with the nearest edge pixel.

**Randomness.** Inside a `Distiller`'s train step every random draw is a
stateless TensorFlow op whose key is folded from a seed, the optimizer's
`iterations` and the replica's id (`step_key`): it works inside
`tf.function`, under `tf.distribute` (each replica draws its own lam,
permutation and shifts for its part of the batch) and in both Keras
flavours, and a run with seeds set repeats exactly. A `seed=None` is drawn
from Python's `random` when the object is made, so
`keras.utils.set_random_seed` makes it repeatable too.

Example:

```python
import keras_kd as kd

distiller = kd.Distiller(
    teacher, student,
    augmentation=kd.augment.jitter(2),  # or keras.Sequential([...]) / a function
    mixup=kd.augment.mixup(alpha=0.2),  # or mixup=0.2
)
```
"""

from __future__ import annotations

import contextlib
import numbers
import random

import numpy as np

from keras_kd import _utils
from keras_kd.backend import keras, register_serializable, tf

_MAX_SEED = 2**31 - 1
_MAX_ALPHA = 1e6  # Beta(alpha, alpha) is 0.5 long before: finite values only

# Salts that keep the draws of the augmentation, the mixup and a jitter
# layer apart when they share a step.
_AUGMENTATION_SALT = 0x5EED
_MIXUP_SALT = 0x3117

# The key of the current training step, set by `transform_batch` while the
# augmentation runs, read by `Jitter` (a stack: Python-level, at trace time).
_STEP_KEYS = []


def _check_seed(seed):
    """`seed` as an int in [0, 2**31 - 1], one drawn from `random` if None."""
    if seed is None:
        return random.randint(0, _MAX_SEED)
    seed = _utils.check_int(seed, "seed", 0, "a random seed")
    if seed > _MAX_SEED:
        raise ValueError(
            f"Argument `seed` must be at most {_MAX_SEED}. Received: seed={seed}."
        )
    return seed


def _replica_id():
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: one stream
        return tf.zeros((), tf.int64)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)


def step_key(seed, step, salt: int = 0):
    """A stateless random key from a seed, a step and the replica's id.

    Args:
        seed: an int.
        step: the training step, an integer tensor or variable (a
            `Distiller` gives its optimizer's `iterations`).
        salt: an int that separates draws sharing a seed and a step.

    Returns:
        An int64 tensor of shape `(2,)` for `tf.random.stateless_*` ops;
        different on each replica of a `tf.distribute` strategy.
    """
    key = tf.constant([seed, salt], tf.int64)
    step = tf.cast(tf.convert_to_tensor(step), tf.int64)
    key = tf.random.experimental.stateless_fold_in(key, step)
    return tf.random.experimental.stateless_fold_in(key, _replica_id())


@contextlib.contextmanager
def _using_key(key):
    _STEP_KEYS.append(key)
    try:
        yield
    finally:
        _STEP_KEYS.pop()


def _current_key():
    """The step's key inside a `Distiller` step; else a fresh stateful draw."""
    if _STEP_KEYS:
        return _STEP_KEYS[-1]
    return tf.cast(tf.random.uniform([2], maxval=_MAX_SEED, dtype=tf.int32), tf.int64)


# ---------------------------------------------------------------------------
# MixUp
# ---------------------------------------------------------------------------


@register_serializable
class MixUp:
    """Input mixup whose mixture the teacher labels (function matching).

    In each training step of a `keras_kd.Distiller` built with
    `mixup=MixUp(alpha)`, one `lam ~ Beta(alpha, alpha)` is drawn for the
    batch (as `g1 / (g1 + g2)` of two Gamma(alpha) draws, by stateless ops
    that XLA compiles too), folded so that
    `lam >= 0.5`, and the inputs become `lam * x + (1 - lam) * x[perm]` for
    a random permutation `perm` of the batch. Teacher and student both see
    the mixture; the hard loss is
    `lam * loss(y, p) + (1 - lam) * loss(y[perm], p)`, with each row's sample
    weight; the distillation loss compares the two models on the mixture;
    compiled metrics are scored against `y`. Under `tf.distribute` each
    replica mixes its own part of the batch. In a batch of
    `keras_kd.data.mix`, labelled rows are mixed with labelled rows and
    unlabelled with unlabelled.

    Small `alpha` (0.1-0.4) mixes gently, as in Zhang et al. 2018; Beyer et
    al. 2022 use stronger mixing (`alpha=1`) with long schedules.

    Args:
        alpha: the Beta distribution's parameter, > 0.
        seed: an int seed of the draws (None: drawn from Python's `random`
            now; `keras.utils.set_random_seed` makes that repeatable).

    Example:

    >>> import keras_kd as kd
    >>> m = kd.augment.MixUp(alpha=0.2, seed=0)
    >>> lam, perm = m.sample(step=0, sizes=[4])
    >>> 0.5 <= float(lam) <= 1.0, sorted(perm.numpy().tolist())
    (True, [0, 1, 2, 3])
    """

    def __init__(self, alpha: float = 0.2, seed: int | None = None):
        self.alpha = _utils.check_number(
            alpha,
            "alpha",
            0.0,
            _MAX_ALPHA,
            low_open=True,
            what="the Beta distribution's parameter of mixup",
        )
        self.seed = None if seed is None else _check_seed(seed)
        self._seed = _check_seed(seed)

    def sample(self, step, sizes):
        """Draws the step's `lam` and permutation.

        Args:
            step: the training step (an integer, tensor or variable).
            sizes: the row counts of the blocks to permute separately, in
                order (one block: `[batch_size]`); each may be a tensor.

        Returns:
            `(lam, perm)`: a float32 scalar in [0.5, 1] and an int32 vector
            permuting the rows within each block.
        """
        key = step_key(self._seed, step, _MIXUP_SALT)
        keys = tf.random.experimental.stateless_split(key, 3)
        # lam = g1 / (g1 + g2) for g1, g2 ~ Gamma(alpha), from their logs
        log_g1 = _stateless_log_gamma(self.alpha, keys[0])
        log_g2 = _stateless_log_gamma(self.alpha, keys[1])
        lam = tf.sigmoid(log_g1 - log_g2)
        lam = tf.maximum(lam, 1.0 - lam)
        perms, offset = [], 0
        for i, size in enumerate(sizes):
            uniform = tf.random.stateless_uniform(
                tf.reshape(size, [1]),
                tf.random.experimental.stateless_fold_in(keys[2], i),
            )
            perms.append(tf.cast(tf.argsort(uniform), tf.int32) + offset)
            offset = offset + tf.cast(size, tf.int32)
        return tf.cast(lam, tf.float32), tf.concat(perms, axis=0)

    def __call__(self, x, step=0):
        """`(mix_inputs(x, lam, perm), lam, perm)` for one batch `x`."""
        lam, perm = self.sample(step, [_utils.batch_size(x)])
        return mix_inputs(x, lam, perm), lam, perm

    def get_config(self):
        return {"alpha": self.alpha, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"MixUp(alpha={self.alpha}, seed={self.seed})"


def _stateless_log_gamma(alpha: float, key, tries: int = 16):
    """log of one Gamma(alpha, 1) draw, by stateless ops XLA compiles.

    Marsaglia and Tsang's (2000) method with `tries` candidates drawn at once
    and the first accepted one kept (each is accepted with probability over
    0.95, so all are rejected with probability under 1e-20; then the last is
    kept); for alpha < 1, Gamma(alpha) = Gamma(alpha + 1) * U**(1 / alpha),
    taken in logs so that no draw underflows. (`tf.random.stateless_gamma`
    has no XLA kernel.)
    """
    boosted = alpha + 1.0 if alpha < 1.0 else alpha
    d = boosted - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    keys = tf.random.experimental.stateless_split(key, 3)
    z = tf.random.stateless_normal([tries], keys[0])
    u = tf.random.stateless_uniform([tries], keys[1], minval=1e-12, maxval=1.0)
    v = tf.pow(1.0 + c * z, 3)
    log_v = tf.math.log(tf.maximum(v, 1e-30))
    accepted = (v > 0.0) & (tf.math.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    first = tf.argmax(tf.concat([accepted[:-1], [True]], 0), output_type=tf.int32)
    log_g = np.log(d) + log_v[first]
    if alpha < 1.0:
        w = tf.random.stateless_uniform([], keys[2], minval=1e-30, maxval=1.0)
        log_g = log_g + tf.math.log(w) / alpha
    return log_g


def mixup(alpha: float = 0.2, seed: int | None = None) -> MixUp:
    """A `MixUp(alpha, seed)` for `Distiller(..., mixup=...)`.

    Args:
        alpha: the Beta distribution's parameter, > 0.
        seed: an int seed, or None.

    Returns:
        A `MixUp`.
    """
    return MixUp(alpha=alpha, seed=seed)


def as_mixup(value):
    """`Distiller`'s `mixup` argument as a `MixUp`, or None."""
    if value is None or isinstance(value, MixUp):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        if not 0 < value <= _MAX_ALPHA:
            raise ValueError(
                "Argument `mixup` must be a Beta parameter alpha in (0, "
                f"{_MAX_ALPHA:g}] (or a `keras_kd.augment.MixUp`). Received: "
                f"mixup={value!r}."
            )
        return MixUp(alpha=float(value))
    raise TypeError(
        "Argument `mixup` must be None, a float alpha > 0 or a "
        f"`keras_kd.augment.MixUp`. Received: mixup={value!r} of type "
        f"{type(value).__name__}."
    )


# ---------------------------------------------------------------------------
# Jitter
# ---------------------------------------------------------------------------


@register_serializable
class Jitter(keras.layers.Layer):
    """Shifts each image by up to `pixels` pixels, filling with the edge.

    A random translation by whole pixels (drawn uniformly and independently
    per image and per axis from `[-pixels, pixels]`); the pixels shifted in
    repeat the nearest edge pixel. Active only in training (`training=True`);
    the identity otherwise. Inputs are images `(batch, height, width, ...)`.

    Inside a `Distiller`'s `augmentation` the shifts are drawn from the
    step's stateless key (the same on teacher and student, different on
    each step and replica); elsewhere (e.g. in a model trained alone) from
    TensorFlow's global random state.

    Args:
        pixels: the largest shift, an int >= 1.
        seed: an int seed, or None (drawn from Python's `random`).
        **kwargs: passed to `keras.layers.Layer`.

    Example:

    ```python
    augmentation = kd.augment.jitter(2)
    distiller = kd.Distiller(teacher, student, augmentation=augmentation)
    ```
    """

    def __init__(self, pixels: int = 2, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pixels = _utils.check_int(pixels, "pixels", 1, "the largest shift")
        self.seed = None if seed is None else _check_seed(seed)
        self._seed = _check_seed(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        if inputs.shape.rank is not None and inputs.shape.rank < 3:
            raise ValueError(
                "Jitter shifts images of shape (batch, height, width, ...). "
                f"Received inputs of shape {tuple(inputs.shape)}."
            )
        key = tf.random.experimental.stateless_fold_in(_current_key(), self._seed)
        shape = tf.shape(inputs)
        shifts = tf.random.stateless_uniform(
            tf.stack([shape[0], 2]),
            key,
            minval=-self.pixels,
            maxval=self.pixels + 1,
            dtype=tf.int32,
        )
        return shift_images(inputs, shifts)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"pixels": self.pixels, "seed": self.seed})
        return config


def jitter(pixels: int = 2, seed: int | None = None) -> Jitter:
    """A `Jitter(pixels, seed)` layer: shifts images by up to `pixels`."""
    return Jitter(pixels=pixels, seed=seed)


def shift_images(images, shifts):
    """Each image moved by whole pixels, edges repeated into the gap.

    `out[b, i, j] = images[b, clip(i - dy_b), clip(j - dx_b)]`.

    Args:
        images: `(batch, height, width, ...)`.
        shifts: int32 `(batch, 2)`: `(dy, dx)` per image (down and right).

    Returns:
        The shifted images, shaped as `images`.
    """
    shape = tf.shape(images)
    rows = tf.range(shape[1])[None, :] - shifts[:, :1]
    cols = tf.range(shape[2])[None, :] - shifts[:, 1:]
    rows = tf.clip_by_value(rows, 0, shape[1] - 1)
    cols = tf.clip_by_value(cols, 0, shape[2] - 1)
    out = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


# ---------------------------------------------------------------------------
# A batch
# ---------------------------------------------------------------------------


def check_augmentation(augmentation):
    """Validates `Distiller`'s `augmentation`: None, a layer or a function."""
    if augmentation is None or isinstance(augmentation, keras.layers.Layer):
        return augmentation
    if callable(augmentation) and not isinstance(augmentation, type):
        return augmentation
    raise TypeError(
        "Argument `augmentation` must be a Keras layer (such as a "
        "`keras.Sequential` of preprocessing layers) or a function of the "
        f"batch's inputs. Received: augmentation={augmentation!r} of type "
        f"{type(augmentation).__name__}."
    )


def augment_inputs(augmentation, x):
    """`augmentation(x)`, a layer called with `training=True`."""
    if isinstance(augmentation, keras.layers.Layer):
        return augmentation(x, training=True)
    return augmentation(x)


def mix_inputs(x, lam, perm):
    """`lam * x + (1 - lam) * x[perm]` for each input of the batch.

    Args:
        x: a batch of inputs (a floating tensor or a nest of them).
        lam: a scalar in [0, 1].
        perm: an int vector of row indices.

    Returns:
        The mixed inputs, with `x`'s structure and dtypes.
    """

    def mix(value):
        value = tf.convert_to_tensor(value)
        if not value.dtype.is_floating:
            raise TypeError(
                "mixup mixes the inputs, which must be floating point. "
                f"Received an input of dtype {value.dtype.name} (token ids "
                "cannot be mixed: use mixup=None)."
            )
        weight = tf.cast(lam, value.dtype)
        return weight * value + (1.0 - weight) * tf.gather(value, perm)

    return tf.nest.map_structure(mix, x)


def mixed_loss(loss_fn, y, y_pred, lam, perm, sample_weight=None):
    """`lam * loss_fn(y, y_pred) + (1 - lam) * loss_fn(y[perm], y_pred)`.

    The loss of mixed inputs against both labels (Zhang et al. 2018), each
    row keeping its sample weight.

    Args:
        loss_fn: a function `(y, y_pred, sample_weight)` -> scalar.
        y: the labels (a tensor or a nest).
        y_pred: the predictions for the mixed inputs.
        lam: the mixing weight.
        perm: the permutation that mixed the rows.
        sample_weight: optional sample weights.

    Returns:
        A float32 scalar.
    """
    permuted = tf.nest.map_structure(lambda t: tf.gather(t, perm), y)
    first = loss_fn(y, y_pred, sample_weight)
    second = loss_fn(permuted, y_pred, sample_weight)
    lam = tf.cast(lam, tf.float32)
    return lam * first + (1.0 - lam) * second


def transform_batch(x, augmentation, mixup, step, labelled=None):
    """The view of a training batch that teacher and student both get.

    Augments then mixes. With `labelled` (the leading rows that have
    labels), labelled rows are mixed among themselves, the rest likewise.

    Args:
        x: the batch's inputs.
        augmentation: None, a Keras layer or a function of `x`.
        mixup: None or a `MixUp`.
        step: the training step (the optimizer's `iterations`).
        labelled: None, or the number of leading labelled rows.

    Returns:
        `(x, mix)` where `mix` is None or `(lam, perm)`.
    """
    if augmentation is not None:
        with _using_key(step_key(0, step, _AUGMENTATION_SALT)):
            x = augment_inputs(augmentation, x)
    if mixup is None:
        return x, None
    rows = _utils.batch_size(x)
    sizes = [rows] if labelled is None else [labelled, rows - labelled]
    lam, perm = mixup.sample(step, sizes)
    return mix_inputs(x, lam, perm), (lam, perm)


__all__ = [
    "Jitter",
    "MixUp",
    "augment_inputs",
    "jitter",
    "mix_inputs",
    "mixed_loss",
    "mixup",
    "shift_images",
    "step_key",
    "transform_batch",
]
