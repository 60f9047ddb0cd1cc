"""`init_from_teacher`: a student started from the teacher's blocks.

The models are tiny causal transformers named like the house character-level
LM (`examples/_charlm.py`): block `i` holds `{prefix}_ln_attention{i}`,
`{prefix}_mha{i}`, `{prefix}_ln_ff{i}`, `{prefix}_ff_in{i}` and
`{prefix}_ff_out{i}`; `{prefix}_embedding`, `{prefix}_ln_final` and
`{prefix}_logits` are outside the blocks.
"""

import itertools

import numpy as np
import pytest

from conftest import load_example, make_mlp
from keras_kd import backend
from keras_kd.backend import keras
from keras_kd.lm.from_teacher import init_from_teacher

VOCAB, LENGTH, WIDTH = 20, 6, 16
BLOCK_ROLES = ("ln_attention", "mha", "ln_ff", "ff_in", "ff_out")
OTHER_ROLES = ("embedding", "ln_final", "logits")


def forward(layer, tokens, block_indices):
    """The LM's computation, `layer(name)` giving each layer by its role."""
    h = layer("embedding")(tokens)
    for i in block_indices:
        a = layer(f"ln_attention{i}")(h)
        h = h + layer(f"mha{i}")(a, a, use_causal_mask=True)
        f = layer(f"ln_ff{i}")(h)
        h = h + layer(f"ff_out{i}")(layer(f"ff_in{i}")(f))
    return layer("logits")(layer("ln_final")(h))


def char_lm(prefix, blocks, vocab=VOCAB, width=WIDTH, ff=2, out_bias=True):
    """A tiny pre-LayerNorm causal LM whose layers are named `{prefix}_...`."""
    L = keras.layers

    def make(role):
        name = f"{prefix}_{role}"
        base = role.rstrip("0123456789")
        if base == "embedding":
            return L.Embedding(vocab, width, name=name)
        if base.startswith("ln"):
            return L.LayerNormalization(name=name)
        if base == "mha":
            return L.MultiHeadAttention(2, width // 2, name=name)
        if base == "ff_in":
            return L.Dense(ff * width, activation="gelu", name=name)
        if base == "ff_out":
            return L.Dense(width, use_bias=out_bias, name=name)
        return L.Dense(vocab, name=name)  # logits

    tokens = keras.Input((LENGTH,), dtype="int32")
    logits = forward(make, tokens, range(blocks))
    return randomized(keras.Model(tokens, logits, name=f"{prefix}_lm"))


_SEEDS = itertools.count()


def randomized(model):
    """`model` with every weight drawn anew, so that no two models (and no
    two layer norms) start equal and a copy shows."""
    rng = np.random.default_rng(next(_SEEDS))
    for weight in model.weights:
        weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))
    return model


def without_blocks(teacher, kept):
    """An independent reference: the teacher's own layers, only blocks `kept`."""
    tokens = keras.Input((LENGTH,), dtype="int32")
    logits = forward(lambda role: teacher.get_layer(f"t_{role}"), tokens, kept)
    return keras.Model(tokens, logits)


def values(model) -> dict:
    """`{layer name: [weight arrays]}` of the layers that hold weights."""
    return {
        layer.name: [np.array(w) for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }


def assert_layer_equal(student_weights, teacher_weights):
    assert len(student_weights) == len(teacher_weights)
    for s, t in zip(student_weights, teacher_weights):
        np.testing.assert_array_equal(s, t)


def assert_differ(a, b):
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (3, LENGTH)).astype("int32")


@pytest.mark.parametrize(
    "num_student, num_teacher, expected",
    [
        (2, 4, {0: 0, 1: 2}),
        (3, 6, {0: 0, 1: 2, 2: 4}),
        (2, 3, {0: 0, 1: 1}),
        (2, 2, {0: 0, 1: 1}),
    ],
)
def test_default_map_takes_every_other_block_from_block_0(
    num_student, num_teacher, expected
):
    report = init_from_teacher(
        char_lm("s", num_student, width=8), char_lm("t", num_teacher, width=8)
    )
    assert report["block_map"] == expected


