"""The arguments of `keras_kd.lm.speculative_generate`, checked: prompts,
their lengths, the seed, and the width of the token buffer (from the input
length the drafter and the target are fixed or limited to).

Private to `keras_kd.lm`: `drafting.py` imports these by name.
"""

from __future__ import annotations

import numpy as np


def check_prompts(prompts) -> np.ndarray:
    expected = "a (batch, time) array or tensor of integer token ids"
    try:
        array = np.asarray(prompts)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"Argument `prompts` must be {expected}. Received: "
            f"prompts={prompts!r} of type {type(prompts).__name__}."
        ) from e
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"Argument `prompts` must be {expected}. Received: prompts of "
            f"dtype {array.dtype}."
        )
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(
            f"Argument `prompts` must be {expected}, with at least one row and "
            f"one token per row. Received: prompts of shape {array.shape}."
        )
    return array.astype(np.int32)


def check_prompt_lengths(prompt_lengths, prompts: np.ndarray) -> np.ndarray:
    batch, width = prompts.shape
    if prompt_lengths is None:
        return np.full(batch, width, np.int64)
    lengths = np.asarray(prompt_lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(
            "Argument `prompt_lengths` must be None or a (batch,) array of "
            f"integers. Received: prompt_lengths={prompt_lengths!r}."
        )
    if lengths.shape != (batch,):
        raise ValueError(
            "Argument `prompt_lengths` must have shape (batch,), one length "
            f"per row of `prompts` (shape {prompts.shape}). Received: "
            f"prompt_lengths of shape {lengths.shape}."
        )
    if np.any((lengths < 1) | (lengths > width)):
        raise ValueError(
            "Argument `prompt_lengths` must hold lengths between 1 and the "
            f"prompt width ({width}). Received: "
            f"prompt_lengths={lengths.tolist()}."
        )
    return lengths.astype(np.int64)


def check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            "Argument `seed` must be None or a non-negative integer. Received: "
            f"seed={seed!r} of type {type(seed).__name__}."
        )
    if seed < 0:
        raise ValueError(
            "Argument `seed` must be None or a non-negative integer. Received: "
            f"seed={seed}."
        )
    return int(seed)


def _length_limit(model, argument: str) -> tuple[int | None, str]:
    """The sequence length `model` is fixed to or limited to, with its source."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        shape = None
    if isinstance(shape, tuple) and len(shape) >= 2 and isinstance(shape[1], int):
        return shape[1], f"`{argument}.input_shape[1]`"
    backbone = getattr(model, "backbone", None)
    limit = getattr(backbone, "max_sequence_length", None)
    if isinstance(limit, int):
        return limit, f"`{argument}.backbone.max_sequence_length`"
    return None, ""


def buffer_width(drafter, target, prompts: np.ndarray, max_new_tokens: int) -> int:
    """The width of the token buffer: the prompts' plus `max_new_tokens`,
    or the input length both models are fixed to."""
    needed = prompts.shape[1] + max_new_tokens
    fixed = {}
    for model, argument in ((drafter, "drafter"), (target, "target")):
        limit, source = _length_limit(model, argument)
        if limit is not None and limit < needed:
            raise ValueError(
                f"Argument `{argument}` takes sequences of at most {limit} "
                f"tokens ({source}), too few for prompts of width "
                f"{prompts.shape[1]} and max_new_tokens={max_new_tokens}, which "
                f"need {needed}. Pass shorter `prompts` or a smaller "
                "`max_new_tokens`."
            )
        if source.endswith("input_shape[1]`"):
            fixed[argument] = limit
    if len(set(fixed.values())) > 1:
        raise ValueError(
            "Arguments `drafter` and `target` take sequences of fixed, different "
            f"lengths: {fixed['drafter']} and {fixed['target']} tokens. Build "
            "them with the same input length, or with `None` for the time axis."
        )
    return next(iter(fixed.values()), needed)
