"""Aligning a teacher's and a student's tokenizations of one text.

The rule: student position `s` is paired with the (last) teacher position
whose token ends at the same UTF-8 byte offset of the text. The expected
index and weight arrays below are written by hand from the token ends; the
distillation through a `Distiller` is checked against ULD computed in numpy
(sort, pad, L1) on teacher logits gathered in numpy.
"""

import numpy as np
import pytest

import keras_kd as kd
from keras_kd import backend
from keras_kd.backend import keras
from keras_kd.lm import aligned as al
from keras_kd.lm import vocabularies as voc

TEXT = "hello world"
WORDS = ["hel", "lo", " wor", "ld"]  # ends 3, 5, 9, 11
COARSE = ["h", "e", "llo", " ", "world"]  # ends 1, 2, 5, 6, 11


def chars(text):
    """A character tokenizer: id = the codepoint."""
    return [(ord(c), c) for c in text]


def utf8_bytes(text):
    """A byte tokenizer: id = the byte."""
    return [(b, bytes([b])) for b in text.encode("utf-8")]


def fixed(pieces):
    """A tokenizer that returns `pieces` (ids 0, 1, ...) whatever the text."""
    return lambda text: [(i, p) for i, p in enumerate(pieces)]


def align(teacher, student, teacher_length=16, student_length=16, texts=(TEXT,)):
    return voc.align_tokenizations(
        list(texts), teacher, student, teacher_length, student_length
    )


# ---------------------------------------------------------------------------
# The rule, by hand
# ---------------------------------------------------------------------------


