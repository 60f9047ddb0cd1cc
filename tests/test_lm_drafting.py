"""`kd.lm.speculative_generate` against the mathematics of speculative sampling.

The models are tiny and their numpy references exact: a bigram model (one
Embedding whose table holds the logits of the next token), a fixed
distribution (a bigram table with equal rows), and a causal convolution. The
checks: the samples follow the target's distribution whatever the drafter
(the guarantee of speculative sampling, Leviathan et al. 2023); the
acceptance rate is `1 - TV(p, q)` and the target calls per token what the
acceptance chain predicts; a drafter equal to the target (or, greedily,
with the target's argmax) accepts everything; greedy decoding gives the
target's own ids, and KerasHub's `SpeculativeSampler` agrees on the ids and
the number of target calls.
"""

import math

import numpy as np
import pytest

from keras_kd import backend
from keras_kd.backend import keras
from keras_kd.lm.drafting import SpeculativeGeneration, speculative_generate

VOCAB = 6


# --- models and their numpy references ---------------------------------------


def bigram_model(table):
    """Logits of the next token: row `t` of `table` after token `t`."""
    table = np.asarray(table, np.float32)
    inputs = keras.Input((None,), dtype="int32")
    layer = keras.layers.Embedding(len(table), table.shape[1])
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([table])
    return model


def fixed_distribution_model(logits):
    """Logits that ignore the input: every position predicts `logits`."""
    return bigram_model(np.tile(np.asarray(logits, np.float32), (VOCAB, 1)))


def conv_model(vocab=VOCAB, length=None):
    inputs = keras.Input((length,), dtype="int32")
    hidden = keras.layers.Embedding(vocab, 8)(inputs)
    hidden = keras.layers.Conv1D(8, 3, padding="causal", activation="tanh")(hidden)
    return keras.Model(inputs, keras.layers.Dense(vocab)(hidden))


def np_conv_logits(model, tokens):
    """Logits at every position: position t sees tokens t-2, t-1 and t."""
    embeddings, conv_kernel, conv_bias, kernel, bias = (
        w.astype(np.float64) for w in model.get_weights()
    )
    x = embeddings[np.asarray(tokens)]
    padded = np.concatenate([np.zeros((2, x.shape[1])), x])
    hidden = sum(padded[k : k + len(tokens)] @ conv_kernel[k] for k in range(3))
    return np.tanh(hidden + conv_bias) @ kernel + bias