def test_copied_weights_equal_the_teachers_mapped_blocks_and_other_layers():
    teacher, student = char_lm("t", 4), char_lm("s", 2)
    report = init_from_teacher(student, teacher)
    t, s = values(teacher), values(student)
    for i, j in ((0, 0), (1, 2)):
        for role in BLOCK_ROLES:
            assert_layer_equal(s[f"s_{role}{i}"], t[f"t_{role}{j}"])
    for role in OTHER_ROLES:
        assert_layer_equal(s[f"s_{role}"], t[f"t_{role}"])
    assert report["unchanged"] == [] and report["skipped"] == []
    assert len(report["copied"]) == len(student.weights)
    # Every pair is the student's layer i and the teacher's 2i, same weight.
    for s_path, t_path in report["copied"]:
        s_layer, s_weight = s_path.split("/", 1)
        t_layer, t_weight = t_path.split("/", 1)
        assert s_weight == t_weight
        if s_layer[-1].isdigit():
            assert t_layer == f"t{s_layer[1:-1]}{2 * int(s_layer[-1])}"
        else:
            assert t_layer == "t" + s_layer[1:]


@pytest.mark.parametrize("layer_map, kept", [(None, [0, 2]), ({0: 1, 1: 3}, [1, 3])])
def test_student_computes_the_teacher_without_its_unmapped_blocks(
    layer_map, kept, tokens
):
    teacher, student = char_lm("t", 4), char_lm("s", 2)
    reference = without_blocks(teacher, kept)
    before = np.array(student(tokens))
    init_from_teacher(student, teacher, layer_map=layer_map)
    after = np.array(student(tokens))
    np.testing.assert_allclose(after, np.array(reference(tokens)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(before, after)


@pytest.mark.parametrize(
    "layer_map",
    [{1: 3}, {"s_mha1": "t_ff_in3"}, lambda i: 3 if i == 1 else 0],
    ids=["index", "layer-name", "function"],
)
def test_an_explicit_map_copies_its_blocks_and_leaves_the_others(layer_map):
    teacher, student = char_lm("t", 4), char_lm("s", 2)
    before = values(student)
    report = init_from_teacher(student, teacher, layer_map=layer_map)
    t, s = values(teacher), values(student)
    for role in BLOCK_ROLES:
        assert_layer_equal(s[f"s_{role}1"], t[f"t_{role}3"])
    if callable(layer_map):  # the function maps block 0 too
        assert report["block_map"] == {0: 0, 1: 3}
        for role in BLOCK_ROLES:
            assert_layer_equal(s[f"s_{role}0"], t[f"t_{role}0"])
        return
    assert report["block_map"] == {1: 3}
    for role in BLOCK_ROLES:
        assert_layer_equal(s[f"s_{role}0"], before[f"s_{role}0"])
        assert_differ(s[f"s_{role}0"], t[f"t_{role}0"])
    for role in OTHER_ROLES:
        assert_layer_equal(s[f"s_{role}"], t[f"t_{role}"])
    block_0 = [
        path
        for path in report["unchanged"]
        if path.split("/")[0] in {f"s_{role}0" for role in BLOCK_ROLES}
    ]
    assert block_0 == report["unchanged"] and len(block_0) == sum(
        len(student.get_layer(f"s_{role}0").weights) for role in BLOCK_ROLES
    )


@pytest.mark.parametrize(
    "student_kwargs, named",
    [
        ({"ff": 1}, ["s_ff_in0/kernel", "(16, 16)", "t_ff_in0/kernel", "(16, 32)"]),
        ({"out_bias": False}, ["t_ff_out0/bias", "(16,)", "no match in the student"]),
    ],
    ids=["shape", "missing-weight"],
)
def test_a_block_mismatch_is_refused_with_names_and_shapes_and_nothing_copied(
    student_kwargs, named
):
    teacher, student = char_lm("t", 4), char_lm("s", 2, **student_kwargs)
    before = values(student)
    with pytest.raises(ValueError, match="nothing was copied") as error:
        init_from_teacher(student, teacher)
    for text in named:
        assert text in str(error.value)
    after = values(student)
    for name in before:  # the embeddings could have been copied: they were not
        assert_layer_equal(after[name], before[name])


def test_other_layers_of_other_shapes_are_skipped_and_reported(capsys):
    teacher, student = char_lm("t", 4), char_lm("s", 2, vocab=VOCAB + 4)
    before = values(student)
    report = init_from_teacher(student, teacher, verbose=True)
    t, s = values(teacher), values(student)
    assert [(a, b) for a, b, _ in report["skipped"]] == [
        ("s_embedding", "t_embedding"),
        ("s_logits", "t_logits"),
    ]
    assert "(24, 16)" in report["skipped"][0][2]
    assert "(20, 16)" in report["skipped"][0][2]
    for name in ("s_embedding", "s_logits"):
        assert_layer_equal(s[name], before[name])
    assert_layer_equal(s["s_ln_final"], t["t_ln_final"])
    assert_layer_equal(s["s_mha1"], t["t_mha2"])
    assert sorted(p.split("/")[0] for p in report["unchanged"]) == [
        "s_embedding",
        "s_logits",
        "s_logits",
    ]
    printed = capsys.readouterr().out
    assert "skipped s_embedding <- t_embedding" in printed


def test_the_house_char_lm_with_prefixes_t_and_s():
    charlm = load_example("language_model_distillation")._charlm
    teacher = randomized(charlm.char_lm(VOCAB, LENGTH, 4, WIDTH, 2, prefix="t"))
    student = randomized(charlm.char_lm(VOCAB, LENGTH, 2, WIDTH, 2, prefix="s"))
    report = init_from_teacher(student, teacher)
    assert report["block_map"] == {0: 0, 1: 2} and report["unchanged"] == []
    t, s = values(teacher), values(student)
    for name in ("positions", "embedding", "ln_final", "logits", "mha1", "ff_in1"):
        teacher_name = "t_" + (name[:-1] + "2" if name[-1] == "1" else name)
        assert_layer_equal(s["s_" + name], t[teacher_name])


class Block(keras.layers.Layer):
    """A residual feed-forward block held in one layer."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.LayerNormalization()
        self.dense = keras.layers.Dense(width)

    def call(self, x):
        return x + self.dense(self.norm(x))


def stacked(blocks, names=None):
    """A Functional model of `blocks` `Block`s between two Dense layers."""
    x = inputs = keras.Input((4,))
    x = keras.layers.Dense(8)(x)
    for i in range(blocks):
        x = Block(8, name=None if names is None else names.format(i))(x)
    return randomized(keras.Model(inputs, keras.layers.Dense(3)(x)))


@pytest.mark.parametrize(
    "blocks, names",
    [
        (Block, None),
        (r"layer_(\d+)_block", "layer_{}_block"),
        (r"(\d+)-(?P<index>\d+)", "7-{}"),
        (
            lambda layer: int(layer.name[5:]) if layer.name[:5] == "unit_" else None,
            "unit_{}",
        ),
    ],
    ids=["layer-class", "regex", "regex-named-group", "function"],
)
def test_blocks_found_by_class_regex_or_function_copy_by_position(blocks, names):
    teacher, student = stacked(4, names), stacked(2, names)
    report = init_from_teacher(student, teacher, blocks=blocks)
    assert report["block_map"] == {0: 0, 1: 2}
    t_blocks = [layer for layer in teacher.layers if isinstance(layer, Block)]
    s_blocks = [layer for layer in student.layers if isinstance(layer, Block)]
    for s_block, t_block in zip(s_blocks, t_blocks[::2]):
        assert_layer_equal(
            [np.array(w) for w in s_block.weights],
            [np.array(w) for w in t_block.weights],
        )
    # Outside the blocks the automatic names (`dense`, `dense_1`...) differ:
    # nothing pairs them, and they are left as they were.
    assert len(report["unchanged"]) == 4


def test_automatic_names_are_not_blocks_by_default():
    with pytest.raises(ValueError, match="Found no blocks in `student`"):
        init_from_teacher(stacked(2), stacked(4))


def test_bad_arguments_are_refused_with_what_was_received():
    teacher, student = char_lm("t", 4), char_lm("s", 2)
    with pytest.raises(TypeError, match="`student`"):
        init_from_teacher("student", teacher)
    with pytest.raises(TypeError, match="`teacher`"):
        init_from_teacher(student, 3)
    with pytest.raises(ValueError, match="two different models"):
        init_from_teacher(student, student)
    with pytest.raises(ValueError, match="maps student block 2, but `student` has 2"):
        init_from_teacher(student, teacher, layer_map={2: 0})
    with pytest.raises(ValueError, match="teacher block 4, but `teacher` has 4"):
        init_from_teacher(student, teacher, layer_map={0: 4})
    with pytest.raises(ValueError, match="'t_nope', which is no layer of a block"):
        init_from_teacher(student, teacher, layer_map={0: "t_nope"})
    with pytest.raises(ValueError, match="'t_embedding', which is no layer"):
        init_from_teacher(student, teacher, layer_map={0: "t_embedding"})
    with pytest.raises(ValueError, match="maps student block 1 twice"):
        init_from_teacher(student, teacher, layer_map={1: 0, "s_mha1": 2})
    with pytest.raises(TypeError, match="layer_map='uniform'"):
        init_from_teacher(student, teacher, layer_map="uniform")
    with pytest.raises(TypeError, match="`layer_map` must be an integer"):
        init_from_teacher(student, teacher, layer_map={0: 1.5})
    with pytest.raises(TypeError, match="blocks=42"):
        init_from_teacher(student, teacher, blocks=42)
    with pytest.raises(ValueError, match="must have a group"):
        init_from_teacher(student, teacher, blocks=r"s_mha\d")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        init_from_teacher(student, teacher, blocks="(")
    with pytest.raises(TypeError, match="`verbose`"):
        init_from_teacher(student, teacher, verbose="yes")
    with pytest.raises(ValueError, match="Found no blocks in `teacher`"):
        init_from_teacher(student, make_mlp(4))
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no weights yet"):
        init_from_teacher(unbuilt, teacher)


def test_blocks_numbered_with_a_gap_are_refused():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="t_a0")(inputs)
    x = keras.layers.Dense(4, name="t_a2")(x)
    with pytest.raises(ValueError, match=r"numbered 0, 1, \.\.\. without gaps"):
        init_from_teacher(char_lm("s", 2), keras.Model(inputs, x))


# KerasHub (Keras 3 only), built from a config: nothing is downloaded.


def gpt2(layers, width=32, vocab=64):
    import keras_hub

    return randomized(
        keras_hub.models.GPT2Backbone(
            vocabulary_size=vocab,
            num_layers=layers,
            num_heads=2,
            hidden_dim=width,
            intermediate_dim=2 * width,
            max_sequence_length=32,
        )
    )


@pytest.mark.skipif(backend.LEGACY, reason="KerasHub is Keras 3 only")
def test_keras_hub_backbone_and_causal_lm_take_every_other_transformer_layer():
    keras_hub = pytest.importorskip("keras_hub")
    teacher = keras_hub.models.GPT2CausalLM(backbone=gpt2(4), preprocessor=None)
    student = gpt2(2)
    report = init_from_teacher(student, teacher)
    assert report["block_map"] == {0: 0, 1: 2} and report["unchanged"] == []
    t_layers = teacher.backbone.transformer_layers
    for s_layer, t_layer in zip(student.transformer_layers, (t_layers[0], t_layers[2])):
        assert_layer_equal(
            [np.array(w) for w in s_layer.weights],
            [np.array(w) for w in t_layer.weights],
        )
    for name in ("token_embedding", "position_embedding", "layer_norm"):
        assert_layer_equal(
            [np.array(w) for w in student.get_layer(name).weights],
            [np.array(w) for w in teacher.backbone.get_layer(name).weights],
        )
    # A causal LM as the student, a dict by layer name.
    causal = keras_hub.models.GPT2CausalLM(backbone=gpt2(2), preprocessor=None)
    report = init_from_teacher(
        causal,
        teacher.backbone,
        layer_map={"transformer_layer_1": "transformer_layer_3"},
    )
    assert report["block_map"] == {1: 3}
    assert_layer_equal(
        [np.array(w) for w in causal.backbone.transformer_layers[1].weights],
        [np.array(w) for w in t_layers[3].weights],
    )


@pytest.mark.skipif(backend.LEGACY, reason="KerasHub is Keras 3 only")
def test_keras_hub_narrower_student_is_refused_and_left_unchanged():
    pytest.importorskip("keras_hub")
    teacher, student = gpt2(4), gpt2(2, width=16)
    before = [np.array(w) for w in student.weights]
    with pytest.raises(ValueError) as error:
        init_from_teacher(student, teacher)
    message = str(error.value)
    assert "`transformer_layer_0/self_attention/query/kernel` (16, 2, 8)" in message
    assert "`transformer_layer_0/self_attention/query/kernel` (32, 2, 16)" in message
    assert_layer_equal([np.array(w) for w in student.weights], before)
