"""Sequence-level distillation (Kim & Rush 2016): `teacher_generations`.

The teacher continues each prompt once; the student then trains on the
teacher's sequences with its ordinary cross-entropy (sequence-level KD),
and, with the teacher's logits stored on those sequences, with a
`keras_kd.Distiller` on them too (sequence- plus word-level KD) without
running the teacher again. On disk the generations are TFRecord shards
written by the teacher-output cache's writer (`keras_kd.cache.shards`) and
published by a manifest written last (the store: the package's private
`_generation_store.py`); the logits are a teacher-output cache
(`keras_kd.cache.with_teacher_outputs`) beside them.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys

import numpy as np

from keras_kd import _utils
from keras_kd.backend import tf
from keras_kd.cache import fingerprint, shards, with_teacher_outputs
from keras_kd.lm._generation_store import (
    MANIFEST,
    prompts_digest,
    read_store,
    refuse_orphan_logits,
    write_store,
)
from keras_kd.lm.generation import generate

_SEED_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What the generations depend on besides the teacher and the prompts."""

    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None  # None: drawn (`_with_seed`), or on reuse the recorded one
    pad_token_id: int
    length: int | None
    batch_size: int

    @classmethod
    def checked(
        cls, max_new_tokens, temperature, top_k, top_p, seed, pad, length, size
    ):
        """The settings of checked arguments."""
        max_new_tokens = _utils.check_int(
            max_new_tokens, "max_new_tokens", 1, "tokens generated per prompt"
        )
        temperature = _utils.check_number(
            temperature, "temperature", low=0.0, what="0 for greedy decoding"
        )
        if top_k is not None:
            top_k = _utils.check_int(top_k, "top_k", 1, "tokens kept, or None")
        if top_p is not None:
            top_p = _utils.check_number(top_p, "top_p", 0.0, 1.0, low_open=True)
        if seed is not None:
            seed = _utils.check_int(seed, "seed", 0, "in [0, 2**31 - 1], or None")
            if seed > _SEED_LIMIT:
                raise ValueError(
                    "Argument `seed` must be an integer in [0, 2**31 - 1], or "
                    f"None. Received: seed={seed}."
                )
        if length is not None:
            length = _utils.check_int(length, "length", 1, "the window width")
        return cls(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            pad_token_id=_utils.check_int(pad, "pad_token_id", 0),
            length=length,
            batch_size=_utils.check_int(size, "batch_size", 1, "prompts per call"),
        )