def np_softmax(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def np_greedy(logits_fn, prompt, max_new_tokens):
    """Plain greedy decoding of one row: the target's own ids."""
    sequence = list(prompt)
    for _ in range(max_new_tokens):
        sequence.append(int(np.argmax(logits_fn(sequence)[-1])))
    return sequence


def np_greedy_target_calls(drafter_fn, target_fn, prompt, max_new_tokens, k):
    """Greedy speculative decoding of one row, written plainly: target calls
    and accepted drafts."""
    sequence, remaining, calls, accepted = list(prompt), max_new_tokens, 0, 0
    while remaining:
        drafts = []
        for _ in range(min(k, remaining - 1)):
            drafts.append(int(np.argmax(drafter_fn(sequence + drafts)[-1])))
        target = np.argmax(target_fn(sequence + drafts), axis=-1)[len(sequence) - 1 :]
        n = 0
        while n < len(drafts) and drafts[n] == target[n]:
            n += 1
        sequence += drafts[:n] + [int(target[n])]
        calls, accepted, remaining = calls + 1, accepted + n, remaining - n - 1
    return calls, accepted


def np_expected_target_calls(alpha, max_new_tokens, k):
    """Mean and variance of a row's target calls when every draft is accepted
    with probability `alpha` independently (fixed distributions), by
    dynamic programming over the tokens still to generate."""
    distributions = [np.array([1.0])]  # P(calls = c) with 0 tokens left
    for remaining in range(1, max_new_tokens + 1):
        drafts = min(k, remaining - 1)
        result = np.zeros(remaining + 1)
        for n in range(drafts + 1):  # n drafts accepted
            chance = alpha**n * ((1 - alpha) if n < drafts else 1.0)
            rest = distributions[remaining - n - 1]
            result[1 : len(rest) + 1] += chance * rest
        distributions.append(result)
    calls = np.arange(max_new_tokens + 1)
    mean = (calls * distributions[-1]).sum()
    return mean, (calls**2 * distributions[-1]).sum() - mean**2


def joint_frequencies(ids, start, vocab=VOCAB):
    """Empirical distribution of the token pairs at `start` and `start + 1`."""
    pairs = ids[:, start] * vocab + ids[:, start + 1]
    return np.bincount(pairs, minlength=vocab * vocab) / len(ids)


def max_z_score(frequencies, probabilities, n):
    """The largest deviation of cell frequencies, in binomial standard errors."""
    error = np.sqrt(np.maximum(probabilities * (1 - probabilities), 1e-12) / n)
    return np.max(np.abs(frequencies - probabilities) / error)


@pytest.fixture
def tables():
    rng = np.random.default_rng(3)
    target = rng.normal(scale=1.5, size=(VOCAB, VOCAB))
    return target, -target  # a drafter that prefers what the target avoids


# --- the guarantee: the target's distribution, whatever the drafter ------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_samples_follow_the_target_distribution_whatever_the_drafter(
    tables, temperature
):
    target_table, drafter_table = tables
    n = 20000
    prompts = np.full((n, 1), 2)
    # 3 new tokens, 2 drafts: the first two tokens come out of one block.
    out = speculative_generate(
        bigram_model(drafter_table),
        bigram_model(target_table),
        prompts,
        max_new_tokens=3,
        num_draft_tokens=2,
        temperature=temperature,
        seed=0,
    )
    p, q = np_softmax(target_table, temperature), np_softmax(drafter_table, temperature)
    # P(x1, x2) = P(x1 | 2) P(x2 | x1), drafted in one block ...
    first_pairs = p[2][:, None] * p
    assert max_z_score(joint_frequencies(out.ids, 1), first_pairs.ravel(), n) < 5
    # ... and P(x2, x3) = P(x2) P(x3 | x2), across the block boundary.
    second_pairs = (p[2] @ p)[:, None] * p
    assert max_z_score(joint_frequencies(out.ids, 2), second_pairs.ravel(), n) < 5
    # The check has power: the drafter's own pairs are far from the samples.
    drafter_pairs = q[2][:, None] * q
    assert max_z_score(joint_frequencies(out.ids, 1), drafter_pairs.ravel(), n) > 30
    assert 0.05 < out.acceptance_rate < 0.8  # drafts were both kept and refused


# --- the acceptance rate and the target calls --------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_acceptance_rate_is_one_minus_total_variation(temperature):
    rng = np.random.default_rng(5)
    target_logits, drafter_logits = rng.normal(size=(2, VOCAB)) * 2
    p = np_softmax(target_logits, temperature)
    q = np_softmax(drafter_logits, temperature)
    alpha = np.minimum(p, q).sum()
    assert alpha == pytest.approx(1 - 0.5 * np.abs(p - q).sum())
    n, max_new_tokens, k = 3000, 9, 4
    out = speculative_generate(
        fixed_distribution_model(drafter_logits),
        fixed_distribution_model(target_logits),
        np.ones((n, 2), "int32"),
        max_new_tokens,
        num_draft_tokens=k,
        temperature=temperature,
        seed=1,
    )
    error = math.sqrt(alpha * (1 - alpha) / out.verified_tokens)
    assert abs(out.acceptance_rate - alpha) < 4 * error
    # Accepted per *proposed* draft is another, lower figure.
    assert out.accepted_tokens / out.draft_tokens < alpha - 4 * error
    mean, variance = np_expected_target_calls(alpha, max_new_tokens, k)
    error = math.sqrt(variance / n) / max_new_tokens
    assert abs(out.target_calls_per_token - mean / max_new_tokens) < 4 * error


