"""`with_teacher_outputs`: the teacher run once over the data."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from keras_kd import _utils
from keras_kd.backend import tf
from keras_kd.cache import batch, shards, source, workers
from keras_kd.cache import views as augmented

_STORAGE_DTYPES = ("float32", "float16")
_SHARD_BYTES = 256 * 2**20


def with_teacher_outputs(
    teacher,
    data,
    batch_size: int = 256,
    path=None,
    dtype: str = "float32",
    top_k: int | None = None,
    max_shard_bytes: int = _SHARD_BYTES,
    augmentation=None,
    views: int | None = None,
    seed: int | None = None,
    strategy=None,
):
    """Runs a frozen teacher once over `data`; its outputs ride along.

    Use it when the teacher's forward pass dominates a distillation epoch
    and the inputs do not change from epoch to epoch (no `augmentation` or
    `mixup` in the `Distiller`; for augmentation, store views: see below).
    The returned dataset is **unbatched**: shuffle, batch and prefetch it as
    usual; each example keeps its own teacher outputs.
    `keras_kd.Distiller.fit` and `evaluate` recognise its batches
    (`TeacherBatch`) and use the stored outputs instead of running the
    teacher: the same loss, temperature and output pairing, to float
    tolerance. `fit` checks the first batch against the Distiller's teacher
    and refuses outputs of another teacher.

    Outputs are stored as logits (a final softmax's output as its
    log-probabilities), in float32, or float16 with `dtype="float16"` (read
    back as float32). With `top_k=k`, each position keeps its `k` largest
    logits and their classes; the others are rebuilt at `min(kept) - 1e6`,
    so that at a temperature `T` (below 5,000) the teacher's softened
    distribution is the one of the kept classes, renormalised over them
    (`softmax(z_kept / T)`): the tail's mass is
    dropped (an approximation, for outputs with many classes such as a
    language model's vocabulary). Logit standardization
    (`standardize=True`) would see the filled logits: use dense outputs
    with it.

    With `path`, the outputs go to TFRecord shards (at most
    `max_shard_bytes` each) plus `manifest.json` (teacher name, a sha256
    fingerprint of its weights, shapes and dtypes, `dtype`, `top_k`, the
    number of examples, the shards with the size and sha256 of each), each
    file written atomically; the dataset streams them. Called again with the
    same `path` and teacher, it reads the shards back without running the
    teacher or reading `data` (only checked against the manifest's example
    count where its size is known); another teacher is refused as a stale
    cache, and a shard whose size or sha256 differs from the manifest's
    (truncated or altered) is refused with an error naming it, before any
    training (the check reads every shard once, a fraction of the cost of
    an epoch's reading). A cache written by keras-kd 0.1 (a manifest without checksums)
    is still read, its shards checked by size only.

    **Cached augmented views** (FKD, Shen & Xing 2022): with
    `augmentation` (what `keras_kd.Distiller(augmentation=...)` takes: a
    Keras layer such as `keras_kd.augment.jitter(2)`, called with
    `training=True`, or a function of a batch's inputs) and `views=K`, the
    augmentation runs K times on each teacher batch and the teacher on each
    view; the K views of each example are stored with the teacher's outputs
    on each (memory: K times the inputs and K times the outputs). The
    dataset yields ordinary `TeacherBatch`es of one view per example, drawn
    anew each time it is iterated (each epoch), from `seed`: a dataset made
    again with the same `seed` draws the same views in the same order.
    Give it to a `Distiller` **without** `augmentation`: the student is
    trained on augmented views, each with the teacher's outputs on exactly
    that view, without running the teacher. A `keras_kd.augment.Jitter`
    draws its shifts from `seed`, the batch's index and the view's index
    (so a given seed repeats the views); other Keras random layers use
    their own seed generators. With `path`, the manifest records `views`,
    the seed and the augmentation (class and config, where
    JSON-serializable); other views or another augmentation at the same
    `path` are refused.

    **Several workers**: under a `tf.distribute.MultiWorkerMirroredStrategy`
    of N > 1 workers (`strategy`, or the strategy in scope) and with
    `path`, the teacher pass is split: worker `i` runs the teacher on the
    teacher batches `i, i + N, i + 2N, ...` of `data` and writes them to its
    own shards (`shard-w<i>-*.tfrecord`) and partial manifest
    (`manifest-w<i>.json`); after a collective across the workers (a
    barrier), every worker reads the whole cache, in the order of `data`,
    the same as one process would compute. `path` must be a directory that
    every worker sees (a shared file system) and `data` the same, in the
    same order, on every worker; with views, worker 0's `seed` is used
    everywhere. Without `path`, each worker computes the whole cache in
    memory (give `seed` for the same views everywhere). Any other strategy,
    or a multi-worker strategy of one worker, computes it as one process.

    Not supported: feature taps (they need the teacher's live intermediate
    features), several teachers (cache an ensemble as one model), a
    Distiller with `augmentation` / `mixup` (the targets would be those of
    the un-augmented inputs) or a training teacher. Each raises an error
    saying so.

    Args:
        teacher: the frozen teacher, one `keras.Model`, run with
            `training=False`.
        data: `x`, `(x, y)` or `(x, y, sample_weight)` arrays (`x` an array
            or a list / dict of them), or a `tf.data.Dataset` (tfds with
            `as_supervised=True`) of such elements, batched or not; may be
            None when `path` holds a finished cache.
        batch_size: examples per teacher call (for unbatched data).
        path: None (in memory) or a directory for the shards and manifest.
        dtype: `"float32"` or `"float16"`: the storage of the outputs.
        top_k: None (all logits) or the number kept per position.
        max_shard_bytes: the size at which a shard is closed (a shard holds
            at least one chunk of `batch_size` examples).
        augmentation: None, or a Keras layer or function making augmented
            views of a batch's inputs (needs `views`).
        views: None, or the number of augmented views stored per example
            (an int >= 1; needs `augmentation`).
        seed: an int seed of the views and of the per-epoch draws (only
            with `views`). None: drawn from Python's `random` (on reuse of
            `path`, the seed recorded there).
        strategy: None (the `tf.distribute` strategy in scope, if any) or a
            `tf.distribute.Strategy`: under a multi-worker one, with
            `path`, the workers share the teacher pass.

    Returns:
        An unbatched `tf.data.Dataset` of `keras_kd.data.TeacherBatch(x, y,
        teacher_outputs, sample_weight)` with a known cardinality (`y` and
        `sample_weight` are `()` where `data` has none; with views, `x` is
        one view and `teacher_outputs` the teacher's outputs on it).

    Raises:
        ValueError: `path` holds the cache of another teacher (stale) or of
            other settings; bad arguments or data.

    Example:

    ```python
    cached = kd.data.with_teacher_outputs(teacher, (x_train, y_train))
    train_ds = cached.shuffle(10_000).batch(128).prefetch(2)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="adam", loss=hard_loss, alpha=0.5)
    distiller.fit(train_ds, epochs=10)  # the teacher is not run again

    # FKD-style: 4 jittered views per example, one drawn each epoch
    views = kd.data.with_teacher_outputs(
        teacher, (x_train, y_train), augmentation=kd.augment.jitter(2),
        views=4, seed=0)
    distiller.fit(views.shuffle(10_000).batch(128), epochs=10)
    ```
    """
    _check_arguments(teacher, batch_size, dtype, top_k, max_shard_bytes)
    augmentation, views, seed = augmented.check_arguments(augmentation, views, seed)
    weights_fingerprint = fingerprint(teacher)
    if path is not None:
        path = os.fspath(path)
        manifest = shards.read_manifest(path)
        if manifest is not None:
            _check_reuse(manifest, path, teacher, weights_fingerprint, dtype, top_k)
            augmented.check_reuse(manifest, path, views, augmentation)
            return _reopen(path, manifest, data, seed)
    if data is None:
        raise ValueError(
            "Argument `data` is required unless `path` holds a finished cache. "
            f"Received: data=None, path={path!r}."
        )
    part = workers.split(strategy)
    if path is None:  # in memory, each worker computes everything
        part = workers.Split()
    if views and seed is None:
        seed = augmented.draw_seed()
    if part.count > 1 and views:  # the views of worker 0's seed everywhere
        seed = workers.barrier(part, seed)
    run, probabilities = _logits_function(teacher)
    if views:
        run = augmented.function(augmentation, views, run)
    writer = None
    if path is not None:
        writer = shards.ShardWriter(path, max_shard_bytes, part.prefix)
    batches = source.batches_of(data, teacher, batch_size)
    next(batches)  # the size, unused here
    layout, count, chunks = _teacher_pass(
        run, batches, part, writer, dtype, top_k, views, seed
    )
    listed = None if writer is None else writer.close()
    if part.count > 1:
        partial = {"format": shards.FORMAT, "count": count, "layout": layout}
        partial["shards"] = listed
        whole = workers.assemble(path, part, partial)
        layout, count, listed = whole["layout"], whole["num_examples"], whole["shards"]
    if count == 0:
        raise ValueError("Argument `data` holds no examples. Expected at least one.")
    if writer is None:
        arrays = [np.concatenate(parts) for parts in zip(*chunks)]
        return shards.dataset_from_arrays(layout, arrays, count, seed)
    manifest = {
        "format": shards.FORMAT,
        "version": shards.VERSION,
        "teacher": {"name": teacher.name, "fingerprint": weights_fingerprint},
        "num_examples": count,
        "dtype": dtype,
        "top_k": top_k,
        "from_probabilities": probabilities,
        "layout": layout,
        "shards": listed,
    }
    if views:
        manifest.update(
            views=views, augmentation=augmented.describe(augmentation), seed=seed
        )
    _publish(path, part, manifest)
    return shards.dataset_from_shards(path, manifest, seed)


def fingerprint(model) -> str:
    """sha256 over a model's weights (dtype, shape and bytes, in order)."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------------------
# The steps of `with_teacher_outputs`
# ---------------------------------------------------------------------------


def _reopen(path, manifest, data, seed):
    """The dataset of the finished cache at `path` (its settings checked),
    once its shards are verified against the manifest's sizes and sha256."""
    _check_count(manifest["num_examples"], source.size_of(data), path)
    shards.verify(path, manifest)
    if manifest["layout"].get("views") and seed is None:
        seed = manifest["seed"]  # the same draws on every worker
    return shards.dataset_from_shards(path, manifest, seed)


def _teacher_pass(run, batches, part, writer, dtype, top_k, views, seed):
    """Runs the teacher on this worker's batches and stores the results.

    Each batch's stored arrays go to `writer` (shards), or without one are
    collected in memory. Returns `(layout, count, chunks)`: the layout of
    one example (None if this worker had no batch), the number of examples
    stored and the chunks kept in memory (empty with a writer).
    """
    layout, chunks, count = None, [], 0
    for index, (x, y, w) in enumerate(batches):
        if not part.owns(index):
            continue
        x, outputs = _run_on_batch(run, x, index, views, seed)
        if layout is None:
            layout = _layout(x, y, w, outputs, dtype, top_k, views)
        logits = [o.numpy() for o in tf.nest.flatten(outputs)]
        arrays = batch.stored_arrays(x, y, w, logits, dtype, top_k)
        _check_shapes(arrays, layout)
        rows = len(arrays[0])
        if writer is None:
            chunks.append(arrays)
        else:
            writer.add(arrays, rows)
        count += rows
    return layout, count, chunks


def _run_on_batch(run, x, index, views, seed):
    """`(inputs, teacher outputs)` of teacher batch `index`: with `views`,
    its K views (drawn from `seed` and the batch's index) and the outputs on
    each, on axis 1."""
    inputs = tf.nest.map_structure(tf.convert_to_tensor, x)
    if not views:
        return x, run(inputs)
    steps = [augmented.step(seed, index, k) for k in range(views)]
    x, outputs = run(inputs, tf.constant(steps, tf.int64))
    return tf.nest.map_structure(lambda t: t.numpy(), x), outputs


def _publish(path, part, manifest):
    """Writes `manifest.json` last (several workers: worker 0, then a
    barrier)."""
    if part.count > 1:
        manifest["workers"] = part.count
        workers.publish(path, part, manifest)
    else:
        shards.write_manifest(path, manifest)


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _check_arguments(teacher, batch_size, dtype, top_k, max_shard_bytes):
    if isinstance(teacher, (list, tuple)):
        raise TypeError(
            "Argument `teacher` must be one model: a cache holds one teacher's "
            f"outputs. Received a {type(teacher).__name__} of {len(teacher)} "
            "models; to cache several, make them one model (an ensemble, "
            "`keras_kd.ensemble`)."
        )
    _utils.check_model(teacher, "teacher")
    _utils.check_int(batch_size, "batch_size", 1, "examples per teacher call")
    if dtype not in _STORAGE_DTYPES:
        raise ValueError(
            "Argument `dtype` must be 'float32' or 'float16' (the storage of "
            f"the teacher's outputs). Received: dtype={dtype!r}."
        )
    if top_k is not None:
        _utils.check_int(top_k, "top_k", 1, "logits kept per position")
    _utils.check_int(max_shard_bytes, "max_shard_bytes", 1, "bytes per shard")


def _check_reuse(manifest, path, teacher, weights_fingerprint, dtype, top_k):
    recorded = manifest["teacher"]
    if recorded["fingerprint"] != weights_fingerprint:
        raise ValueError(
            f"Argument `path`={path!r} holds a stale cache: its outputs are "
            f"those of teacher {recorded['name']!r} with weights "
            f"{recorded['fingerprint'][:19]}..., not of the teacher given "
            f"({teacher.name!r}, weights {weights_fingerprint[:19]}...). "
            "Delete the directory or give another `path` to compute the "
            "outputs of this teacher."
        )
    if (manifest["dtype"], manifest["top_k"]) != (dtype, top_k):
        raise ValueError(
            f"Argument `path`={path!r} holds a cache written with "
            f"dtype={manifest['dtype']!r}, top_k={manifest['top_k']!r}. "
            f"Received: dtype={dtype!r}, top_k={top_k!r}. Give the same "
            "settings, or another `path` for the new ones."
        )


def _check_count(recorded, size, path):
    if size is not None and size != recorded:
        raise ValueError(
            f"Argument `path`={path!r} holds the outputs of {recorded} "
            f"examples, but `data` has {size}: the cache was computed on other "
            "data. Delete the directory or give another `path`."
        )


def _check_shapes(arrays, layout):
    """Every chunk has the first chunk's per-example shapes."""
    for array, (_, shape) in zip(arrays, batch.stored_leaves(layout)):
        if list(array.shape[1:]) != list(shape):
            raise ValueError(
                "Argument `data` must have the same shape for every example "
                f"(a cache stores fixed shapes). Received examples of shape "
                f"{tuple(shape)}, then of shape {tuple(array.shape[1:])}: pad "
                "sequences to one length first."
            )


def _layout(x, y, w, outputs, dtype, top_k, views=None) -> dict:
    """The layout of one view (the first, where `x` and `outputs` hold
    `views` on axis 1)."""
    outputs = tf.nest.map_structure(lambda o: o.numpy(), outputs)
    if views:
        x, outputs = tf.nest.map_structure(lambda a: a[:, 0], (x, outputs))
    description = batch.describe(outputs)
    if top_k is not None:
        for leaf in batch.leaves(description):
            classes = leaf["shape"][-1] if leaf["shape"] else None
            if classes is None or top_k >= classes:
                raise ValueError(
                    "Argument `top_k` must be smaller than the number of "
                    f"classes of each teacher output. Received: top_k={top_k} "
                    f"for an output of shape {tuple(leaf['shape'])} per "
                    "example. Use top_k=None to store all logits."
                )
    return {
        "x": batch.describe(x),
        "y": batch.describe(y),
        "sample_weight": batch.describe(w),
        "teacher_outputs": description,
        "dtype": dtype,
        "top_k": top_k,
        **({"views": views} if views else {}),
    }


# ---------------------------------------------------------------------------
# The teacher
# ---------------------------------------------------------------------------


def _logits_function(teacher):
    """`x -> outputs` as float32 logits (a softmax output as its
    log-probabilities), in inference mode; and the softmax detection."""
    probabilities = _utils.output_is_probabilities(teacher)

    @tf.function(reduce_retracing=True)
    def run(x):
        outputs = teacher(x, training=False)
        flat = tf.nest.flatten(outputs)
        probs = probabilities or [False] * len(flat)
        logits = [
            _utils.log_probs(o) if p else tf.cast(o, tf.float32)
            for o, p in zip(flat, probs)
        ]
        return tf.nest.pack_sequence_as(outputs, logits)

    return run, probabilities


__all__ = ["fingerprint", "with_teacher_outputs"]
