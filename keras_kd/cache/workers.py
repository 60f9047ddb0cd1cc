"""The teacher pass split across the workers of a multi-worker strategy.

Under a `tf.distribute.MultiWorkerMirroredStrategy` of N > 1 workers, a
cache with `path` is computed by all of them: worker `i` runs the teacher on
the teacher batches `b` with `b % N == i` and writes them to its own shards
(`shard-w<i>-<n>.tfrecord`) and partial manifest (`manifest-w<i>.json`),
each atomically. A collective across the workers (a sum through the
strategy) is the barrier after which each worker reads every partial
manifest and assembles the same full manifest (each shard with the size
and sha256 its worker recorded): the shards read round robin give the
examples in their original order. Worker 0 writes `manifest.json`
(then a second barrier), so that a later call reuses the cache.
"""

from __future__ import annotations

import os

from keras_kd.backend import tf
from keras_kd.cache import shards


class Split:
    """One worker's part of the teacher pass: `index` of `count` workers."""

    def __init__(self, strategy=None, index: int = 0, count: int = 1):
        self.strategy, self.index, self.count = strategy, index, count
        self.barrier = None  # the collective, traced once

    def owns(self, batch_index: int) -> bool:
        """Whether this worker runs the teacher on teacher batch `batch_index`."""
        return batch_index % self.count == self.index

    @property
    def prefix(self) -> str:
        return "shard-" if self.count == 1 else f"shard-w{self.index:05d}-"


def partial_manifest(index: int) -> str:
    return f"manifest-w{index:05d}.json"


def split(strategy) -> Split:
    """This worker's part under `strategy`: everything unless it is a
    multi-worker strategy of more than one worker."""
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if strategy is None:
        return Split()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            "Argument `strategy` must be a `tf.distribute.Strategy` or None (the "
            f"strategy in scope). Received: strategy={strategy!r} of type "
            f"{type(strategy).__name__}."
        )
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return Split()
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    chiefs = len(jobs.get("chief", []))
    count = chiefs + len(jobs.get("worker", []))
    if count <= 1:
        return Split()
    if resolver.task_type == "chief":
        index = 0
    elif resolver.task_type == "worker":
        index = chiefs + int(resolver.task_id)
    else:
        raise ValueError(
            "Argument `strategy`: this process is task "
            f"{resolver.task_type!r} of the cluster; only the chief and the "
            "workers compute a teacher-output cache."
        )
    return Split(strategy, index, count)


def barrier(part: Split, value: int = 0) -> int:
    """Returns once every worker has called it (a collective sum through
    the strategy), with worker 0's `value` (an int in [0, 2**32))."""
    if part.barrier is None:
        strategy = part.strategy

        def first_replica_value(halves):
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            return tf.where(first, halves, tf.zeros_like(halves))

        @tf.function
        def total(halves):
            values = strategy.run(first_replica_value, args=(halves,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

        part.barrier = total
    halves = tf.constant([value >> 16, value & 0xFFFF], tf.float32)  # exact
    high, low = (int(v) for v in part.barrier(halves).numpy())
    return high << 16 | low


def assemble(path: str, part: Split, write_partial: dict) -> dict:
    """The full manifest from every worker's partial one.

    Writes this worker's partial manifest (`write_partial`: its `count`,
    `layout`, `shards`), waits for all, reads them, checks that they agree,
    and returns the manifest of the whole cache (with `layout` and
    `num_examples`; the caller adds the rest). Worker 0 writes it.
    """
    shards.write_manifest(path, write_partial, partial_manifest(part.index))
    barrier(part)
    partials = []
    for index in range(part.count):
        name = partial_manifest(index)
        partial = shards.read_manifest(path, name)
        if partial is None:  # pragma: no cover - the barrier waited for it
            raise ValueError(
                f"Argument `path`={path!r}: worker {index}'s {name} is missing "
                "after all workers wrote theirs. Is `path` on a file system "
                "that every worker sees?"
            )
        partials.append(partial)
    layouts = [p["layout"] for p in partials if p["layout"] is not None]
    if any(layout != layouts[0] for layout in layouts):
        raise ValueError(
            "Argument `data` gave the workers examples of different shapes or "
            f"dtypes ({layouts}). Give every worker the same data."
        )
    records = [sum(s["records"] for s in p["shards"]) for p in partials]
    total = sum(records)
    expected = [len(range(i, total, part.count)) for i in range(part.count)]
    if records != expected:
        raise ValueError(
            f"Argument `data` gave the workers different numbers of batches: "
            f"worker records {records}, expected {expected} for {total} "
            "batches shared round robin. Give every worker the same data."
        )
    listed = []
    for index, partial in enumerate(partials):
        listed += [dict(s, worker=index) for s in partial["shards"]]
    whole = {
        "layout": layouts[0] if layouts else None,
        "num_examples": sum(p["count"] for p in partials),
        "workers": part.count,
        "shards": listed,
    }
    # The other workers' shards as this worker sees them (on a shared file
    # system): their sizes are checked here, their sha256 when reopened.
    shards.verify(path, whole, contents=False)
    return whole


def publish(path: str, part: Split, manifest: dict) -> None:
    """Worker 0 writes the full manifest; all wait until it is written."""
    if part.index == 0:
        shards.write_manifest(path, manifest)
    barrier(part)
    if not os.path.exists(os.path.join(path, shards.MANIFEST)):  # pragma: no cover
        raise ValueError(
            f"Argument `path`={path!r}: worker 0's {shards.MANIFEST} is not "
            "visible to this worker. Give a `path` on a file system that every "
            "worker sees."
        )


__all__ = ["Split", "assemble", "barrier", "publish", "split"]