def test_counts_add_up_and_the_rates_are_their_ratios(tables):
    target_table, drafter_table = tables
    out = speculative_generate(
        bigram_model(drafter_table),
        bigram_model(target_table),
        np.array([[1, 2, 3], [4, 5, 0]]),
        max_new_tokens=11,
        num_draft_tokens=3,
        seed=4,
        prompt_lengths=[3, 2],
    )
    assert isinstance(out, SpeculativeGeneration)
    assert out.new_tokens == 22
    assert out.new_tokens == out.accepted_tokens + out.target_calls
    assert out.accepted_tokens <= out.verified_tokens <= out.draft_tokens
    assert out.acceptance_rate == out.accepted_tokens / out.verified_tokens
    assert out.target_calls_per_token == out.target_calls / 22
    assert out.block_efficiency == pytest.approx(1 / out.target_calls_per_token)


# --- drafters that agree with the target -------------------------------------


@pytest.mark.parametrize("same_object", [True, False])
def test_a_drafter_equal_to_the_target_accepts_every_draft(tables, same_object):
    target = bigram_model(tables[0])
    drafter = target if same_object else bigram_model(tables[0])
    k = 3
    out = speculative_generate(
        drafter,
        target,
        np.array([[1, 2, 3], [4, 5, 0], [3, 0, 0]]),
        max_new_tokens=2 * (k + 1),
        num_draft_tokens=k,
        seed=2,
        prompt_lengths=[3, 2, 1],
    )
    assert out.acceptance_rate == 1.0
    assert out.accepted_tokens == out.draft_tokens == 3 * 2 * k
    assert out.target_calls_per_token == 1 / (k + 1)
    assert out.block_efficiency == k + 1


def test_greedy_drafter_with_the_target_argmax_accepts_all_and_gives_its_ids(
    tables,
):
    target_table = tables[0]
    # Other probabilities, the same argmax: accepted in full by greedy decoding.
    drafter_table = 3.0 * target_table + 1.0
    prompts = np.array([[1, 2, 3], [4, 5, 0]])
    k, max_new_tokens = 4, 10
    out = speculative_generate(
        bigram_model(drafter_table),
        bigram_model(target_table),
        prompts,
        max_new_tokens,
        num_draft_tokens=k,
        temperature=0,
        prompt_lengths=[3, 2],
    )
    assert out.acceptance_rate == 1.0
    assert out.target_calls == 2 * 2  # blocks of 5 tokens, 10 per row
    for row, n in enumerate([3, 2]):
        expected = np_greedy(lambda s: target_table[s], prompts[row, :n], 10)
        np.testing.assert_array_equal(out.ids[row, : n + 10], expected)
    # Sampling, the same drafter is refused some drafts: its q is not p.
    sampled = speculative_generate(
        bigram_model(drafter_table),
        bigram_model(target_table),
        prompts,
        max_new_tokens,
        num_draft_tokens=k,
        seed=0,
    )
    assert sampled.acceptance_rate < 1.0


def test_greedy_decoding_is_the_targets_own_with_the_target_calls_of_numpy():
    vocab = 12
    target, drafter = conv_model(vocab), conv_model(vocab)
    prompts = np.random.default_rng(0).integers(1, vocab, (3, 5))
    lengths = [5, 2, 3]
    k, max_new_tokens = 3, 9
    out = speculative_generate(
        drafter,
        target,
        prompts,
        max_new_tokens,
        num_draft_tokens=k,
        temperature=0,
        prompt_lengths=lengths,
    )
    calls = accepted = 0
    for row, n in enumerate(lengths):
        prompt = prompts[row, :n]
        expected = np_greedy(lambda s: np_conv_logits(target, s), prompt, 9)
        np.testing.assert_array_equal(out.ids[row, : n + 9], expected)
        row_calls, row_accepted = np_greedy_target_calls(
            lambda s: np_conv_logits(drafter, s),
            lambda s: np_conv_logits(target, s),
            prompt,
            max_new_tokens,
            k,
        )
        calls, accepted = calls + row_calls, accepted + row_accepted
    assert (out.target_calls, out.accepted_tokens) == (calls, accepted)
    assert 0 < accepted < out.draft_tokens  # some drafts kept, some refused


