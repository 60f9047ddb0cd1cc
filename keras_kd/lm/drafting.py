"""The student as a drafter: speculative decoding and its acceptance rate.

In speculative decoding (Leviathan et al. 2023; Chen et al. 2023) a small
drafter proposes a few tokens autoregressively and the large target scores
them all in one forward pass: it keeps a prefix of them and adds a token of
its own, so that one target call yields one token or more, and the output
is distributed exactly as the target's own samples. The better the drafter
agrees with the target, the more drafts are accepted: a distilled student is
a natural drafter, and DistillSpec (Zhou et al. 2024) distils students for
that role. `speculative_generate` runs the algorithm and counts: it is the
measurement that says whether a distilled language model saves time at
inference.

It works in numpy on eager model outputs, for clarity rather than speed: each
model is run on the whole token buffer at each step (no key / value cache), so
any causal Keras language model works, KerasHub `CausalLM`s included.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

from keras_kd import _utils
from keras_kd.backend import tf
from keras_kd.lm._drafting_checks import (
    buffer_width,
    check_prompt_lengths,
    check_prompts,
    check_seed,
)


@dataclasses.dataclass(frozen=True)
class SpeculativeGeneration:
    """What `speculative_generate` returns: the ids and what decoding cost.

    Counts are per sequence: a batched forward pass of the target counts
    once for each row still generating, as if each row were decoded alone.
    Every target call yields exactly one token of the target's own (the
    bonus or the correction) after the drafts it accepted, so
    `new_tokens == accepted_tokens + target_calls`.

    Attributes:
        ids: `(batch, width)` int32 numpy array. Row `i` holds its prompt in
            `[0, len_i)`, its `max_new_tokens` generated tokens in
            `[len_i, len_i + max_new_tokens)` and `pad_token_id` after.
        mask: `(batch, width)` bool numpy array, True exactly at the
            generated positions.
        new_tokens: tokens generated, over all rows.
        draft_tokens: tokens the drafter proposed.
        verified_tokens: proposed tokens the target judged: the accepted
            ones and each first rejection (drafts after a rejection are
            discarded unjudged).
        accepted_tokens: proposed tokens the target accepted.
        target_calls: forward passes of the target, per row.
    """

    ids: np.ndarray
    mask: np.ndarray
    new_tokens: int
    draft_tokens: int
    verified_tokens: int
    accepted_tokens: int
    target_calls: int

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts per judged draft: the chance that the target
        accepts a draft token, DistillSpec's alpha.

        For fixed target and drafter distributions `p` and `q` it estimates
        `sum_x min(p(x), q(x)) = 1 - TV(p, q)`, whatever `num_draft_tokens`
        is. (`accepted_tokens / draft_tokens`, accepted per *proposed* draft,
        is lower and falls as `num_draft_tokens` grows.) NaN when nothing
        was drafted.
        """
        return _ratio(self.accepted_tokens, self.verified_tokens)

    @property
    def target_calls_per_token(self) -> float:
        """Target forward passes per generated token: 1 without a drafter,
        `1 / (num_draft_tokens + 1)` at best."""
        return _ratio(self.target_calls, self.new_tokens)

    @property
    def block_efficiency(self) -> float:
        """Tokens generated per target call (DistillSpec's tau): the mean
        number of accepted drafts per call, plus the target's own token.
        The reciprocal of `target_calls_per_token`."""
        return _ratio(self.new_tokens, self.target_calls)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


# ---------------------------------------------------------------------------
# The models' distributions
# ---------------------------------------------------------------------------


def _is_causal_lm(model) -> bool:
    """Whether `model` is a KerasHub `CausalLM` (KerasHub already imported)."""
    keras_hub = sys.modules.get("keras_hub")
    causal_lm = getattr(getattr(keras_hub, "models", None), "CausalLM", None)
    return causal_lm is not None and isinstance(model, causal_lm)