def teacher_generations(
    teacher,
    prompts,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    prompt_lengths=None,
    pad_token_id: int = 0,
    length: int | None = None,
    batch_size: int = 32,
    path=None,
    logits: bool = False,
    logits_top_k: int | None = None,
):
    """The teacher's continuations of prompts, as training windows.

    Sequence-level knowledge distillation (Kim & Rush 2016) trains the
    student on the teacher's own outputs instead of the reference text:
    the teacher continues each prompt once (greedy decoding with
    `temperature=0`, Kim & Rush's beam search reduced to one beam, or
    sampling), and the student learns them with its plain cross-entropy.
    With `logits=True` the teacher's logits on those sequences are stored
    as well, so that a `keras_kd.Distiller` adds word-level distillation on
    the teacher's sequences (Kim & Rush's best combination) without running
    the teacher again.

    The teacher generates once, over `prompts` in consecutive chunks of
    `batch_size` rows (with `logits`, one more pass scores the windows, in
    batches of `batch_size`): chunk `b` is `keras_kd.lm.generate(teacher,
    prompts[chunk], max_new_tokens, ..., prompt_lengths=prompt_lengths[chunk],
    seed=tf.random.experimental.stateless_fold_in([0, seed], b))`, so that
    equal prompts in different chunks get different samples, and the same
    `seed`, teacher, prompts and settings give the same windows.

    Each example is a window of `width` tokens (`prompt width +
    max_new_tokens`, or `length`, or the teacher's fixed input length), in
    `generate`'s layout and the convention of
    `keras_kd.lm.OnPolicyDistiller`: the logits at position `t` predict
    token `t + 1`.

    - `ids`: the prompt, its continuation, then `pad_token_id`;
    - `next_ids`: `ids` shifted left by one (`pad_token_id` last): the
      token each position predicts;
    - `weights`: float32, 1 exactly at the positions that predict a
      generated token (from the prompt's last token to the one before the
      last generated token), 0 elsewhere: the loss covers the continuation.

    **Storage.** Without `path`, the windows are held in memory. With
    `path` (a directory), they are written as TFRecord shards by the
    teacher-output cache's writer (`generations-*.tfrecord`, each written
    to a temporary name and renamed), then `generations.json` is written
    last, atomically: the teacher's name and weight fingerprint, a sha256
    of the prompts (the tokens inside `prompt_lengths`), the settings
    above, the example count, and each shard's size and sha256. A
    directory without that file holds no finished store and is written
    again; a half-written store is never read. Called again with the same
    `path`, teacher, prompts and settings, the stored windows are read
    (their shards' sizes and checksums verified) and the teacher does not
    generate again. Another teacher (other weights), other prompts or
    other settings are refused, as the teacher-output cache refuses a
    stale cache: delete the directory or give another `path`. `seed=None`
    reuses the recorded seed. With `logits=True`, the logits are a
    `keras_kd.data.with_teacher_outputs` cache in `path/logits` (or
    `path/logits-top<k>` with `logits_top_k=k`), computed from the stored
    windows where it is missing (one teacher pass, no generation) and read
    where it is finished.

    Not supported: several workers sharing the generation (run it once and
    share `path`), and `logits=True` with a KerasHub `CausalLM` teacher (it
    takes a dict of token ids and padding mask; its windows are supported).

    Args:
        teacher: the teacher LM, a `keras.Model` mapping `(batch, time)`
            token ids to `(batch, time, vocab)` logits, causally; or a
            KerasHub `CausalLM` (without `logits`). Run with
            `training=False`.
        prompts: `(num_prompts, prompt_width)` int array or tensor, each
            row's prompt at its start (left-aligned).
        max_new_tokens: positive int, tokens generated per prompt.
        temperature: float >= 0, the teacher's sampling temperature; 0 is
            greedy decoding.
        top_k: sample among the `top_k` most likely tokens only, or None.
        top_p: nucleus sampling, a float in (0, 1], or None.
        seed: int in `[0, 2**31 - 1]` for reproducible generations, or None
            (a seed is drawn; on reuse of `path`, the recorded one).
        prompt_lengths: `(num_prompts,)` ints between 1 and
            `prompt_width`, each row's prompt length; None: every prompt
            fills its row.
        pad_token_id: int written after each row's continuation.
        length: int or None, the window width (at least `prompt_width +
            max_new_tokens`, the default).
        batch_size: prompts per teacher call (chunks, see above).
        path: None (in memory) or a directory to store the generations.
        logits: also store the teacher's logits on the windows.
        logits_top_k: None (all logits) or the number of largest logits
            kept per position (needs `logits=True`; see
            `with_teacher_outputs` for how the others are rebuilt).

    Returns:
        An unbatched `tf.data.Dataset` with a known cardinality, one
        element per prompt, in the order of `prompts`: `(ids, next_ids,
        weights)` (shapes `(width,)`, int32, int32, float32), which
        `keras.Model.fit` reads as `(x, y, sample_weight)`; with
        `logits=True`, `keras_kd.data.TeacherBatch(x=ids, y=next_ids,
        teacher_outputs=logits, sample_weight=weights)` elements (logits
        `(width, vocab)` float32), which a `keras_kd.Distiller` trains on
        without running its teacher. Shuffle and batch it as usual.

    Raises:
        ValueError: `path` holds the generations of another teacher, other
            prompts or other settings, or a damaged store; a bad argument.

    Example:

    ```python
    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    def causal_lm(width):
        inputs = keras.Input((None,), dtype="int32")
        hidden = keras.layers.Embedding(32, width)(inputs)
        hidden = keras.layers.Conv1D(width, 3, padding="causal")(hidden)
        return keras.Model(inputs, keras.layers.Dense(32)(hidden))

    teacher, student = causal_lm(32), causal_lm(8)
    prompts = np.random.default_rng(0).integers(1, 32, (64, 4))
    windows = kd.lm.teacher_generations(teacher, prompts, max_new_tokens=12,
                                        temperature=0.0)
    student.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    student.fit(windows.shuffle(64).batch(16), epochs=2)   # sequence-level KD

    # + word-level KD on the teacher's sequences, top-16 logits stored
    stored = kd.lm.teacher_generations(teacher, prompts, max_new_tokens=12,
                                       temperature=0.0, logits=True,
                                       logits_top_k=16)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), alpha=0.5)
    distiller.fit(stored.batch(16), epochs=2)   # the teacher is not run again
    ```
    """
    _utils.check_model(teacher, "teacher")
    settings = _Settings.checked(
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        pad_token_id,
        length,
        batch_size,
    )
    prompts = _check_prompts(prompts)
    lengths = _check_prompt_lengths(prompt_lengths, prompts)
    logits = _check_logits(logits, logits_top_k, teacher)
    if path is None:
        settings = _with_seed(settings)
        arrays = [
            np.concatenate(parts)
            for parts in zip(*_generate(teacher, prompts, lengths, settings))
        ]
        if not logits:
            return tf.data.Dataset.from_tensor_slices(tuple(arrays))
        return with_teacher_outputs(
            teacher, tuple(arrays), batch_size=batch_size, top_k=logits_top_k
        )
    path = _check_path(path)
    windows = _stored(teacher, prompts, lengths, settings, path)
    if not logits:
        return windows
    name = "logits" if logits_top_k is None else f"logits-top{logits_top_k}"
    return with_teacher_outputs(
        teacher,
        windows.batch(batch_size),
        batch_size=batch_size,
        path=os.path.join(path, name),
        top_k=logits_top_k,
    )


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def _with_seed(settings: _Settings) -> _Settings:
    """`settings` with a seed drawn when none was given."""
    if settings.seed is not None:
        return settings
    return dataclasses.replace(settings, seed=random.randrange(_SEED_LIMIT + 1))