# --- the output ------------------------------------------------------------------


def test_mask_marks_the_generated_positions_and_pads_follow(tables):
    out = speculative_generate(
        bigram_model(tables[1]),
        bigram_model(tables[0]),
        np.array([[1, 2, 3], [4, 5, 5]]),
        max_new_tokens=6,
        seed=3,
        prompt_lengths=[3, 1],
    )
    assert out.ids.shape == out.mask.shape == (2, 9)
    np.testing.assert_array_equal(np.flatnonzero(out.mask[0]), np.arange(3, 9))
    np.testing.assert_array_equal(np.flatnonzero(out.mask[1]), np.arange(1, 7))
    np.testing.assert_array_equal(out.ids[0, :3], [1, 2, 3])
    np.testing.assert_array_equal(out.ids[1, :1], [4])
    np.testing.assert_array_equal(out.ids[1, 7:], 0)  # pad_token_id


def test_the_same_seed_gives_the_same_ids_and_another_seed_others(tables):
    models = bigram_model(tables[1]), bigram_model(tables[0])
    prompts = np.arange(8).reshape(4, 2) % VOCAB

    def ids(seed):
        return speculative_generate(*models, prompts, 12, seed=seed).ids

    np.testing.assert_array_equal(ids(7), ids(7))
    assert (ids(7) != ids(8)).any()


# --- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(drafter="gpt2"), TypeError, "`drafter` must be .* Received: drafter="),
        (dict(target=None), ValueError, "`target` is required"),
        (dict(prompts=np.ones((2, 3))), TypeError, "`prompts` must be .* float64"),
        (dict(prompts=np.ones(3, "int32")), ValueError, "prompts of shape \\(3,\\)"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens=0"),
        (dict(num_draft_tokens=0), ValueError, "num_draft_tokens=0"),
        (dict(num_draft_tokens=2.0), TypeError, "num_draft_tokens=2.0"),
        (dict(temperature=-1.0), ValueError, "temperature=-1.0"),
        (dict(seed=-1), ValueError, "seed=-1"),
        (dict(seed=1.5), TypeError, "seed=1.5"),
        (dict(prompt_lengths=[1]), ValueError, "prompt_lengths of shape \\(1,\\)"),
        (dict(prompt_lengths=[0, 3]), ValueError, "prompt_lengths=\\[0, 3\\]"),
        (dict(prompt_lengths=[1.0, 2.0]), TypeError, "prompt_lengths="),
        (dict(pad_token_id=-1), ValueError, "pad_token_id=-1"),
    ],
)
def test_bad_arguments_are_refused_naming_them(tables, kwargs, error, match):
    model = bigram_model(tables[0])
    arguments = dict(
        drafter=model, target=model, prompts=np.ones((2, 3), "int32"), max_new_tokens=2
    )
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        speculative_generate(**arguments)


def test_models_that_do_not_fit_are_refused(tables):
    target, prompts = bigram_model(tables[0]), np.ones((2, 3), "int32")
    other_vocabulary = bigram_model(np.zeros((VOCAB, VOCAB + 1)))
    with pytest.raises(ValueError, match="share one vocabulary.* 7 .* 6"):
        speculative_generate(other_vocabulary, target, prompts, 3)
    with pytest.raises(ValueError, match="`drafter` takes sequences of at most 5"):
        speculative_generate(conv_model(length=5), target, prompts, 3)
    # A fixed input length that fits sets the buffer's width.
    out = speculative_generate(conv_model(length=8), target, prompts, 3, seed=0)
    assert out.ids.shape == (2, 8)
    two_outputs = keras.Model(target.input, [target.output] * 2)
    with pytest.raises(ValueError, match="one \\(batch, time, vocab\\) tensor"):
        speculative_generate(two_outputs, target, prompts, 3)


