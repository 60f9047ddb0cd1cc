"""Sampling continuations from a causal language model: `generate`.

On-policy distillation trains a student on its own samples, sequence-level
distillation on the teacher's: both need one generation function for any
Keras language model, eager and inside a compiled train step. A plain model
runs on the whole token buffer at each step (no key / value cache); a
KerasHub `CausalLM` through its own cache (its `generate_step`, with a
sampler of ours).
"""

from __future__ import annotations

import dataclasses
import sys
import weakref
from typing import NamedTuple

from keras_kd import _utils
from keras_kd.backend import tf
from keras_kd.lm._generation_checks import (
    buffer_width,
    check_prompt_lengths,
    check_prompts,
    check_seed,
)


class Generation(NamedTuple):
    """What `generate` returns: the token buffer and where it was generated.

    Attributes:
        ids: `(batch, width)` int32 tensor. Row `i` holds its prompt in
            positions `[0, len_i)`, its `max_new_tokens` generated tokens in
            `[len_i, len_i + max_new_tokens)` and `pad_token_id` after.
        mask: `(batch, width)` bool tensor, True exactly at the generated
            positions of each row. `tf.cast(mask, "float32")` gives per-token
            loss weights that cover the continuation only.
    """

    ids: tf.Tensor
    mask: tf.Tensor


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The static (Python) settings of one generation: a cache key."""

    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    pad_token_id: int
    width: int | None  # None: prompt width + max_new_tokens, known at run time
    cached: bool  # a KerasHub CausalLM run through its key / value cache
    jit_compile: bool  # eager calls compile with XLA (`model.jit_compile`)


def _is_causal_lm(model) -> bool:
    """Whether `model` is a KerasHub `CausalLM` (KerasHub already imported)."""
    keras_hub = sys.modules.get("keras_hub")
    causal_lm = getattr(getattr(keras_hub, "models", None), "CausalLM", None)
    return causal_lm is not None and isinstance(model, causal_lm)


def _next_tokens(logits, seed, settings: _Settings):
    """One token per row from `(batch, vocab)` logits, as int32."""
    logits = tf.cast(logits, tf.float32)
    if settings.temperature == 0.0:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    logits = logits / settings.temperature
    top_k, top_p = settings.top_k, settings.top_p
    if top_p is not None and top_p >= 1.0:
        top_p = None  # the nucleus is the whole vocabulary
    if top_k is None and top_p is None:
        choice = tf.random.stateless_categorical(logits, 1, seed)[:, 0]
        return tf.cast(choice, tf.int32)
    vocab = logits.shape[-1]
    if vocab is None:
        vocab = tf.shape(logits)[-1]
        k = vocab if top_k is None else tf.minimum(top_k, vocab)
    else:
        k = vocab if top_k is None else min(top_k, vocab)
    # Sorted, highest first: exactly k candidates, ties broken by lower id.
    values, ids = tf.math.top_k(logits, k=k)
    if top_p is not None:
        probabilities = tf.nn.softmax(values, axis=-1)
        before = tf.math.cumsum(probabilities, axis=-1, exclusive=True)
        # Keep a token while the ones before it hold less than top_p: the
        # smallest set reaching top_p, and always the most likely token.
        values = tf.where(before < top_p, values, float("-inf"))
    choice = tf.random.stateless_categorical(values, 1, seed)[:, 0]
    return tf.gather(ids, tf.cast(choice, tf.int32), batch_dims=1)


def _step_seed(seed, step):
    """The seed of one decoding step, derived from the generation's seed."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int32))


def _logits(outputs):
    if isinstance(outputs, (list, tuple, dict)) or outputs.shape.rank != 3:
        raise ValueError(
            "Argument `model` must map (batch, time) token ids to one "
            "(batch, time, vocab) tensor of logits. Received a model "
            f"returning {tf.nest.map_structure(lambda t: t.shape, outputs)}."
        )
    return outputs


def _buffer(prompts, lengths, settings: _Settings):
    """The prompts padded to the buffer's width, pad after each row's prompt."""
    width = settings.width
    if width is None:
        width = tf.shape(prompts)[1] + settings.max_new_tokens
    prompts = tf.pad(prompts, [[0, 0], [0, width - tf.shape(prompts)[1]]])
    positions = tf.range(width, dtype=tf.int32)[tf.newaxis, :]
    inside = positions < lengths[:, tf.newaxis]
    return tf.where(inside, prompts, settings.pad_token_id), positions


def _finish(ids, positions, lengths, settings: _Settings) -> Generation:
    end = lengths + settings.max_new_tokens
    mask = (positions >= lengths[:, tf.newaxis]) & (positions < end[:, tf.newaxis])
    return Generation(ids=ids, mask=mask)