def _generate(teacher, prompts, lengths, settings: _Settings):
    """Yields `(ids, next_ids, weights)` numpy arrays, one chunk of
    `batch_size` prompts at a time (chunk `b` with seed `fold_in(seed, b)`)."""
    base = tf.constant([0, settings.seed], tf.int32)
    for index, start in enumerate(range(0, len(prompts), settings.batch_size)):
        rows = slice(start, start + settings.batch_size)
        out = generate(
            teacher,
            prompts[rows],
            settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            seed=tf.random.experimental.stateless_fold_in(base, index),
            prompt_lengths=None if lengths is None else lengths[rows],
            pad_token_id=settings.pad_token_id,
            length=settings.length,
        )
        yield _windows(out.ids.numpy(), out.mask.numpy(), settings.pad_token_id)


def _windows(ids, mask, pad_token_id: int):
    """`(ids, next_ids, weights)` of a generated buffer and its mask (numpy):
    the next token and whether it is generated, `mask` shifted left by one."""
    ids = ids.astype(np.int32)
    next_ids = np.concatenate([ids[:, 1:], np.full_like(ids[:, :1], pad_token_id)], 1)
    weights = np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], 1)
    return ids, next_ids, weights.astype(np.float32)


# ---------------------------------------------------------------------------
# The store on disk
# ---------------------------------------------------------------------------