# --- KerasHub ---------------------------------------------------------------------


def gpt2(keras_hub, noise, seed):
    """A tiny GPT-2 from a config, its weights perturbed to vary its output."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=32,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    rng = np.random.default_rng(seed)
    model.set_weights(
        [w + rng.normal(scale=noise, size=w.shape) for w in model.get_weights()]
    )
    return model


def full_buffer_next(model, calls=None):
    """KerasHub's `next(prompt, cache, index)` (and, with `calls`,
    `verify_next(prompt, cache, index, k)`) on the whole buffer, no cache."""
    ops = keras.ops

    def logits(prompt):
        return model(
            {"token_ids": prompt, "padding_mask": ops.ones_like(prompt, "bool")}
        )

    def next(prompt, cache, index):
        return logits(prompt)[:, index - 1], None, cache

    def verify_next(prompt, cache, index, k):
        calls.append(int(index))  # the sampler runs eagerly: once per call
        width = ops.shape(prompt)[1]
        positions = ops.minimum(ops.arange(k + 1) + index - 1, width - 1)
        return ops.take(logits(prompt), positions, axis=1), cache

    return next if calls is None else verify_next


@pytest.mark.skipif(backend.LEGACY, reason="KerasHub is Keras 3 only")
def test_keras_hub_speculative_sampler_agrees_on_greedy_ids_and_target_calls():
    keras_hub = pytest.importorskip("keras_hub")
    target = gpt2(keras_hub, noise=0.3, seed=1)
    drafter = gpt2(keras_hub, noise=0.3, seed=1)  # the target, perturbed
    drafter.set_weights(
        [
            w + np.random.default_rng(2).normal(scale=0.05, size=w.shape)
            for w in target.get_weights()
        ]
    )
    prompts = np.random.default_rng(0).integers(1, 16, (2, 4))
    lengths, k, max_new_tokens = [4, 2], 3, 8
    out = speculative_generate(
        drafter,
        target,
        prompts,
        max_new_tokens,
        num_draft_tokens=k,
        temperature=0,
        prompt_lengths=lengths,
    )
    # The target's own greedy decoding, through its key / value cache.
    width = 4 + max_new_tokens
    padding_mask = np.arange(width) < np.array(lengths)[:, None]
    token_ids = np.pad(prompts, [(0, 0), (0, max_new_tokens)]) * padding_mask
    target.compile(sampler="greedy")
    own = target.generate(
        {"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None
    )["token_ids"]
    sampler_calls = 0
    for row, n in enumerate(lengths):
        end = n + max_new_tokens
        np.testing.assert_array_equal(out.ids[row, :end], own[row, :end])
        # KerasHub's sampler on this row alone (it advances a batch by its
        # slowest row), with the target's calls counted.
        calls = []
        sampler = keras_hub.samplers.SpeculativeSampler(num_speculative_tokens=k)
        ids = sampler(
            full_buffer_next(target),
            keras.ops.convert_to_tensor(token_ids[row : row + 1, :end]),
            index=n,
            mask=padding_mask[row : row + 1, :end],
            draft_next=full_buffer_next(drafter),
            verify_next=full_buffer_next(target, calls),
        )
        np.testing.assert_array_equal(np.asarray(ids)[0], own[row, :end])
        sampler_calls += len(calls)
    assert out.target_calls == sampler_calls
    assert 0 < out.accepted_tokens < out.draft_tokens  # drafts kept and refused
