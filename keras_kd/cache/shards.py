"""A cache on disk: TFRecord shards and the manifest that describes them.

Each record holds a chunk of examples (at most the teacher pass's batch
size): a `count` and, per stored array, its raw little-endian bytes. Shards
are closed at `max_shard_bytes` (a shard holds at least one record), each
written to a temporary name and renamed; `manifest.json` is written last, so
a directory without it holds no finished cache.

The manifest records each shard's size on disk (`size_bytes`) and the sha256
of its bytes (`sha256`, hex: what `sha256sum` prints), hashed from the
temporary file just written, before its rename. `verify` checks them when a
cache is opened, so that a truncated or altered shard is refused with an
error that names it, before training, rather than failing inside the input
pipeline. Manifests of version 1 (keras-kd 0.1) carry no checksums: their
shards are checked by size alone (a TFRecord file holds its records' bytes
plus 16 bytes of framing per record).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from keras_kd import _utils
from keras_kd.backend import tf
from keras_kd.cache import batch, views

MANIFEST = "manifest.json"
FORMAT = "keras-kd teacher outputs"
VERSION = 2  # 2: each shard's `size_bytes` and `sha256`
# Bytes a TFRecord file adds per record: its length (8) and two CRCs (4 + 4).
_FRAMING = 16
# Bytes read at a time when a shard is hashed.
_BLOCK = 2**20
# dtypes `tf.io.decode_raw` reads back (bool is stored as uint8).
_RAW_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "bool",
)
# Examples per chunk when stored arrays in memory are decoded.
_CHUNK = 256


def _disk_dtype(dtype: str) -> str:
    return "uint8" if dtype == "bool" else dtype


class ShardWriter:
    """Writes records of stored arrays into shards of at most `max_bytes`."""

    def __init__(self, directory: str, max_bytes: int, prefix: str = "shard-"):
        self.directory = directory
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.shards = []
        self._records, self._bytes, self._examples = [], 0, 0

    def add(self, arrays, count: int) -> None:
        """Adds one chunk of `count` examples (stored arrays, batch first)."""
        feature = {"count": _int64(count)}
        for i, array in enumerate(arrays):
            array = np.asarray(array)
            if array.dtype.name not in _RAW_DTYPES:
                raise ValueError(
                    "Argument `path`: a cache on disk stores numeric inputs and "
                    f"labels ({', '.join(_RAW_DTYPES)}). Received an array of "
                    f"dtype {array.dtype.name}; keep such a cache in memory "
                    "(path=None) or encode the values as numbers first."
                )
            raw = array.astype(
                np.dtype(_disk_dtype(array.dtype.name)).newbyteorder("<")
            )
            feature[f"a{i}"] = _bytes(raw.tobytes())
        record = tf.train.Example(
            features=tf.train.Features(feature=feature)
        ).SerializeToString()
        if self._records and self._bytes + len(record) > self.max_bytes:
            self._flush()
        self._records.append(record)
        self._bytes += len(record)
        self._examples += count

    def close(self) -> list:
        """Writes the last shard; returns the shard list of the manifest."""
        if self._records:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = f"{self.prefix}{len(self.shards):05d}.tfrecord"
        records = self._records

        written = {}

        def write(temporary):
            with tf.io.TFRecordWriter(temporary) as writer:
                for record in records:
                    writer.write(record)
            # Hashed before the rename: the bytes that land under `name`
            # (just written, so read back from the page cache, not the disk).
            written["size_bytes"], written["sha256"] = file_checksum(temporary)

        _utils.write_atomically(os.path.join(self.directory, name), write)
        self.shards.append(
            {
                "file": name,
                "examples": self._examples,
                "records": len(records),
                "bytes": self._bytes,
                **written,
            }
        )
        self._records, self._bytes, self._examples = [], 0, 0


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def file_checksum(file: str) -> tuple:
    """`(size in bytes, sha256 hex digest)` of a file, read in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    with open(file, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def verify(directory: str, manifest: dict, contents: bool = True) -> None:
    """Raises unless each shard has the size and checksum its manifest records.

    Args:
        directory: the cache's directory.
        manifest: its manifest (the shards listed, each present).
        contents: also read each shard and compare its sha256 (where the
            manifest records one); False checks sizes only.

    Raises:
        ValueError: naming the first truncated, extended or altered shard.
    """
    for shard in manifest["shards"]:
        file = os.path.join(directory, shard["file"])
        expected = shard.get("size_bytes")
        if expected is None:  # version 1: the size its records make
            expected = shard["bytes"] + _FRAMING * shard["records"]
        size = os.path.getsize(file)
        if size != expected:
            _refuse(
                directory,
                file,
                f"holds {size} bytes, its manifest records {expected}"
                + (" (truncated)" if size < expected else ""),
            )
        if contents and "sha256" in shard:
            digest = file_checksum(file)[1]
            if digest != shard["sha256"]:
                _refuse(
                    directory,
                    file,
                    f"has sha256 {digest}, its manifest records "
                    f"{shard['sha256']} (altered)",
                )


def _refuse(directory: str, file: str, what: str):
    raise ValueError(
        f"Argument `path`={directory!r} holds a damaged cache: shard {file!r} "
        f"{what}. Delete the directory to compute the cache again."
    )


def write_manifest(directory: str, manifest: dict, name: str = MANIFEST) -> None:
    """Writes `manifest.json` atomically (last, once the shards are written)."""
    content = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _utils.write_atomically(os.path.join(directory, name), content)


def read_manifest(directory: str, name: str = MANIFEST):
    """The manifest of the cache at `directory`, or None if it has none."""
    file = os.path.join(directory, name)
    if not os.path.exists(file):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"Argument `path`={directory!r} holds a manifest that cannot be "
            f"read ({e}). Delete the directory to compute the cache again."
        ) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(
            f"Argument `path`={directory!r} holds a {MANIFEST} that is not a "
            "keras-kd teacher-output cache. Give an empty or new directory."
        )
    missing = [
        s["file"]
        for s in manifest["shards"]
        if not os.path.exists(os.path.join(directory, s["file"]))
    ]
    if missing:
        raise ValueError(
            f"Argument `path`={directory!r}: the cache is incomplete, shard(s) "
            f"{missing} listed in its manifest are missing. Delete the "
            "directory to compute the cache again."
        )
    return manifest


