"""Cached augmented views (FKD, Shen & Xing 2022): K views per example.

`with_teacher_outputs(..., augmentation=aug, views=K)` runs the
augmentation K times on each teacher batch and the teacher on each view,
and stores the views with the teacher's outputs on them (a leading axis of
K on the inputs and on the outputs). Reading draws one view per example,
afresh each time the dataset is iterated (each epoch), from a seeded
`tf.data.Dataset.random`: the student trains on augmented views labelled by
the teacher on exactly those views, without running the teacher.
"""

from __future__ import annotations

import inspect
import json
import random

import numpy as np

from keras_kd import _utils, augment
from keras_kd.backend import keras, tf
from keras_kd.cache import batch

_MAX_SEED = 2**31 - 1
# Examples per chunk when one view per example is drawn.
_CHUNK = 256


def check_arguments(augmentation, views, seed):
    """`(augmentation, views, seed)` checked.

    `views` and `augmentation` go together (both None: no views); `seed`
    needs them (None: see `draw_seed`).
    """
    if augmentation is None and views is None:
        if seed is not None:
            raise ValueError(
                "Argument `seed` draws the augmented views, so it needs "
                "`augmentation` and `views`. Received: seed="
                f"{seed!r} with augmentation=None, views=None."
            )
        return None, None, None
    if views is None:
        raise ValueError(
            "Argument `views` is required with `augmentation`: the number of "
            "augmented views stored per example (an int >= 1, e.g. views=4). "
            f"Received: augmentation={augmentation!r}, views=None."
        )
    if augmentation is None:
        raise ValueError(
            "Argument `augmentation` is required with `views`: the views are "
            "augmentations of each example (e.g. "
            f"augmentation=keras_kd.augment.jitter(2)). Received: views={views!r}, "
            "augmentation=None."
        )
    augmentation = augment.check_augmentation(augmentation)
    views = _utils.check_int(views, "views", 1, "augmented views stored per example")
    if seed is None:
        return augmentation, views, None
    seed = _utils.check_int(seed, "seed", 0, "a random seed")
    if seed > _MAX_SEED:
        raise ValueError(
            f"Argument `seed` must be at most {_MAX_SEED}. Received: seed={seed}."
        )
    return augmentation, views, seed


def draw_seed() -> int:
    """A seed from Python's `random` (`keras.utils.set_random_seed` makes
    it repeatable)."""
    return random.randint(0, _MAX_SEED)


def describe(augmentation) -> dict:
    """What a manifest records of an augmentation: its class (a function's
    qualified name) and, where JSON-serializable, its config without the
    layer's name."""
    if isinstance(augmentation, keras.layers.Layer):
        name = type(augmentation).__name__
        try:
            config = dict(augmentation.get_config())
            config.pop("name", None)
            config = json.loads(json.dumps(config, sort_keys=True))
        except (NotImplementedError, TypeError, ValueError):
            config = None
        return {"class": name, "config": config}
    if inspect.isfunction(augmentation) or inspect.ismethod(augmentation):
        return {"class": augmentation.__qualname__, "config": None}
    return {"class": type(augmentation).__name__, "config": None}


def check_reuse(manifest, path, views, augmentation) -> None:
    """Raises unless the cache at `path` holds these views."""
    recorded = manifest["layout"].get("views"), manifest.get("augmentation")
    given = views, None if augmentation is None else describe(augmentation)
    if recorded != given:
        raise ValueError(
            f"Argument `path`={path!r} holds a cache written with "
            f"views={recorded[0]!r}, augmentation={recorded[1]!r}. Received: "
            f"views={given[0]!r}, augmentation={given[1]!r}. Give the same "
            "settings, or another `path` for the new ones."
        )


def step(seed: int, batch_index: int, view: int) -> int:
    """The augmentation's step for one view of one teacher batch: a hash
    of the seed, the batch's index in the data and the view's index (so a
    batch gets the same views whichever worker computes it)."""
    state = np.random.SeedSequence([seed, batch_index, view]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


def function(augmentation, views: int, run):
    """`(x, steps) -> (views of x, teacher outputs on them)`, each with a
    view axis (axis 1) after the batch axis; `steps` int64 `(views,)`."""

    @tf.function(reduce_retracing=True)
    def compute(x, steps):
        inputs, outputs = [], []
        for k in range(views):
            view, _ = augment.transform_batch(x, augmentation, None, steps[k])
            inputs.append(view)
            outputs.append(run(view))

        def stack(*values):
            return tf.stack(values, axis=1)

        return (
            tf.nest.map_structure(stack, *inputs),
            tf.nest.map_structure(stack, *outputs),
        )

    return compute


def _pick(layout, flat, index):
    """The stored arrays of a chunk with one view per example: `index`."""
    inputs = len(batch.leaves(layout["x"]))
    rest = len(batch.leaves(layout["y"])) + len(batch.leaves(layout["sample_weight"]))

    def gather(value):
        return tf.gather(value, index, axis=1, batch_dims=1)

    flat = list(flat)
    return (
        [gather(v) for v in flat[:inputs]]
        + flat[inputs : inputs + rest]
        + [gather(v) for v in flat[inputs + rest :]]
    )


def choose(stored, layout, seed: int):
    """`TeacherBatch`es of one view per example from the stored examples.

    Args:
        stored: an unbatched dataset of flat tuples of stored arrays, views
            on axis 0 of the inputs and outputs.
        layout: the cache's layout (`views` = K).
        seed: the seed of the draws: `tf.data.Dataset.random` re-randomized
            on each iteration, so each epoch draws anew and a dataset made
            with the same seed repeats the sequence of draws.

    Returns:
        An unbatched dataset of `TeacherBatch`.
    """
    count = layout["views"]
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def select(flat, draw):
        index = tf.math.floormod(draw, count)
        return batch.element(layout, _pick(layout, flat, index))

    ds = tf.data.Dataset.zip((stored, draws)).batch(_CHUNK)
    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.unbatch()


__all__ = [
    "check_arguments",
    "check_reuse",
    "choose",
    "describe",
    "draw_seed",
    "function",
    "step",
]
