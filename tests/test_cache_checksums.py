"""Shard checksums of the teacher-output cache on disk.

The manifest records each shard's size and sha256; a cache is verified when
it is opened again, so that a truncated or altered shard is refused with an
error naming the file (not TensorFlow's `DataLossError` inside the input
pipeline, mid-training).
"""

import hashlib
import json
import os

import numpy as np
import pytest

import keras_kd as kd
from conftest import make_mlp
from keras_kd.backend import tf
from keras_kd.cache import shards, workers


def _everything(dataset):
    """Every leaf of an unbatched cache, as numpy, in flat order."""
    return [np.asarray(v) for v in tf.nest.flatten(next(iter(dataset.batch(1000))))]


def _cache(data, path, teacher=None):
    x, y = data
    teacher = teacher or make_mlp(16, name="teacher")
    cached = kd.data.with_teacher_outputs(
        teacher, (x, y), batch_size=8, path=path, max_shard_bytes=600
    )
    return teacher, cached


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _shard(path, index=1):
    return path / _manifest(path)["shards"][index]["file"]


def _reopen(teacher, path):
    return kd.data.with_teacher_outputs(teacher, None, path=path)


def test_manifest_records_each_shards_size_and_sha256(data, tmp_path):
    path = tmp_path / "cache"
    _cache(data, path)
    manifest = _manifest(path)
    assert manifest["version"] == 2
    assert len(manifest["shards"]) > 2
    for shard in manifest["shards"]:
        content = (path / shard["file"]).read_bytes()
        assert shard["size_bytes"] == len(content)
        assert shard["sha256"] == hashlib.sha256(content).hexdigest()
        # TFRecord framing: 16 bytes per record beside the records' bytes
        assert shard["size_bytes"] == shard["bytes"] + 16 * shard["records"]


def test_good_cache_reopens_bit_for_bit(data, tmp_path):
    x, y = data
    path = tmp_path / "cache"
    teacher, cached = _cache(data, path)
    first = _everything(cached)
    again = _everything(_reopen(teacher, path))
    assert len(again) == len(first) == 3
    for a, b in zip(first, again):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(again[0], x)
    np.testing.assert_array_equal(again[1], y)


@pytest.mark.parametrize("cut", [1, 17, "half"])
def test_truncated_shard_is_refused_naming_the_file(data, tmp_path, cut):
    path = tmp_path / "cache"
    teacher, _ = _cache(data, path)
    shard = _shard(path)
    content = shard.read_bytes()
    cut = len(content) // 2 if cut == "half" else cut
    shard.write_bytes(content[:-cut])
    with pytest.raises(ValueError, match="truncated") as error:
        _reopen(teacher, path)
    message = str(error.value)
    assert str(shard) in message
    assert f"holds {len(content) - cut} bytes" in message
    assert f"records {len(content)}" in message


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_shard_with_one_altered_byte_is_refused_naming_the_file(data, tmp_path, where):
    path = tmp_path / "cache"
    teacher, _ = _cache(data, path)
    shard = _shard(path, index=0)
    content = bytearray(shard.read_bytes())
    index = {"first": 0, "middle": len(content) // 2, "last": len(content) - 1}[where]
    content[index] ^= 0x01
    shard.write_bytes(bytes(content))  # the same size
    with pytest.raises(ValueError, match="altered") as error:
        _reopen(teacher, path)
    assert str(shard) in str(error.value)
    assert hashlib.sha256(content).hexdigest() in str(error.value)


def test_grown_shard_is_refused(data, tmp_path):
    path = tmp_path / "cache"
    teacher, _ = _cache(data, path)
    shard = _shard(path)
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="damaged cache") as error:
        _reopen(teacher, path)
    assert str(shard) in str(error.value)


def _as_version_1(path):
    """The manifest as keras-kd 0.1 wrote it: no size or sha256 per shard."""
    manifest = _manifest(path)
    manifest["version"] = 1
    for shard in manifest["shards"]:
        del shard["size_bytes"], shard["sha256"]
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_without_checksums_is_read_with_a_size_check(data, tmp_path):
    path = tmp_path / "cache"
    teacher, cached = _cache(data, path)
    first = _everything(cached)
    _as_version_1(path)
    for a, b in zip(first, _everything(_reopen(teacher, path))):
        np.testing.assert_array_equal(b, a)
    shard = _shard(path)
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated") as error:
        _reopen(teacher, path)
    assert str(shard) in str(error.value)


def _written(path, prefix, arrays, chunks):
    """The shards of `chunks` chunks of `arrays` written by a ShardWriter."""
    writer = shards.ShardWriter(str(path), max_bytes=200, prefix=prefix)
    for _ in range(chunks):
        writer.add(arrays, len(arrays[0]))
    return writer.close()


def test_worker_manifests_merge_with_their_checksums(tmp_path):
    """`workers.assemble` without a cluster: the barrier is a stand-in that
    returns worker 0's value, worker 1's partial manifest written first."""
    arrays = [np.arange(12, dtype="float32").reshape(4, 3), np.arange(4)]
    layout = {"x": "stand-in"}
    theirs = _written(tmp_path, "shard-w00001-", arrays, 2)
    shards.write_manifest(
        str(tmp_path),
        {"format": shards.FORMAT, "count": 8, "layout": layout, "shards": theirs},
        workers.partial_manifest(1),
    )
    ours = _written(tmp_path, "shard-w00000-", arrays, 3)
    part = workers.Split(None, index=0, count=2)
    part.barrier = lambda halves: halves
    partial = {"format": shards.FORMAT, "count": 12, "layout": layout, "shards": ours}
    whole = workers.assemble(str(tmp_path), part, partial)
    assert whole["num_examples"] == 20
    assert [s["worker"] for s in whole["shards"]] == [0] * len(ours) + [1] * len(theirs)
    for shard in whole["shards"]:
        content = (tmp_path / shard["file"]).read_bytes()
        assert shard["size_bytes"] == len(content)
        assert shard["sha256"] == hashlib.sha256(content).hexdigest()
    # a shard of the other worker, truncated on the shared file system
    damaged = tmp_path / theirs[-1]["file"]
    damaged.write_bytes(damaged.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated") as error:
        workers.assemble(str(tmp_path), part, partial)
    assert str(damaged) in str(error.value)
    assert os.path.exists(tmp_path / workers.partial_manifest(0))