class _Scorer:
    """Runs one model on the whole buffer; its logits at chosen positions."""

    def __init__(self, model, argument: str, temperature: float):
        self.model = model
        self.argument = argument
        self.temperature = temperature
        self.hub = _is_causal_lm(model)

    def logits(self, ids: np.ndarray, ends: np.ndarray, positions: np.ndarray):
        """`(batch, n, vocab)` float64 logits at `positions` (`(batch, n)`),
        each row's content ending before `ends` (its padding mask)."""
        if self.hub:
            padding_mask = np.arange(ids.shape[1])[np.newaxis, :] < ends[:, np.newaxis]
            outputs = self.model({"token_ids": ids, "padding_mask": padding_mask})
        else:
            outputs = self.model(ids, training=False)
        if isinstance(outputs, (list, tuple, dict)) or len(outputs.shape) != 3:
            raise ValueError(
                f"Argument `{self.argument}` must map (batch, time) token ids to "
                "one (batch, time, vocab) tensor of logits. Received a model "
                f"returning {tf.nest.map_structure(lambda t: t.shape, outputs)}."
            )
        outputs = np.asarray(outputs, np.float64)
        positions = np.clip(positions, 0, ids.shape[1] - 1)
        return np.take_along_axis(outputs, positions[:, :, np.newaxis], axis=1)

    def probabilities(self, ids, ends, positions):
        """Softmax at the temperature; under greedy decoding the logits
        themselves (only their argmax is read)."""
        logits = self.logits(ids, ends, positions)
        if self.temperature == 0.0:
            return logits
        z = logits / self.temperature
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)