def dataset_from_shards(directory: str, manifest: dict, seed=None):
    """The unbatched `TeacherBatch` dataset that the shards hold, in order.

    With views (`manifest["layout"]["views"]`), one view per example is
    drawn from `seed` each time the dataset is iterated.
    """
    layout = manifest["layout"]
    chunks = _records(directory, manifest).map(
        _parser(layout), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if layout.get("views"):
        stored = chunks.unbatch()
        return _examples(views.choose(stored, layout, seed), manifest["num_examples"])
    ds = chunks.map(
        lambda *flat: batch.element(layout, flat),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return _examples(ds.unbatch(), manifest["num_examples"])


def _records(directory: str, manifest: dict):
    """The records of the shards in the order of the examples.

    A cache written by N workers (`manifest["workers"]`) holds global
    record (teacher batch) `b` in worker `b % N`'s shards: their records
    are read round robin.
    """
    workers = manifest.get("workers", 1)
    per_worker = [[] for _ in range(workers)]
    for shard in manifest["shards"]:
        per_worker[shard.get("worker", 0)].append(
            os.path.join(directory, shard["file"])
        )
    if workers == 1:
        return tf.data.TFRecordDataset(per_worker[0])
    total = sum(shard["records"] for shard in manifest["shards"])
    choice = tf.data.Dataset.range(total).map(lambda b: b % workers)
    return tf.data.Dataset.choose_from_datasets(
        [tf.data.TFRecordDataset(files) for files in per_worker], choice
    )


def _parser(layout):
    """A record's `count` examples as the flat tuple of stored arrays."""
    stored = batch.stored_leaves(layout)
    features = {"count": tf.io.FixedLenFeature([], tf.int64)}
    for i in range(len(stored)):
        features[f"a{i}"] = tf.io.FixedLenFeature([], tf.string)

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        arrays = []
        for i, (dtype, shape) in enumerate(stored):
            raw = tf.io.decode_raw(example[f"a{i}"], tf.as_dtype(_disk_dtype(dtype)))
            value = tf.reshape(raw, [-1] + list(shape))
            arrays.append(tf.cast(value, tf.bool) if dtype == "bool" else value)
        return tuple(arrays)

    return parse


def dataset_from_arrays(layout: dict, arrays: list, count: int, seed=None):
    """The unbatched `TeacherBatch` dataset of stored arrays in memory (with
    views, one drawn per example from `seed` at each iteration)."""
    if layout.get("views"):
        stored = tf.data.Dataset.from_tensor_slices(tuple(arrays))
        return _examples(views.choose(stored, layout, seed), count)
    if layout["top_k"] is None and layout["dtype"] == "float32":
        return tf.data.Dataset.from_tensor_slices(batch.element(layout, arrays))
    ds = tf.data.Dataset.from_tensor_slices(tuple(arrays)).batch(_CHUNK)
    ds = ds.map(
        lambda *flat: batch.element(layout, flat),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return _examples(ds.unbatch(), count)


def _examples(ds, count: int):
    """`ds` with its known number of examples (so that Keras knows an
    epoch's steps once it is batched)."""
    return ds.apply(tf.data.experimental.assert_cardinality(count))
