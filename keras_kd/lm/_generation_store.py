"""The disk store of `keras_kd.lm.teacher_generations`: shards and manifest.

The windows are TFRecord shards written by the teacher-output cache's writer
(`keras_kd.cache.shards`, layout without teacher outputs), published by
`generations.json`, written last: the teacher's name and weight fingerprint,
a sha256 of the prompts, the settings, the example count and each shard's
size and sha256. Here: writing a store, reading one back after checking that
it was made by the same teacher, prompts and settings, and refusing stored
logits whose generations are gone.

Private to `keras_kd.lm`: `sequence_level.py` imports these by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from keras_kd.backend import tf
from keras_kd.cache import batch, shards

MANIFEST = "generations.json"
# The cache's shard format (a layout without teacher outputs), told apart by
# its `contents`.
CONTENTS = "teacher generations"
VERSION = 1
_SHARD_PREFIX = "generations-"
_SHARD_BYTES = 256 * 2**20


def read_store(path, manifest, teacher, weights_fingerprint, digest, settings):
    """The windows of the finished store at `path` (its `manifest` read),
    after checking that they are those of this teacher, prompts and
    settings (`settings.seed=None`: any seed, the recorded one) and
    verifying the shards' sizes and checksums."""
    if manifest.get("contents") != CONTENTS:
        raise ValueError(
            f"Argument `path`={path!r} holds a {MANIFEST} that is not a store "
            "of teacher generations. Give an empty or new directory."
        )
    if settings.seed is None:  # any seed: the recorded one
        settings = dataclasses.replace(settings, seed=manifest["settings"]["seed"])
    _check_reuse(manifest, path, teacher, weights_fingerprint, digest, settings)
    shards.verify(path, manifest)
    return _dataset(path, manifest)


def write_store(path, teacher, weights_fingerprint, digest, shape, settings, chunks):
    """Writes the `(ids, next_ids, weights)` arrays of `chunks` as shards,
    then publishes them with the manifest (`shape`: the prompts'); returns
    the stored windows."""
    writer = shards.ShardWriter(path, _SHARD_BYTES, _SHARD_PREFIX)
    layout, count = None, 0
    for arrays in chunks:
        if layout is None:
            layout = _layout(*arrays)
        writer.add(list(arrays), len(arrays[0]))
        count += len(arrays[0])
    manifest = {
        "format": shards.FORMAT,
        "contents": CONTENTS,
        "version": VERSION,
        "teacher": {"name": teacher.name, "fingerprint": weights_fingerprint},
        "prompts": {"sha256": digest, "shape": list(shape)},
        "settings": dataclasses.asdict(settings),
        "num_examples": count,
        "layout": layout,
        "shards": writer.close(),
    }
    shards.write_manifest(path, manifest, name=MANIFEST)  # last: the publish
    return _dataset(path, manifest)


def _layout(ids, next_ids, weights) -> dict:
    """The cache layout of a window: inputs, labels, weights, no outputs."""
    return {
        "x": batch.describe(ids),
        "y": batch.describe(next_ids),
        "sample_weight": batch.describe(weights),
        "teacher_outputs": batch.describe(()),
        "dtype": "float32",
        "top_k": None,
    }


def _dataset(path, manifest):
    """The stored windows as `(ids, next_ids, weights)` examples."""
    examples = shards.dataset_from_shards(path, manifest)
    return examples.map(
        lambda element: (element.x, element.y, element.sample_weight),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def prompts_digest(prompts, lengths) -> str:
    """sha256 of the prompts' shape and tokens (padding after a row's
    length, which generation never reads, as 0)."""
    count, width = prompts.shape
    if lengths is None:
        lengths = np.full(count, width)
    inside = np.arange(width)[None, :] < lengths[:, None]
    tokens = np.where(inside, prompts, 0).astype("<i4")
    digest = hashlib.sha256(f"{count}x{width};".encode())
    digest.update(np.asarray(lengths, "<i4").tobytes())
    digest.update(tokens.tobytes())
    return "sha256:" + digest.hexdigest()


def refuse_orphan_logits(path) -> None:
    """Stored logits without the generations they were computed on (which
    are written first) are of unknown sequences: refused."""
    if not os.path.isdir(path):
        return
    for name in sorted(os.listdir(path)):
        if name.startswith("logits") and shards.read_manifest(os.path.join(path, name)):
            raise ValueError(
                f"Argument `path`={path!r} holds teacher logits ({name!r}) but "
                f"no {MANIFEST}: the generations they were computed on are "
                "gone. Delete the directory or give another `path`."
            )


def _check_reuse(manifest, path, teacher, weights_fingerprint, digest, settings):
    recorded = manifest["teacher"]
    if recorded["fingerprint"] != weights_fingerprint:
        raise ValueError(
            f"Argument `path`={path!r} holds stale generations: they are those "
            f"of teacher {recorded['name']!r} with weights "
            f"{recorded['fingerprint'][:19]}..., not of the teacher given "
            f"({teacher.name!r}, weights {weights_fingerprint[:19]}...). "
            "Delete the directory or give another `path` to generate with "
            "this teacher."
        )
    if manifest["prompts"]["sha256"] != digest:
        raise ValueError(
            f"Argument `path`={path!r} holds the generations of other prompts "
            f"(shape {tuple(manifest['prompts']['shape'])}, "
            f"{manifest['prompts']['sha256'][:19]}...; received {digest[:19]}... "
            "for the `prompts` and `prompt_lengths` given). Delete the "
            "directory or give another `path`."
        )
    given = dataclasses.asdict(settings)
    differing = sorted(k for k in given if manifest["settings"].get(k) != given[k])
    if differing:
        stored = ", ".join(f"{k}={manifest['settings'].get(k)!r}" for k in differing)
        received = ", ".join(f"{k}={given[k]!r}" for k in differing)
        raise ValueError(
            f"Argument `path`={path!r} holds generations made with {stored}. "
            f"Received: {received}. Give the same settings, or another `path` "
            "for the new ones."
        )
