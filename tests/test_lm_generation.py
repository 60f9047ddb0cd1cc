"""`kd.lm.generate` against numpy references, on tiny causal models.

The references decode each row on its own, in float64 numpy, from the
models' weights: a bigram model (Embedding + Dense, no mixing across time),
a causal convolution (each position sees the two tokens before it), and a
model whose logits ignore its input (a fixed distribution, to check the
sampling frequencies, top-k and the nucleus). KerasHub's own greedy
generation is the reference for its `GPT2CausalLM`.
"""

import numpy as np
import pytest

from conftest import np_softmax
from keras_kd import backend
from keras_kd.backend import keras, tf
from keras_kd.lm import generate
from keras_kd.lm.generation import Generation

VOCAB = 12


# --- models and their numpy references ---------------------------------------


def bigram_model():
    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, 8)(inputs)
    return keras.Model(inputs, keras.layers.Dense(VOCAB)(hidden))


def np_bigram_logits(model, tokens):
    embeddings, kernel, bias = model.get_weights()
    return embeddings[np.asarray(tokens)].astype(np.float64) @ kernel + bias


def conv_model(length=None):
    inputs = keras.Input((length,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, 8)(inputs)
    hidden = keras.layers.Conv1D(8, 3, padding="causal", activation="tanh")(hidden)
    return keras.Model(inputs, keras.layers.Dense(VOCAB)(hidden))


def np_conv_logits(model, tokens):
    """Logits at every position: position t sees tokens t-2, t-1 and t."""
    embeddings, conv_kernel, conv_bias, kernel, bias = (
        w.astype(np.float64) for w in model.get_weights()
    )
    x = embeddings[np.asarray(tokens)]
    padded = np.concatenate([np.zeros((2, x.shape[1])), x])
    steps = len(tokens)
    hidden = sum(padded[k : k + steps] @ conv_kernel[k] for k in range(3))
    return np.tanh(hidden + conv_bias) @ kernel + bias


def np_greedy(logits_fn, prompt, max_new_tokens):
    """Decodes one row alone: the prompt, then argmax of the last logits."""
    sequence = list(prompt)
    for _ in range(max_new_tokens):
        sequence.append(int(np.argmax(logits_fn(sequence)[-1])))
    return sequence


def fixed_distribution_model(logits):
    """Logits that ignore the input: every step samples from `logits`."""
    inputs = keras.Input((None,), dtype="int32")
    layer = keras.layers.Embedding(VOCAB, VOCAB)
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([np.tile(np.asarray(logits, np.float32), (VOCAB, 1))])
    return model


def np_nucleus(probabilities, top_p):
    """The smallest set of most likely tokens whose probability >= top_p."""
    order = np.argsort(-probabilities, kind="stable")
    total = np.cumsum(probabilities[order])
    return set(order[: int(np.searchsorted(total, top_p)) + 1].tolist())


def frequencies(ids, mask):
    tokens = np.asarray(ids)[np.asarray(mask)]
    return np.bincount(tokens, minlength=VOCAB) / tokens.size


LOGITS = np.array([2.0, 1.5, 1.2, 1.0, 0.5, 0.2, 0.0, -0.3, -0.5, -1.0, -2.0, -3.0])


@pytest.fixture
def prompts():
    """Four prompts of lengths 3, 1, 5, 2 with junk (not pad) after each."""
    rng = np.random.default_rng(0)
    return rng.integers(1, VOCAB, (4, 5)), np.array([3, 1, 5, 2])


# --- decoding against numpy ----------------------------------------------------------


def test_greedy_bigram_matches_numpy_token_by_token():
    model = bigram_model()
    rows = np.random.default_rng(1).integers(0, VOCAB, (3, 4))
    out = generate(model, rows, max_new_tokens=6, temperature=0.0)
    assert isinstance(out, Generation)
    assert out.ids.dtype == tf.int32 and out.mask.dtype == tf.bool
    expected = [np_greedy(lambda s: np_bigram_logits(model, s), r, 6) for r in rows]
    np.testing.assert_array_equal(out.ids.numpy(), np.array(expected))


def test_greedy_causal_conv_matches_numpy_with_a_length_per_row(prompts):
    model = conv_model()
    tokens, lengths = prompts
    out = generate(model, tokens, 4, temperature=0, prompt_lengths=lengths)
    ids, mask = out.ids.numpy(), out.mask.numpy()
    assert ids.shape == mask.shape == (4, 5 + 4)
    for row, n in enumerate(lengths):
        logits_fn = lambda s: np_conv_logits(model, s)
        expected = np_greedy(logits_fn, tokens[row, :n], 4)
        np.testing.assert_array_equal(ids[row, : n + 4], expected)
        np.testing.assert_array_equal(ids[row, n + 4 :], 0)  # pads after its end
        np.testing.assert_array_equal(np.flatnonzero(mask[row]), np.arange(n, n + 4))


def test_padding_after_a_row_never_changes_its_continuation(prompts):
    model = conv_model()
    tokens, lengths = prompts
    together = generate(model, tokens, 5, temperature=0, prompt_lengths=lengths).ids
    for row, n in enumerate(lengths):
        alone = generate(model, tokens[row : row + 1, :n], 5, temperature=0).ids
        np.testing.assert_array_equal(together[row, : n + 5], alone[0])
    # Sampled rows too: the same row with other rows (of other lengths, with
    # other junk after them) beside it draws the same tokens.
    other = np.random.default_rng(5).integers(1, VOCAB, (4, 5))
    other[0, :3] = tokens[0, :3]
    kwargs = dict(max_new_tokens=5, seed=3)
    first = generate(model, tokens, prompt_lengths=lengths, **kwargs).ids
    second = generate(model, other, prompt_lengths=[3, 5, 1, 4], **kwargs).ids
    np.testing.assert_array_equal(first[0], second[0])


def test_mask_is_true_exactly_at_generated_positions_and_pads_follow():
    model = bigram_model()
    tokens = np.array([[3, 4, 5], [6, 7, 8]])
    out = generate(model, tokens, 2, prompt_lengths=[1, 3], pad_token_id=11, length=8)
    expected_mask = np.zeros((2, 8), bool)
    expected_mask[0, 1:3] = expected_mask[1, 3:5] = True
    np.testing.assert_array_equal(out.mask.numpy(), expected_mask)
    ids = out.ids.numpy()
    np.testing.assert_array_equal(ids[0, 3:], 11)
    np.testing.assert_array_equal(ids[1, 5:], 11)
    np.testing.assert_array_equal(ids[0, :1], [3])  # the junk after it is gone
    np.testing.assert_array_equal(ids[1, :3], [6, 7, 8])


# --- randomness ----------------------------------------------------------------------


def test_the_same_seed_gives_the_same_ids_and_another_seed_others():
    model = conv_model()
    tokens = np.ones((4, 2), "int32")
    kwargs = dict(max_new_tokens=12, temperature=2.0)
    first = generate(model, tokens, seed=7, **kwargs).ids.numpy()
    again = generate(model, tokens, seed=7, **kwargs).ids.numpy()
    other = generate(model, tokens, seed=8, **kwargs).ids.numpy()
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    # An int seed s is the stateless seed (0, s).
    pair = generate(model, tokens, seed=np.array([0, 7]), **kwargs).ids.numpy()
    np.testing.assert_array_equal(first, pair)


def test_no_seed_draws_fresh_samples():
    model = fixed_distribution_model(np.zeros(VOCAB))  # uniform
    tokens = np.ones((4, 1), "int32")
    first = generate(model, tokens, 16).ids.numpy()
    second = generate(model, tokens, 16).ids.numpy()
    assert (first != second).any()


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampling_frequencies_follow_softmax_at_the_temperature(temperature):
    model = fixed_distribution_model(LOGITS)
    out = generate(model, np.ones((1000, 1), "int32"), 4, temperature, seed=0)
    expected = np_softmax(LOGITS, temperature)
    # 4000 draws: a standard error below 0.008 on each frequency.
    np.testing.assert_allclose(frequencies(*out), expected, atol=0.03)
    # Each step draws afresh: two steps of a row differ as often as two
    # independent draws do.
    ids = out.ids.numpy()
    differ = np.mean(ids[:, 1:4] != ids[:, 2:5])
    assert differ == pytest.approx(1 - np.sum(expected**2), abs=0.04)


def test_top_k_never_emits_a_token_outside_the_top_k():
    logits = np.random.default_rng(2).permutation(LOGITS)
    model = fixed_distribution_model(logits)
    out = generate(model, np.ones((1000, 1), "int32"), 4, top_k=3, seed=1)
    top = np.argsort(-logits)[:3]
    expected = np.zeros(VOCAB)
    expected[top] = np_softmax(logits[top])
    assert set(np.unique(out.ids.numpy()[out.mask.numpy()])) == set(top.tolist())
    np.testing.assert_allclose(frequencies(*out), expected, atol=0.03)


@pytest.mark.parametrize("top_p", [0.5, 0.8])
def test_top_p_never_emits_a_token_outside_the_nucleus(top_p):
    logits = np.random.default_rng(3).permutation(LOGITS)
    model = fixed_distribution_model(logits)
    out = generate(model, np.ones((1000, 1), "int32"), 4, top_p=top_p, seed=2)
    probabilities = np_softmax(logits)
    nucleus = sorted(np_nucleus(probabilities, top_p))
    assert set(np.unique(out.ids.numpy()[out.mask.numpy()])) == set(nucleus)
    expected = np.zeros(VOCAB)
    expected[nucleus] = probabilities[nucleus] / probabilities[nucleus].sum()
    np.testing.assert_allclose(frequencies(*out), expected, atol=0.03)


def test_top_p_applies_to_the_top_k_renormalised():
    logits = np.random.default_rng(4).permutation(LOGITS)
    model = fixed_distribution_model(logits)
    out = generate(model, np.ones((500, 1), "int32"), 4, top_k=4, top_p=0.7, seed=3)
    top = np.argsort(-logits)[:4]
    renormalised = np.zeros(VOCAB)
    renormalised[top] = np_softmax(logits[top])
    nucleus = np_nucleus(renormalised, 0.7)
    assert nucleus != np_nucleus(np_softmax(logits), 0.7)  # the test can tell
    assert set(np.unique(out.ids.numpy()[out.mask.numpy()])) == nucleus


def test_a_tiny_top_p_keeps_the_most_likely_token():
    model = conv_model()
    tokens = np.random.default_rng(6).integers(0, VOCAB, (3, 2))
    greedy = generate(model, tokens, 5, temperature=0).ids.numpy()
    nucleus = generate(model, tokens, 5, top_p=1e-6, seed=4).ids.numpy()
    np.testing.assert_array_equal(nucleus, greedy)


# --- compiled -------------------------------------------------------------------------


def test_inside_a_tf_function_with_a_tensor_seed_matches_eager(prompts):
    model = conv_model()
    tokens, lengths = prompts
    kwargs = dict(max_new_tokens=6, temperature=1.5, top_k=8)

    @tf.function
    def traced(tokens, lengths, seed):
        out = generate(model, tokens, prompt_lengths=lengths, seed=seed, **kwargs)
        return out.ids, out.mask

    seed = tf.constant([3, 9])
    ids, mask = traced(tf.constant(tokens), tf.constant(lengths), seed)
    eager = generate(model, tokens, prompt_lengths=lengths, seed=seed, **kwargs)
    np.testing.assert_array_equal(ids.numpy(), eager.ids.numpy())
    np.testing.assert_array_equal(mask.numpy(), eager.mask.numpy())


def test_compiles_with_xla_and_decodes_greedily_as_numpy(prompts):
    model = conv_model()
    tokens, lengths = prompts

    @tf.function(jit_compile=True)
    def traced(tokens, seed):
        greedy = generate(model, tokens, 3, temperature=0.0, prompt_lengths=lengths)
        sampled = generate(model, tokens, 3, top_p=0.9, top_k=5, seed=seed)
        return greedy.ids, sampled.ids

    greedy, sampled = traced(tf.constant(tokens), tf.constant([1, 2]))
    for row, n in enumerate(lengths):
        expected = np_greedy(lambda s: np_conv_logits(model, s), tokens[row, :n], 3)
        np.testing.assert_array_equal(greedy.numpy()[row, : n + 3], expected)
    _, again = traced(tf.constant(tokens), tf.constant([1, 2]))
    np.testing.assert_array_equal(sampled.numpy(), again.numpy())


# --- widths ---------------------------------------------------------------------------


def test_a_model_with_a_fixed_input_length_gets_a_buffer_of_that_width(prompts):
    model = conv_model(length=10)
    tokens, lengths = prompts
    out = generate(model, tokens, 4, temperature=0, prompt_lengths=lengths)
    assert out.ids.shape == (4, 10)
    for row, n in enumerate(lengths):
        expected = np_greedy(lambda s: np_conv_logits(model, s), tokens[row, :n], 4)
        np.testing.assert_array_equal(out.ids.numpy()[row, : n + 4], expected)
    with pytest.raises(ValueError, match=r"input_shape.*max_new_tokens=6"):
        generate(model, tokens, 6)  # 5 + 6 > 10
    with pytest.raises(ValueError, match=r"`length`.*Received: length=12"):
        generate(model, tokens, 4, length=12)


def test_length_sets_the_width_and_refuses_a_short_one():
    model = bigram_model()
    tokens = np.ones((2, 3), "int32")
    assert generate(model, tokens, 2, length=9).ids.shape == (2, 9)
    with pytest.raises(ValueError, match=r"`length`.*Received: length=4"):
        generate(model, tokens, 2, length=4)


# --- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_new_tokens": 0}, ValueError, "`max_new_tokens`.*max_new_tokens=0"),
        ({"max_new_tokens": 2.0}, TypeError, "`max_new_tokens`.*max_new_tokens=2.0"),
        ({"temperature": -0.5}, ValueError, "`temperature`.*temperature=-0.5"),
        ({"temperature": "hot"}, TypeError, "`temperature`.*temperature='hot'"),
        ({"top_k": 0}, ValueError, "`top_k`.*top_k=0"),
        ({"top_k": 2.5}, TypeError, "`top_k`.*top_k=2.5"),
        ({"top_p": 0.0}, ValueError, r"`top_p`.*\(0.0, 1.0\].*top_p=0.0"),
        ({"top_p": 1.5}, ValueError, "`top_p`.*top_p=1.5"),
        ({"seed": -1}, ValueError, "`seed`.*seed=-1"),
        ({"seed": 1.5}, TypeError, "`seed`.*seed=1.5"),
        ({"seed": [1, 2, 3]}, ValueError, r"`seed`.*shape \(3,\)"),
        ({"prompt_lengths": [0, 2]}, ValueError, r"`prompt_lengths`.*\[0, 2\]"),
        ({"prompt_lengths": [4, 2]}, ValueError, r"`prompt_lengths`.*\[4, 2\]"),
        ({"prompt_lengths": [1, 2, 3]}, ValueError, r"`prompt_lengths`.*\(3,\)"),
        ({"prompt_lengths": [1.0, 2.0]}, TypeError, "`prompt_lengths`.*float"),
        ({"pad_token_id": -1}, ValueError, "`pad_token_id`.*pad_token_id=-1"),
        ({"prompts": np.ones((2, 3))}, TypeError, "`prompts`.*float64"),
        ({"prompts": np.ones(3, "int32")}, ValueError, r"`prompts`.*\(3,\)"),
        ({"model": "gpt"}, TypeError, "`model`.*model='gpt'"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, error, match):
    arguments = dict(
        model=bigram_model(), prompts=np.ones((2, 3), "int32"), max_new_tokens=2
    )
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        generate(**arguments)


def test_a_model_without_one_sequence_of_logits_is_refused():
    inputs = keras.Input((None,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(5, 4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5)(pooled))
    with pytest.raises(ValueError, match=r"`model`.*\(batch, time, vocab\)"):
        generate(model, np.ones((2, 3), "int32"), 2)


# --- KerasHub -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


@pytest.mark.skipif(backend.LEGACY, reason="KerasHub is Keras 3 only")
def test_keras_hub_causal_lm_decodes_greedily_as_its_own_generate(gpt2):
    tokens = np.random.default_rng(7).integers(1, 64, (3, 6))
    lengths = np.array([6, 2, 4])
    sampler = gpt2.sampler
    out = generate(gpt2, tokens, 5, temperature=0, prompt_lengths=lengths)
    assert gpt2.sampler is sampler  # ours was only lent to generate_step
    # KerasHub's greedy generation fills every position after each prompt;
    # the first 5 of them are the continuation.
    padding_mask = np.arange(11) < lengths[:, None]
    token_ids = np.pad(tokens, [(0, 0), (0, 5)]) * padding_mask
    gpt2.compile(sampler="greedy")
    try:
        reference = gpt2.generate(
            {"token_ids": token_ids, "padding_mask": padding_mask},
            stop_token_ids=None,
        )["token_ids"]
    finally:
        gpt2.compile()
    ids, mask = out.ids.numpy(), out.mask.numpy()
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(ids[row, : n + 5], reference[row, : n + 5])
        np.testing.assert_array_equal(ids[row, n + 5 :], 0)
        np.testing.assert_array_equal(np.flatnonzero(mask[row]), np.arange(n, n + 5))


@pytest.mark.skipif(backend.LEGACY, reason="KerasHub is Keras 3 only")
def test_keras_hub_causal_lm_samples_reproducibly_and_in_a_tf_function(gpt2):
    tokens = np.random.default_rng(8).integers(1, 64, (2, 4))
    kwargs = dict(max_new_tokens=6, top_k=10, prompt_lengths=[4, 1])
    first = generate(gpt2, tokens, seed=5, **kwargs).ids.numpy()
    np.testing.assert_array_equal(first, generate(gpt2, tokens, seed=5, **kwargs).ids)
    assert (first != generate(gpt2, tokens, seed=6, **kwargs).ids.numpy()).any()

    @tf.function
    def traced(tokens, seed):
        return generate(gpt2, tokens, seed=seed, **kwargs).ids

    in_graph = traced(tf.constant(tokens), tf.constant([0, 5]))
    np.testing.assert_array_equal(in_graph, first)
    with pytest.raises(ValueError, match="max_sequence_length"):
        generate(gpt2, tokens, 13)  # 4 + 13 > 16
