"""The arguments of `keras_kd.lm.generate`, checked: prompts, their lengths,
the seed, and the width of the token buffer (from the model's input length).

Private to `keras_kd.lm`: `generation.py` imports these by name.
"""

from __future__ import annotations

import numpy as np

from keras_kd.backend import tf

# Seeds are int32 pairs: XLA's stateless random ops take no other.
_SEED_LIMIT = 2**31 - 1


def _check_integer_tensor(value, argument: str, expected: str):
    """`value` as a tensor of an integer dtype (TypeError otherwise)."""
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"Argument `{argument}` must be {expected}. Received: "
            f"{argument}={value!r} of type {type(value).__name__}."
        ) from e
    if not tensor.dtype.is_integer:
        raise TypeError(
            f"Argument `{argument}` must be {expected} of an integer dtype. "
            f"Received: {argument} of dtype {tensor.dtype.name}."
        )
    return tensor


def check_prompts(prompts):
    prompts = _check_integer_tensor(
        prompts, "prompts", "a (batch, time) array or tensor of token ids"
    )
    if prompts.shape.rank != 2:
        raise ValueError(
            "Argument `prompts` must be a (batch, time) array or tensor of "
            f"token ids. Received: prompts of shape {prompts.shape}."
        )
    if prompts.shape[1] == 0:
        raise ValueError(
            "Argument `prompts` must hold at least one token per row. "
            f"Received: prompts of shape {prompts.shape}."
        )
    return tf.cast(prompts, tf.int32)


def check_prompt_lengths(prompt_lengths, prompts):
    """`(batch,)` int32 lengths, checked where their values can be known."""
    prompt_width = prompts.shape[1]
    if prompt_lengths is None:
        return tf.fill(tf.shape(prompts)[:1], tf.shape(prompts)[1])
    lengths = _check_integer_tensor(
        prompt_lengths, "prompt_lengths", "a (batch,) array or tensor of integers"
    )
    batch = prompts.shape[0]
    if lengths.shape.rank != 1 or (
        batch is not None and lengths.shape[0] not in (None, batch)
    ):
        raise ValueError(
            "Argument `prompt_lengths` must have shape (batch,), one length "
            f"per row of `prompts` (shape {prompts.shape}). Received: "
            f"prompt_lengths of shape {lengths.shape}."
        )
    values = tf.get_static_value(lengths)
    if values is not None and prompt_width is not None:
        bad = (values < 1) | (values > prompt_width)
        if np.any(bad):
            raise ValueError(
                "Argument `prompt_lengths` must hold lengths between 1 and the "
                f"prompt width ({prompt_width}): a prompt needs a token to "
                "continue from and lies inside `prompts`. Received: "
                f"prompt_lengths={values.tolist()}."
            )
    lengths = tf.cast(lengths, tf.int32)
    # Inside a traced function the values cannot be checked: keep them in range.
    high = prompt_width if prompt_width is not None else tf.shape(prompts)[1]
    return tf.clip_by_value(lengths, 1, high)


def check_seed(seed):
    """The seed as a `(2,)` int32 tensor (XLA's stateless ops take no other);
    None draws one at random."""
    expected = "None, an integer in [0, 2**31 - 1] or a (2,) integer tensor"
    if seed is None:
        return tf.random.uniform([2], maxval=_SEED_LIMIT, dtype=tf.int32)
    if isinstance(seed, (bool, np.bool_, float, str, bytes)):
        raise TypeError(
            f"Argument `seed` must be {expected}. Received: seed={seed!r} of "
            f"type {type(seed).__name__}."
        )
    if isinstance(seed, (int, np.integer)):
        if not 0 <= seed <= _SEED_LIMIT:
            raise ValueError(
                f"Argument `seed` must be {expected}. Received: seed={seed}."
            )
        return tf.constant([0, int(seed)], tf.int32)
    seed = _check_integer_tensor(seed, "seed", expected)
    if seed.shape.rank != 1 or seed.shape[0] not in (None, 2):
        raise ValueError(
            f"Argument `seed` must be {expected}. Received: seed of shape {seed.shape}."
        )
    return tf.cast(seed, tf.int32)


def _fixed_input_length(model) -> int | None:
    """The time length a model's single input is fixed to, or None."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if not isinstance(shape, tuple) or len(shape) < 2:
        return None  # several inputs, or not a sequence
    if not all(d is None or isinstance(d, int) for d in shape):
        return None
    return shape[1]


def _max_sequence_length(model) -> int | None:
    """The longest sequence a KerasHub CausalLM's backbone takes, or None."""
    length = getattr(getattr(model, "backbone", None), "max_sequence_length", None)
    return length if isinstance(length, int) else None


def buffer_width(model, prompts, max_new_tokens: int, length) -> int | None:
    """The static width of the token buffer (None: only known at run time)."""
    prompt_width = prompts.shape[1]
    needed = None if prompt_width is None else prompt_width + max_new_tokens
    fixed = _fixed_input_length(model)
    if fixed is not None:
        if length is not None and length != fixed:
            raise ValueError(
                f"Argument `length` must be the model's input length, {fixed} "
                f"(`model.input_shape[1]`), or None. Received: length={length}."
            )
        if needed is not None and fixed < needed:
            raise ValueError(
                f"The model takes sequences of {fixed} tokens "
                f"(`model.input_shape[1]`), too short for prompts of width "
                f"{prompt_width} and max_new_tokens={max_new_tokens}, which need "
                f"{needed}. Pass shorter `prompts` (trim their padding) or a "
                "smaller `max_new_tokens`."
            )
        width = fixed
    elif length is not None:
        if needed is not None and length < needed:
            raise ValueError(
                "Argument `length` must be at least the prompt width plus "
                f"`max_new_tokens` ({prompt_width} + {max_new_tokens} = "
                f"{needed}). Received: length={length}."
            )
        width = length
    else:
        width = needed
    limit = _max_sequence_length(model)
    if limit is not None and width is not None and width > limit:
        raise ValueError(
            f"The model's backbone takes at most {limit} tokens "
            f"(`max_sequence_length`), fewer than the {width} that prompts of "
            f"width {prompt_width} and max_new_tokens={max_new_tokens} need."
        )
    return width