def _loop(model, prompts, lengths, seed, settings: _Settings) -> Generation:
    """Decodes by running `model` on the whole buffer at each step.

    Step `s` writes row `i`'s token at position `len_i + s` from the logits
    at `len_i + s - 1`, drawn with the step's seed `fold_in(seed, s)`.
    """
    ids, positions = _buffer(prompts, lengths, settings)
    hub = _is_causal_lm(model)

    def body(step, ids):
        filled = lengths + step
        if hub:
            padding_mask = positions < filled[:, tf.newaxis]
            outputs = model({"token_ids": ids, "padding_mask": padding_mask})
        else:
            outputs = model(ids, training=False)
        logits = tf.gather(_logits(outputs), filled - 1, batch_dims=1)
        tokens = _next_tokens(logits, _step_seed(seed, step), settings)
        ids = tf.where(positions == filled[:, tf.newaxis], tokens[:, tf.newaxis], ids)
        return step + 1, ids

    _, ids = tf.while_loop(
        lambda step, ids: step < settings.max_new_tokens,
        body,
        (tf.constant(0, tf.int32), ids),
        maximum_iterations=settings.max_new_tokens,
    )
    return _finish(ids, positions, lengths, settings)


class _CachedSampler:
    """A KerasHub sampler (the `sampler` a `CausalLM.generate_step` calls)
    that decodes with `generate`'s contract.

    KerasHub's cache advances one position at a time for the whole batch:
    position `p` (from the shortest prompt's end) is written in row `i` when
    `len_i <= p < len_i + max_new_tokens`, drawn with the seed `fold_in(seed,
    p)`; other rows keep their prompt token or padding there.
    """

    def __init__(self, lengths, seed, settings: _Settings):
        self.lengths = lengths
        self.seed = seed
        self.settings = settings

    def __call__(self, next, prompt, cache=None, index=0, **kwargs):
        settings = self.settings
        lengths = self.lengths
        end = lengths + settings.max_new_tokens
        positions = tf.range(tf.shape(prompt)[1], dtype=tf.int32)[tf.newaxis, :]
        index = tf.cast(index, tf.int32)
        last = tf.reduce_max(end)

        def body(position, ids, cache):
            logits, _, cache = next(ids, cache, position)
            tokens = _next_tokens(logits, _step_seed(self.seed, position), settings)
            write = (position >= lengths) & (position < end)
            column = tf.where(write, tokens, ids[:, position])
            ids = tf.where(positions == position, column[:, tf.newaxis], ids)
            return position + 1, ids, cache

        _, ids, _ = tf.while_loop(
            lambda position, ids, cache: position < last,
            body,
            (index, prompt, cache),
            maximum_iterations=last - index,
        )
        return ids


def _cached(model, prompts, lengths, seed, settings: _Settings) -> Generation:
    """Decodes a KerasHub CausalLM through its key / value cache."""
    ids, positions = _buffer(prompts, lengths, settings)
    padding_mask = positions < lengths[:, tf.newaxis]
    # `generate_step` decodes with `model.sampler`: ours is lent for the
    # call (so one CausalLM must not generate in two threads at once).
    saved = model.sampler
    model.sampler = _CachedSampler(lengths, seed, settings)
    try:
        outputs = model.generate_step(
            {"token_ids": ids, "padding_mask": padding_mask}, stop_token_ids=None
        )
    finally:
        model.sampler = saved
    return _finish(
        tf.cast(outputs["token_ids"], tf.int32), positions, lengths, settings
    )


def _decode(model, prompts, lengths, seed, settings: _Settings) -> Generation:
    if settings.cached:
        return _cached(model, prompts, lengths, seed, settings)
    return _loop(model, prompts, lengths, seed, settings)


# Eager calls run a `tf.function` traced once per model and settings (and
# per prompt shape), compiled with XLA when the model's `jit_compile` is
# True, as KerasHub's `CausalLM.generate` does. The functions hold their
# model weakly, so that the cache keeps no model alive.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model, settings: _Settings):
    functions = _COMPILED.setdefault(model, {})
    if settings not in functions:
        reference = weakref.ref(model)

        @tf.function(jit_compile=settings.jit_compile)
        def run(prompts, lengths, seed):
            return _decode(reference(), prompts, lengths, seed, settings)

        functions[settings] = run
    return functions[settings]