def test_word_pieces_pair_with_the_character_ending_where_they_end():
    a = align(chars, fixed(WORDS), student_length=4)
    np.testing.assert_array_equal(a.index, [[2, 4, 8, 10]])
    np.testing.assert_array_equal(a.weight, [[1, 1, 1, 1]])
    np.testing.assert_array_equal(a.student_ids, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(a.teacher_ids[0, :11], [ord(c) for c in TEXT])


def test_positions_without_a_teacher_token_ending_there_are_not_distilled():
    # 5 teacher tokens, 4 student tokens; only "lo" (end 5) and "ld" (end 11)
    # end where a teacher token does ("llo", "world").
    a = align(fixed(COARSE), fixed(WORDS), student_length=4)
    np.testing.assert_array_equal(a.index, [[0, 2, 0, 4]])
    np.testing.assert_array_equal(a.weight, [[0, 1, 0, 1]])


def test_a_character_student_pairs_only_where_a_word_piece_ends():
    a = align(fixed(WORDS), chars, student_length=11)
    np.testing.assert_array_equal(a.index, [[0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 3]])
    np.testing.assert_array_equal(a.weight, [[0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1]])


def test_zero_width_tokens_pair_by_their_offset_and_ties_take_the_last():
    def teacher(text):  # BOS, "ab", SEP (zero-width, after "ab"), "c"
        return [(1, ""), (5, "ab"), (2, ""), (6, "c")]

    def student(text):  # BOS, "a", "b", "c"
        return [(0, ""), (7, "a"), (8, "b"), (9, "c")]

    a = align(teacher, student, texts=["abc"], student_length=4)
    # BOS <-> BOS; "a" (end 1) has no partner; "b" (end 2) <-> SEP, the
    # last teacher token ending at 2; "c" <-> "c".
    np.testing.assert_array_equal(a.index, [[0, 0, 2, 3]])
    np.testing.assert_array_equal(a.weight, [[1, 0, 1, 1]])
    # A BOS on the student's side only is not paired.
    a = align(lambda t: [(5, "ab"), (6, "c")], student, texts=["abc"], student_length=4)
    np.testing.assert_array_equal(a.index, [[0, 0, 0, 1]])
    np.testing.assert_array_equal(a.weight, [[0, 0, 1, 1]])


def test_character_offsets_may_skip_text_and_count_in_bytes():
    def student(text):  # words without the space, as WordPiece reports them
        return [(0, 0, 5), (1, 6, 11)]

    a = align(chars, student, student_length=2)
    np.testing.assert_array_equal(a.index, [[4, 10]])
    np.testing.assert_array_equal(a.weight, [[1, 1]])
    # "é" is 2 bytes: a byte teacher's token ends mid-character at byte 4,
    # and the character student's "é" (offsets 3 to 4) ends at byte 5.
    a = align(utf8_bytes, lambda t: [(i, i, i + 1) for i in range(4)], texts=["café"])
    np.testing.assert_array_equal(a.index[0, :4], [0, 1, 2, 4])
    np.testing.assert_array_equal(a.weight[0], [1, 1, 1, 1] + [0] * 12)
    # The other way round: the student byte ending inside "é" has no partner.
    a = align(chars, utf8_bytes, texts=["café"], student_length=5)
    np.testing.assert_array_equal(a.index, [[0, 1, 2, 0, 3]])
    np.testing.assert_array_equal(a.weight, [[1, 1, 1, 0, 1]])


def test_positions_beyond_either_length_get_weight_0():
    # The teacher keeps "h", "e", "llo": "ld"'s partner "world" is cut off.
    a = align(fixed(COARSE), fixed(WORDS), teacher_length=3, student_length=6)
    np.testing.assert_array_equal(a.index, [[0, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(a.weight, [[0, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(a.teacher_ids, [[0, 1, 2]])
    np.testing.assert_array_equal(a.teacher_mask, [[1, 1, 1]])
    np.testing.assert_array_equal(a.student_ids, [[0, 1, 2, 3, 0, 0]])
    np.testing.assert_array_equal(a.student_mask, [[1, 1, 1, 1, 0, 0]])
    # The student keeps 2 positions.
    a = align(chars, fixed(WORDS), student_length=2)
    np.testing.assert_array_equal(a.index, [[2, 4]])
    np.testing.assert_array_equal(a.weight, [[1, 1]])
    # Rows of different lengths in one batch; an empty text is all padding.
    a = align(
        chars, chars, teacher_length=4, student_length=5, texts=["ab", "", "abcdef"]
    )
    np.testing.assert_array_equal(
        a.weight, [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]]
    )
    np.testing.assert_array_equal(
        a.index, [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 2, 3, 0]]
    )
    assert a.index.dtype == np.int32 and a.weight.dtype == np.float32


def test_with_vocabulary_gives_ids_to_plain_token_strings():
    tokenize = voc.with_vocabulary(
        lambda t: WORDS, {"hel": 7, "lo": 3, " wor": 1, "ld": 0}
    )
    a = align(chars, tokenize, student_length=4)
    np.testing.assert_array_equal(a.student_ids, [[7, 3, 1, 0]])
    np.testing.assert_array_equal(a.index, [[2, 4, 8, 10]])
    with pytest.raises(ValueError, match=r"no entry for the piece 'ld'"):
        voc.with_vocabulary(lambda t: WORDS, ["hel", "lo", " wor"])(TEXT)
    with pytest.raises(TypeError, match=r"`vocabulary` must be a dict"):
        voc.with_vocabulary(list, "abc")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "student, error, match",
    [
        (
            fixed(["hel", "lo", "world"]),
            ValueError,
            r"concatenate to the text.*'world'",
        ),
        (fixed(["hel", "lo"]), ValueError, r"spell only b'hello'"),
        (lambda t: WORDS, TypeError, r"plain token strings.*with_vocabulary"),
        (lambda t: np.array([1, 2]), TypeError, r"list of tokens.*keras_hub_tokenize"),
        (lambda t: [(0, 0, 5), (1, 0, 3)], ValueError, r"ends never decreasing"),
        (lambda t: [(0, 0, 12)], ValueError, r"0 <= start <= end <= len\(text\)"),
        (lambda t: [(0, "hello"), (1, 6, 11)], TypeError, r"mixed"),
        (lambda t: [(0.5, TEXT)], TypeError, r"token id 0.5"),
        (lambda t: [("x",)], TypeError, r"Expected `\(token_id, piece\)`"),
    ],
)
def test_bad_tokenizations_are_refused_with_the_text(student, error, match):
    with pytest.raises(error, match=match):
        align(chars, student)


def test_bad_arguments_are_refused():
    with pytest.raises(
        ValueError, match=r"`teacher_length` must be an integer .* at least 1"
    ):
        align(chars, chars, teacher_length=0)
    with pytest.raises(
        ValueError, match=r"`student_length` .* Received: student_length=-1"
    ):
        align(chars, chars, student_length=-1)
    with pytest.raises(TypeError, match=r"`teacher_length` must be an integer"):
        align(chars, chars, teacher_length=2.0)
    with pytest.raises(TypeError, match=r"a single str.*wrap it in a list"):
        voc.align_tokenizations(TEXT, chars, chars, 4, 4)
    with pytest.raises(TypeError, match=r"texts\[1\]=3"):
        voc.align_tokenizations(["a", 3], chars, chars, 4, 4)
    with pytest.raises(TypeError, match=r"`student_tokenize` must be a function"):
        voc.align_tokenizations(["a"], chars, {"a": 1}, 4, 4)
    with pytest.raises(ValueError, match=r"at least one text"):
        voc.align_tokenizations([], chars, chars, 4, 4)
    with pytest.raises(
        ValueError, match=r"`student_length` .* Received: student_length=0"
    ):
        al.aligned_dataset(["a"], chars, chars, 4, 0)
    with pytest.raises(TypeError, match=r"KerasHub ByteTokenizer"):
        voc.keras_hub_tokenize(chars)


# ---------------------------------------------------------------------------
# Training through the Distiller
# ---------------------------------------------------------------------------

CORPUS = [
    "the cat sat on the mat",
    "the dog ran to the cat",
    "a cat and a dog",
    "the mat is on the dog",
    "dogs and cats ran",
    "the cat ran",
]
# A hand-built word-piece vocabulary: whole words with their leading space,
# single characters as the fallback.
PIECES = ["the", " the", " cat", " dog", " mat", " sat", " ran", " on", " to"]
PIECES += sorted(set("".join(CORPUS)))


def word_pieces(text):
    """Greedy longest match over PIECES: the student's tokenizer."""
    tokens, at = [], 0
    while at < len(text):
        piece = max((p for p in PIECES if text.startswith(p, at)), key=len)
        tokens.append((PIECES.index(piece), piece))
        at += len(piece)
    return tokens


def np_uld(t, s):
    """ULD from Boizard et al.: sorted probabilities, zero-padded, L1."""

    def sorted_probs(z, size):
        p = np.exp(z - z.max(-1, keepdims=True))
        p = -np.sort(-p / p.sum(-1, keepdims=True), axis=-1)
        return np.concatenate([p, np.zeros(p.shape[:-1] + (size - p.shape[-1],))], -1)

    size = max(t.shape[-1], s.shape[-1])
    return np.abs(sorted_probs(t, size) - sorted_probs(s, size)).sum(-1)


def lm(vocab, width, name, activation=None, scale=0.05):
    """A position-wise token model; `scale` sets how peaked its outputs are."""
    inputs = keras.Input((None,), dtype="int32")
    init = keras.initializers.RandomNormal(stddev=min(1.0, scale), seed=2)
    h = keras.layers.Embedding(vocab, width, embeddings_initializer=init)(inputs)
    h = keras.layers.Dense(width, activation="tanh")(h)
    head = keras.initializers.RandomNormal(stddev=scale, seed=3)
    outputs = keras.layers.Dense(vocab, activation=activation, kernel_initializer=head)(
        h
    )
    return keras.Model(inputs, outputs, name=name)


def test_aligned_dataset_shifts_the_student_ids_and_weights_pairs_with_a_next_token():
    ds = al.aligned_dataset([TEXT], chars, fixed(WORDS), 16, 4, batch_size=None)
    x, y, weight = next(iter(ds))
    assert sorted(x) == ["index", "student_ids", "teacher_ids"]
    np.testing.assert_array_equal(x["student_ids"], [0, 1, 2, 3])
    np.testing.assert_array_equal(y, [1, 2, 3, 0])
    np.testing.assert_array_equal(x["index"], [2, 4, 8, 10])
    np.testing.assert_array_equal(weight, [1, 1, 1, 0])  # "ld" has no next token
    np.testing.assert_array_equal(x["teacher_ids"][:11], [ord(c) for c in TEXT])


def test_a_byte_teacher_distils_into_a_word_piece_student_with_uld():
    n = len(CORPUS)
    ds = al.aligned_dataset(CORPUS, utf8_bytes, word_pieces, 24, 8, batch_size=n)
    x, y, weight = next(iter(ds))
    x = {k: v.numpy() for k, v in x.items()}
    y, weight = y.numpy(), weight.numpy()
    # Word pieces are paired with the byte their text ends at; the pieces
    # end at character boundaries, so each real one that has a next token is.
    assert 0 < weight.sum() < weight.size
    teacher = lm(256, 16, "bytes", scale=2.0)  # confident: something to learn
    student = lm(len(PIECES), 8, "pieces")
    before = [w.copy() for w in teacher.get_weights()]
    d = kd.Distiller(
        al.aligned_teacher(teacher),
        student,
        teacher_inputs=["teacher_ids", "index"],
        student_inputs="student_ids",
    )
    d.compile(
        keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss=kd.losses.UniversalLogitDistance(),
        alpha=1.0,
    )
    logs = d.evaluate(
        x, y, sample_weight=weight, batch_size=n, verbose=0, return_dict=True
    )
    zt = teacher.predict(x["teacher_ids"], verbose=0).astype(np.float64)
    gathered = np.take_along_axis(zt, x["index"][..., None].astype(np.int64), axis=1)
    np.testing.assert_allclose(
        d.teacher.predict({k: x[k] for k in ("teacher_ids", "index")}, verbose=0),
        gathered,
        rtol=1e-5,
        atol=1e-6,
    )
    zs = student.predict(x["student_ids"], verbose=0).astype(np.float64)
    expected = (np_uld(gathered, zs) * weight).sum() / weight.sum()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    d.fit(ds, epochs=15, shuffle=False, verbose=0)  # the dataset as it comes
    after = d.evaluate(
        x, y, sample_weight=weight, batch_size=n, verbose=0, return_dict=True
    )
    assert after["distillation_loss"] < 0.7 * logs["distillation_loss"]
    for w, b in zip(teacher.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_aligned_teacher_gives_log_probabilities_of_a_softmax_teacher_and_saves(
    tmp_path,
):
    teacher = lm(12, 4, "soft", activation="softmax")
    aligned = al.aligned_teacher(teacher, ids_key="t", index_key="i")
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    index = np.array([[4, 0, 2], [1, 1, 3]])
    probs = teacher.predict(ids, verbose=0).astype(np.float64)
    expected = np.log(np.take_along_axis(probs, index[..., None], axis=1))
    got = aligned.predict({"t": ids, "i": index}, verbose=0)
    assert got.shape == (2, 3, 12) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    path = str(tmp_path / "aligned.keras")
    aligned.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict({"t": ids, "i": index}, verbose=0), got)
    with pytest.raises(ValueError, match=r"`ids_key` and `index_key` must differ"):
        al.aligned_teacher(teacher, ids_key="x", index_key="x")
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(5, 3)(inputs)
    two = keras.Model(inputs, [keras.layers.Dense(5)(h), keras.layers.Dense(5)(h)])
    with pytest.raises(ValueError, match=r"must have one output.* It has 2"):
        al.aligned_teacher(two)


def test_docstring_examples_run():
    import doctest

    assert kd.lm.align_tokenizations is voc.align_tokenizations
    result = doctest.testmod(voc)
    assert result.attempted >= 4 and result.failed == 0


# ---------------------------------------------------------------------------
# KerasHub tokenizers (Keras 3)
# ---------------------------------------------------------------------------

keras3_only = pytest.mark.skipif(backend.LEGACY, reason="KerasHub needs Keras 3")
UNICODE = "Café naïve"  # 10 characters, 12 bytes: "é" and "ï" take 2 each


@keras3_only
def test_keras_hub_byte_teacher_and_codepoint_student_on_non_ascii_text():
    keras_hub = pytest.importorskip("keras_hub")
    teacher = voc.keras_hub_tokenize(keras_hub.tokenizers.ByteTokenizer())
    student = voc.keras_hub_tokenize(keras_hub.tokenizers.UnicodeCodepointTokenizer())
    a = voc.align_tokenizations([UNICODE], teacher, student, 16, 12)
    # Lowercased: "café naïve". Byte ends of the characters: 1 2 3 5 6 7 8 10
    # 11 12, so each pairs with the byte before its end.
    np.testing.assert_array_equal(a.index[0, :10], [0, 1, 2, 4, 5, 6, 7, 9, 10, 11])
    np.testing.assert_array_equal(a.weight[0], [1] * 10 + [0, 0])
    np.testing.assert_array_equal(a.teacher_ids[0, :12], list("café naïve".encode()))
    np.testing.assert_array_equal(a.student_ids[0, :10], [ord(c) for c in "café naïve"])
    # Lowercasing that changes the layout ("ß" -> "ss") cannot give offsets.
    with pytest.raises(ValueError, match=r"'strasse'.*lowercase=False"):
        voc.align_tokenizations(["Straße"], teacher, student, 8, 8)
    exact = keras_hub.tokenizers.ByteTokenizer(lowercase=False)
    a = voc.align_tokenizations(["Straße"], voc.keras_hub_tokenize(exact), chars, 8, 6)
    np.testing.assert_array_equal(a.index, [[0, 1, 2, 3, 5, 6]])
    with pytest.raises(ValueError, match=r"sequence_length=8"):
        voc.keras_hub_tokenize(keras_hub.tokenizers.ByteTokenizer(sequence_length=8))


@keras3_only
def test_keras_hub_word_pieces_are_located_in_the_text():
    keras_hub = pytest.importorskip("keras_hub")
    vocabulary = ["[PAD]", "[UNK]", "caf", "##é", "na", "##ï", "##ve"]
    student = voc.keras_hub_tokenize(
        keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, lowercase=True)
    )
    teacher = voc.keras_hub_tokenize(keras_hub.tokenizers.ByteTokenizer())
    a = voc.align_tokenizations([UNICODE, "Café xyz naïve"], teacher, student, 16, 6)
    # caf | é | na | ï | ve end at bytes 3, 5, 8, 10, 12; [UNK] covers "xyz"
    # (bytes 6 to 9), and "na" then ends at 12, "ï" at 14, "ve" at 16.
    np.testing.assert_array_equal(
        a.student_ids, [[2, 3, 4, 5, 6, 0], [2, 3, 1, 4, 5, 6]]
    )
    np.testing.assert_array_equal(a.index, [[2, 4, 7, 9, 11, 0], [2, 4, 8, 11, 13, 15]])
    np.testing.assert_array_equal(a.weight, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])


@keras3_only
def test_keras_hub_computed_word_pieces_pair_with_the_same_text_prefix():
    keras_hub = pytest.importorskip("keras_hub")
    tf = pytest.importorskip("tensorflow")
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(CORPUS),
        60,
        reserved_tokens=["[PAD]", "[UNK]"],
    )
    word_piece = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary)
    a = voc.align_tokenizations(
        CORPUS, utf8_bytes, voc.keras_hub_tokenize(word_piece), 32, 16
    )
    for row in range(len(CORPUS)):
        pieces = [word_piece.id_to_token(int(i)) for i in a.student_ids[row]]
        real = int(a.student_mask[row].sum())
        np.testing.assert_array_equal(a.weight[row], a.student_mask[row])
        for s in range(real):
            # The teacher's bytes up to its paired position spell the text the
            # student's pieces up to s spell, spaces aside, and end on a piece.
            read = bytes(a.teacher_ids[row, : a.index[row, s] + 1].tolist()).decode()
            spelled = "".join(p.removeprefix("##") for p in pieces[: s + 1])
            assert read.replace(" ", "") == spelled and not read.endswith(" ")