def _stored(teacher, prompts, lengths, settings: _Settings, path):
    """The windows stored at `path`: read where a finished store matches,
    else generated, written and published."""
    weights_fingerprint = fingerprint(teacher)
    digest = prompts_digest(prompts, lengths)
    manifest = shards.read_manifest(path, MANIFEST)  # None: no finished store
    if manifest is not None:
        return read_store(
            path, manifest, teacher, weights_fingerprint, digest, settings
        )
    refuse_orphan_logits(path)
    settings = _with_seed(settings)
    chunks = _generate(teacher, prompts, lengths, settings)
    return write_store(
        path, teacher, weights_fingerprint, digest, prompts.shape, settings, chunks
    )


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _integer_array(value, argument: str, expected: str):
    """`value` (an array, a list or an eager tensor) as an integer array."""
    array = None
    if not isinstance(value, (tf.data.Dataset, str, bytes)):
        try:
            array = np.asarray(value.numpy() if tf.is_tensor(value) else value)
        except (TypeError, ValueError, AttributeError):
            pass
    if array is None or not np.issubdtype(array.dtype, np.integer):
        received = type(value).__name__ if array is None else array.dtype.name
        raise TypeError(
            f"Argument `{argument}` must be {expected}, of an integer dtype. "
            f"Received: {argument} of {'dtype' if array is not None else 'type'} "
            f"{received}."
        )
    return array


def _check_prompts(prompts):
    expected = "a (num_prompts, prompt_width) array or tensor of token ids"
    array = _integer_array(prompts, "prompts", expected)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(
            f"Argument `prompts` must be {expected}, with at least one prompt "
            f"and one token. Received: prompts of shape {array.shape}."
        )
    return array.astype(np.int32)


def _check_prompt_lengths(prompt_lengths, prompts):
    if prompt_lengths is None:
        return None
    expected = "a (num_prompts,) array of integers, or None"
    lengths = _integer_array(prompt_lengths, "prompt_lengths", expected)
    if lengths.shape != prompts.shape[:1]:
        raise ValueError(
            f"Argument `prompt_lengths` must be {expected}, one length per row "
            f"of `prompts` (shape {prompts.shape}). Received: prompt_lengths "
            f"of shape {lengths.shape}."
        )
    if np.any((lengths < 1) | (lengths > prompts.shape[1])):
        raise ValueError(
            "Argument `prompt_lengths` must hold lengths between 1 and the "
            f"prompt width ({prompts.shape[1]}). Received: "
            f"prompt_lengths={lengths.tolist()}."
        )
    return lengths.astype(np.int32)


def _check_logits(logits, logits_top_k, teacher) -> bool:
    logits = _utils.check_bool(logits, "logits")
    if logits and _is_causal_lm(teacher):
        raise ValueError(
            "Argument `logits=True` needs a teacher called on (batch, time) "
            "token ids; a KerasHub CausalLM takes a dict of token ids and "
            f"padding mask. Received: teacher of type {type(teacher).__name__}. "
            "Use logits=False (the windows only)."
        )
    if logits_top_k is None:
        return logits
    _utils.check_int(logits_top_k, "logits_top_k", 1, "logits kept per position")
    if not logits:
        raise ValueError(
            "Argument `logits_top_k` applies to stored logits: pass logits=True "
            f"with it, or logits_top_k=None. Received: logits_top_k={logits_top_k}, "
            "logits=False."
        )
    try:
        vocab = teacher.output_shape[-1]
    except (AttributeError, ValueError, RuntimeError, TypeError):
        vocab = None
    if isinstance(vocab, int) and logits_top_k >= vocab:
        raise ValueError(
            "Argument `logits_top_k` must be smaller than the teacher's "
            f"vocabulary ({vocab}). Received: logits_top_k={logits_top_k}. Use "
            "logits_top_k=None to store all logits."
        )
    return logits


def _is_causal_lm(model) -> bool:
    """Whether `model` is a KerasHub `CausalLM` (KerasHub already imported)."""
    keras_hub = sys.modules.get("keras_hub")
    causal_lm = getattr(getattr(keras_hub, "models", None), "CausalLM", None)
    return causal_lm is not None and isinstance(model, causal_lm)


def _check_path(path) -> str:
    try:
        path = os.fspath(path)
    except TypeError as e:
        raise TypeError(
            "Argument `path` must be None or a directory path. Received: "
            f"path={path!r} of type {type(path).__name__}."
        ) from e
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"Argument `path` must be a directory. Received: path={path!r}, "
            "which is a file."
        )
    return path


__all__ = ["teacher_generations"]