def generate(
    model,
    prompts,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed=None,
    prompt_lengths=None,
    pad_token_id: int = 0,
    length: int | None = None,
) -> Generation:
    """Samples `max_new_tokens` tokens after each prompt from a causal LM.

    Use it to sample a student's or a teacher's continuations (on-policy
    or sequence-level distillation). `model` maps `(batch, time)` token ids
    to `(batch, time, vocab)` logits causally: the logits at position `t`
    predict token `t + 1` from tokens `<= t` only (a decoder-only
    Transformer, a causal convolution, an RNN). A KerasHub `CausalLM` works
    too.

    Prompts are left-aligned: row `i` holds its prompt in `[0, len_i)`,
    padding after. Its continuation is written at `[len_i, len_i +
    max_new_tokens)` of a buffer of width `length`; every position after it
    holds `pad_token_id`. At each step the model runs on the whole buffer
    (no key / value cache: any model works) and each row's next token is
    drawn from the logits at its last filled position; by causality the
    padding after a row's end never changes its continuation. A KerasHub
    `CausalLM` is decoded through its own key / value cache instead (its
    `generate_step`, with a sampler of ours), 2 to 6 times faster.

    Sampling draws from `softmax(logits / temperature)`; `temperature=0`
    picks the most likely token (greedy decoding, no randomness). `top_k`
    keeps the `k` largest logits; `top_p` (nucleus sampling, Holtzman et
    al. 2020) then keeps the smallest set of most likely tokens whose
    probability (renormalised after `top_k`) reaches `top_p`, always at
    least the most likely one. The draws use stateless random ops
    (`tf.random.stateless_categorical`) with one seed per step derived
    from `seed` (`tf.random.experimental.stateless_fold_in`): the same
    seed, model, prompts and settings give the same ids. (A KerasHub
    `CausalLM` keys its draws by position rather than by step, so its
    samples differ from those of the same network decoded without the
    cache; greedy decoding agrees.)

    `generate` works eagerly and inside a `tf.function` or a Keras train
    step, on symbolic tensors, where `seed` may be a `(2,)` int tensor
    (there `prompt_lengths` cannot be checked: they are clipped to
    `[1, prompt width]`). An eager call runs a `tf.function` traced once per
    model, settings and prompt shape, compiled with XLA when
    `model.jit_compile` is True (as KerasHub's `generate` does). XLA's
    random kernels are not TensorFlow's: a seed gives other samples under
    XLA (e.g. in a `jit_compile=True` train step) than without it.

    Args:
        model: a `keras.Model` mapping `(batch, time)` token ids to
            `(batch, time, vocab)` logits, causal; or a KerasHub `CausalLM`
            (called with `{"token_ids", "padding_mask"}`). A model with a
            fixed input length (`model.input_shape[1]` not None) gets a
            buffer of exactly that width.
        prompts: `(batch, prompt_width)` int array or tensor of token ids,
            each row's prompt at its start.
        max_new_tokens: positive int, the number of tokens generated per row.
        temperature: float >= 0, the softmax temperature; 0 is greedy.
        top_k: positive int or None: sample among the `top_k` most likely
            tokens only.
        top_p: float in (0, 1] or None: sample in the nucleus of
            probability `top_p` only (applied after `top_k`).
        seed: None (fresh randomness at each call), an int `s` in
            `[0, 2**31 - 1]` (the stateless seed `(0, s)`), or a `(2,)` int
            array or tensor (taken as int32, as XLA requires: int64 values
            wrap modulo 2**32).
        prompt_lengths: `(batch,)` int array or tensor, the length of each
            row's prompt, between 1 and `prompt_width`; None (the default)
            means every row's prompt fills `prompts`.
        pad_token_id: int written at every position after a row's end.
        length: int or None, the width of the returned buffer; at least
            `prompt_width + max_new_tokens`, which is the default. A model
            with a fixed input length sets it.

    Returns:
        A `Generation(ids, mask)` of tensors: `ids`, the `(batch, length)`
        int32 buffer of prompts, continuations and padding; `mask`, the
        `(batch, length)` bool tensor that is True exactly at the generated
        positions.

    Example:

    ```python
    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(32, 16)(inputs)
    hidden = keras.layers.Conv1D(16, 3, padding="causal")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(32)(hidden))

    prompts = np.array([[5, 6, 7], [8, 9, 0]])  # the second prompt: 2 tokens
    out = kd.lm.generate(model, prompts, max_new_tokens=4, temperature=0.7,
                         top_k=10, seed=1, prompt_lengths=[3, 2])
    out.ids.shape      # (2, 7): row 1 is [8, 9, g, g, g, g, 0]
    out.mask.numpy()   # True at [3, 7) in row 0 and [2, 6) in row 1
    ```
    """
    _utils.check_model(model, "model")
    max_new_tokens = _utils.check_int(
        max_new_tokens, "max_new_tokens", 1, what="tokens generated per row"
    )
    temperature = _utils.check_number(
        temperature, "temperature", low=0.0, what="0 for greedy decoding"
    )
    if top_k is not None:
        top_k = _utils.check_int(top_k, "top_k", 1, what="tokens kept, or None")
    if top_p is not None:
        top_p = _utils.check_number(
            top_p, "top_p", low=0.0, high=1.0, low_open=True, what="or None"
        )
    pad_token_id = _utils.check_int(pad_token_id, "pad_token_id", 0)
    if length is not None:
        length = _utils.check_int(length, "length", 1, what="the buffer width")
    prompts = check_prompts(prompts)
    width = buffer_width(model, prompts, max_new_tokens, length)
    lengths = check_prompt_lengths(prompt_lengths, prompts)
    seed = check_seed(seed)
    settings = _Settings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        pad_token_id=pad_token_id,
        width=width,
        cached=_is_causal_lm(model),
        jit_compile=getattr(model, "jit_compile", None) is True,
    )
    if tf.executing_eagerly():
        return Generation(*_compiled(model, settings)(prompts, lengths, seed))
    return _decode(model, prompts, lengths, seed, settings)


__all__ = ["Generation", "generate"]