def _sample(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of `(batch, vocab)` probabilities (inverse CDF)."""
    cdf = np.cumsum(probabilities, axis=-1)
    u = rng.random(len(cdf))[:, np.newaxis] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), cdf.shape[-1] - 1)


# ---------------------------------------------------------------------------
# One block: draft, verify, accept
# ---------------------------------------------------------------------------


def _draft(scorer: _Scorer, ids, filled, drafts, rng, greedy):
    """The drafter proposes `drafts[i]` tokens after row `i`'s `filled`
    tokens, writing them into `ids`; returns the tokens and their
    distributions, `(batch, depth)` and `(batch, depth, vocab)`."""
    rows = np.arange(len(ids))
    tokens, distributions = [], []
    for j in range(int(drafts.max())):
        q = scorer.probabilities(ids, filled + j, (filled + j - 1)[:, None])[:, 0]
        token = np.argmax(q, axis=-1) if greedy else _sample(q, rng)
        write = j < drafts
        ids[rows[write], filled[write] + j] = token[write]
        tokens.append(token)
        distributions.append(q)
    return np.stack(tokens, axis=1), np.stack(distributions, axis=1)


def _judge(tokens, q, p, drafts, rng, greedy):
    """How many drafts each row accepts, and the target's own next token.

    Draft `x` is accepted with probability `min(1, p(x) / q(x))` (greedy:
    when it is the target's argmax), in order until the first rejection;
    the token after the accepted ones is drawn from the residual
    `max(0, p - q)` renormalised after a rejection, or from `p` after a
    fully accepted block (greedy: the target's argmax in both cases).
    """
    rows = np.arange(len(p))
    depth = tokens.shape[1]
    judged = np.arange(depth)[np.newaxis, :] < drafts[:, np.newaxis]
    if greedy or not depth:
        ok = tokens == np.argmax(p[:, :depth], axis=-1)
    else:
        index = tokens[:, :, np.newaxis]
        p_x = np.take_along_axis(p[:, :depth], index, axis=-1)[:, :, 0]
        q_x = np.take_along_axis(q, index, axis=-1)[:, :, 0]
        ok = rng.random(p_x.shape) * q_x < p_x  # u < p(x) / q(x), u in [0, 1)
    ok &= judged
    # The first False of each row (after its last judged draft at the latest).
    stop = np.zeros((len(ok), 1), bool)
    accepted = np.argmin(np.concatenate([ok, stop], axis=1), axis=1)
    after = p[rows, accepted]
    if greedy:
        return accepted, np.argmax(after, axis=-1)
    rejected = accepted < drafts
    if rejected.any():
        residual = np.maximum(after - q[rows, np.minimum(accepted, depth - 1)], 0.0)
        total = residual.sum(axis=-1, keepdims=True)
        residual = np.where(total > 0, residual / np.maximum(total, 1e-300), after)
        after = np.where(rejected[:, np.newaxis], residual, after)
    return accepted, _sample(after, rng)


def _check_vocabularies(drafter: _Scorer, target: _Scorer, ids, lengths) -> None:
    """Runs each model once on the prompts: a drafter's token outside the
    target's vocabulary would otherwise reach the target unnoticed."""
    last = (lengths - 1)[:, np.newaxis]
    sizes = [model.logits(ids, lengths, last).shape[-1] for model in (drafter, target)]
    if sizes[0] != sizes[1]:
        raise ValueError(
            "Arguments `drafter` and `target` must share one vocabulary. "
            f"Received: a drafter with {sizes[0]} logits per position and a "
            f"target with {sizes[1]}."
        )


def _decode(drafter, target, ids, lengths, max_new_tokens, k, rng, pad_token_id):
    """Fills `ids` block by block, every row on its own; returns the counts."""
    greedy = target.temperature == 0.0
    batch, width = ids.shape
    rows, positions = np.arange(batch), np.arange(width)[np.newaxis, :]
    filled = lengths.copy()  # tokens in each row so far
    remaining = np.full(batch, max_new_tokens, np.int64)
    counts = dict(draft_tokens=0, verified_tokens=0, accepted_tokens=0, target_calls=0)
    while (active := remaining > 0).any():
        # Never past a row's end: its last token is the target's.
        drafts = np.where(active, np.minimum(k, remaining - 1), 0)
        depth = int(drafts.max())
        if depth:
            tokens, q = _draft(drafter, ids, filled, drafts, rng, greedy)
        else:
            tokens, q = np.zeros((batch, 0), np.int64), None
        scored = (filled - 1)[:, np.newaxis] + np.arange(depth + 1)
        p = target.probabilities(ids, filled + drafts, scored)
        accepted, token = _judge(tokens, q, p, drafts, rng, greedy)
        accepted = np.where(active, accepted, 0)
        # The target's token after the accepted drafts; the rejected cleared.
        stale = (positions > (filled + accepted)[:, np.newaxis]) & (
            positions < (filled + drafts)[:, np.newaxis]
        )
        ids[stale] = pad_token_id
        ids[rows[active], (filled + accepted)[active]] = token[active]
        counts["draft_tokens"] += int(drafts.sum())
        judged = np.where(accepted < drafts, accepted + 1, drafts)
        counts["verified_tokens"] += int(judged.sum())
        counts["accepted_tokens"] += int(accepted.sum())
        counts["target_calls"] += int(active.sum())
        filled = np.where(active, filled + accepted + 1, filled)
        remaining = np.where(active, remaining - accepted - 1, remaining)
    return counts


# ---------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------


def speculative_generate(
    drafter,
    target,
    prompts,
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    temperature: float = 1.0,
    seed: int | None = None,
    prompt_lengths=None,
    pad_token_id: int = 0,
) -> SpeculativeGeneration:
    """Speculative decoding with a drafter: the target's samples, and their cost.

    Runs speculative sampling (Leviathan et al. 2023; Chen et al. 2023) with
    `drafter` proposing tokens for `target`, and counts how many drafts the
    target accepts and how many target forward passes each generated token
    cost. Use it to judge a distilled student as its teacher's drafter
    (DistillSpec, Zhou et al. 2024): the better aligned the student, the
    higher its acceptance rate and the fewer target calls per token.

    Each block, row by row: the drafter proposes `num_draft_tokens` tokens
    autoregressively, sampled from `q = softmax(drafter logits /
    temperature)`; the target scores all of them in one forward pass, giving
    `p` at every proposed position and one after; draft `x` is accepted with
    probability `min(1, p(x) / q(x))`, in order; at the first rejection the
    token is drawn from the residual `max(0, p - q)` renormalised, and the
    rest of the block is discarded; if all drafts are accepted, a bonus
    token is drawn from the target's `p` after them. Whatever the drafter,
    the generated tokens are distributed as the target's own samples at the
    temperature. With `temperature=0` (greedy) the drafter proposes its
    argmax and drafts are accepted while they equal the target's argmax:
    the ids are exactly the target's greedy decoding.

    Rows advance independently, each by its own accepted drafts plus one.
    A block never drafts past a row's `max_new_tokens`: with `r` tokens
    still to generate it proposes `min(num_draft_tokens, r - 1)`, so that
    its last token is the target's (as Hugging Face's assisted generation
    does). Both models are run on the whole token buffer at each step (no
    key / value cache), eagerly, and the algorithm is written in float64
    numpy: this is a measurement, not a fast decoder.

    Args:
        drafter: the proposing `keras.Model`, mapping `(batch, time)` token
            ids to `(batch, time, vocab)` logits causally (the logits at `t`
            predict token `t + 1` from tokens `<= t`); or a KerasHub
            `CausalLM`, called with `{"token_ids", "padding_mask"}`.
        target: the verifying model, of the same kind and vocabulary.
        prompts: `(batch, prompt_width)` int array or tensor of token ids,
            each row's prompt at its start.
        max_new_tokens: positive int, the number of tokens generated per row.
        num_draft_tokens: positive int, the tokens the drafter proposes per
            target call (gamma, or K).
        temperature: float >= 0, the softmax temperature of both models;
            0 is greedy decoding.
        seed: None (fresh randomness) or a non-negative int, the seed of
            numpy's generator that draws the samples and the acceptances.
        prompt_lengths: `(batch,)` int array, each row's prompt length
            between 1 and `prompt_width`; None means every row's prompt
            fills `prompts`.
        pad_token_id: int written at every position after a row's end.

    Returns:
        A `SpeculativeGeneration`: `ids` and `mask` (numpy, as
        `kd.lm.generate` lays them out), the counts `new_tokens`,
        `draft_tokens`, `verified_tokens`, `accepted_tokens` and
        `target_calls`, and the rates `acceptance_rate` (accepted per
        judged draft), `target_calls_per_token` and `block_efficiency`
        (tokens per target call).

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
    prompts = np.array([[5, 6, 7], [8, 9, 10]])
    out = kd.lm.speculative_generate(student, teacher, prompts,
                                     max_new_tokens=20, seed=1)
    out.acceptance_rate          # accepted per judged draft, in [0, 1]
    out.target_calls_per_token   # 1 / (num_draft_tokens + 1) at best
    out.ids.shape                # (2, 23)
    ```
    """
    _utils.check_model(drafter, "drafter")
    _utils.check_model(target, "target")
    max_new_tokens = _utils.check_int(
        max_new_tokens, "max_new_tokens", 1, what="tokens generated per row"
    )
    num_draft_tokens = _utils.check_int(
        num_draft_tokens, "num_draft_tokens", 1, what="drafts per target call"
    )
    temperature = _utils.check_number(
        temperature, "temperature", low=0.0, what="0 for greedy decoding"
    )
    pad_token_id = _utils.check_int(pad_token_id, "pad_token_id", 0)
    prompts = check_prompts(prompts)
    lengths = check_prompt_lengths(prompt_lengths, prompts)
    seed = check_seed(seed)
    width = buffer_width(drafter, target, prompts, max_new_tokens)

    drafter = _Scorer(drafter, "drafter", temperature)
    target = _Scorer(target, "target", temperature)
    positions = np.arange(width)[np.newaxis, :]
    ids = np.full((len(prompts), width), pad_token_id, np.int32)
    ids[:, : prompts.shape[1]] = prompts
    ids[positions >= lengths[:, np.newaxis]] = pad_token_id
    _check_vocabularies(drafter, target, ids, lengths)
    counts = _decode(
        drafter,
        target,
        ids,
        lengths,
        max_new_tokens,
        num_draft_tokens,
        np.random.default_rng(seed),
        pad_token_id,
    )
    mask = (positions >= lengths[:, np.newaxis]) & (
        positions < (lengths + max_new_tokens)[:, np.newaxis]
    )
    return SpeculativeGeneration(
        ids=ids, mask=mask, new_tokens=len(ids) * max_new_tokens, **counts
    )


__all__ = ["SpeculativeGeneration", "speculative_generate"]
