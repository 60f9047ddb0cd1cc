"""A teacher and a student with different tokenizers: positions aligned by text.

`kd.losses.UniversalLogitDistance` compares a teacher's and a student's
distributions over different vocabularies, position by position. When the
two tokenize the same text differently (a byte-level teacher, a word-piece
student), their positions must first be paired. This module pairs them by
the text both tokenizations came from.

**The rule.** Each token covers a span of the text, and what matters is
where it *ends*, measured in UTF-8 bytes from the start of the text (so
that a byte tokenizer, whose tokens may end inside a character, and a
codepoint or word-piece tokenizer are measured in one unit). A causal
language model at a position has read the text up to the end of that
position's token. Student position `s` is paired with the teacher position
whose token ends at *the same offset* as the student's token: both have then
read exactly the same text and both predict what comes next. If several
teacher tokens end there (zero-width tokens, e.g. a BOS marker before any
text), the last of them is taken. A student position with no teacher token
ending at the same offset among the teacher's first `teacher_length`
positions, or past the student's real tokens, is not paired: its weight
is 0 and it is not distilled. A zero-width BOS token on both sides (end
offset 0) is paired; on one side only, it is not.

For "hello world", a teacher tokenizing into `["h", "e", "llo", " ",
"world"]` (ends 1, 2, 5, 6, 11) and a student into `["hel", "lo", " wor",
"ld"]` (ends 3, 5, 9, 11) pair student positions 1 and 3 with teacher
positions 2 and 4 ("llo", "world"); student positions 0 and 2 ("hel",
" wor") have no partner, since no teacher token ends at offset 3 or 9.

**Tokenizers.** A tokenizer is a function `text -> tokens`, each token
either `(token_id, piece)`, where the pieces (`str`, or `bytes` for tokens
that may split a character) concatenate to the text exactly, or
`(token_id, start, end)` with character offsets into the text (Python string
indices; ends never decreasing), as e.g. Hugging Face's
`return_offsets_mapping` gives them. `with_vocabulary` turns a function
returning plain token strings into one; `keras_hub_tokenize` does it for
KerasHub's `ByteTokenizer`, `UnicodeCodepointTokenizer` and
`WordPieceTokenizer` (Keras 3; it lives in the package's private
`_keras_hub_tokens.py` and is re-exported here).

**Training.** `align_tokenizations` gives both sequences of ids, the gather
index and the weights; `keras_kd.lm.aligned` turns them into a teacher and
a dataset to train on.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from keras_kd import _utils
from keras_kd.lm._keras_hub_tokens import keras_hub_tokenize


class TokenAlignment(NamedTuple):
    """What `align_tokenizations` returns, numpy arrays with one row per text.

    Attributes:
        teacher_ids: `(batch, teacher_length)` int32, the teacher's token
            ids, truncated or padded with 0.
        student_ids: `(batch, student_length)` int32, the student's, likewise.
        index: `(batch, student_length)` int32: for each student position,
            the teacher position it is paired with (0 where there is none).
        weight: `(batch, student_length)` float32: 1 where the student
            position is a real token paired with a teacher position, else 0.
        teacher_mask: `(batch, teacher_length)` float32, 1 at real tokens.
        student_mask: `(batch, student_length)` float32, 1 at real tokens.
    """

    teacher_ids: np.ndarray
    student_ids: np.ndarray
    index: np.ndarray
    weight: np.ndarray
    teacher_mask: np.ndarray
    student_mask: np.ndarray


# ---------------------------------------------------------------------------
# Tokens to end offsets
# ---------------------------------------------------------------------------


def _check_id(value, argument: str, text: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Argument `{argument}` returned a token id {value!r} of type "
            f"{type(value).__name__} for the text {text!r}. Expected integer ids."
        )
    return int(value)


def _form(token, argument: str, text: str) -> int:
    """2 for `(id, piece)`, 3 for `(id, start, end)`; raises otherwise."""
    if isinstance(token, (str, bytes)):
        raise TypeError(
            f"Argument `{argument}` returned plain token strings ({token!r}) for "
            f"the text {text!r}, without ids. Return `(token_id, piece)` pairs, "
            "or wrap the function with `kd.lm.with_vocabulary(tokenize, "
            "vocabulary)`."
        )
    if isinstance(token, (tuple, list)) and len(token) in (2, 3):
        return len(token)
    raise TypeError(
        f"Argument `{argument}` returned the token {token!r} for the text "
        f"{text!r}. Expected `(token_id, piece)` with the token's text as str "
        "or bytes, or `(token_id, start, end)` with character offsets."
    )


def _piece_ends(tokens, text: str, argument: str):
    """Ids and byte end offsets of `(id, piece)` tokens, which must spell `text`."""
    encoded = text.encode("utf-8")
    ids, ends, position = [], [], 0
    for token in tokens:
        token_id, piece = token
        if isinstance(piece, str):
            piece = piece.encode("utf-8")
        elif not isinstance(piece, bytes):
            raise TypeError(
                f"Argument `{argument}` returned the token {token!r} for the "
                f"text {text!r}; its piece must be str or bytes."
            )
        if encoded[position : position + len(piece)] != piece:
            raise ValueError(
                f"Argument `{argument}`: the token pieces must concatenate to "
                f"the text. For the text {text!r}, the piece {piece!r} does not "
                f"follow {encoded[:position]!r}: the text continues with "
                f"{encoded[position : position + len(piece)]!r}. Return "
                "`(token_id, start, end)` offsets for a tokenizer that changes "
                "the text (lowercasing, dropping spaces)."
            )
        position += len(piece)
        ids.append(_check_id(token_id, argument, text))
        ends.append(position)
    if position != len(encoded):
        raise ValueError(
            f"Argument `{argument}`: the token pieces must concatenate to the "
            f"text. For the text {text!r} they spell only {encoded[:position]!r}."
        )
    return ids, ends


def _offset_ends(tokens, text: str, argument: str):
    """Ids and byte end offsets of `(id, start, end)` tokens (character offsets)."""
    to_bytes = np.cumsum([0] + [len(c.encode("utf-8")) for c in text]).tolist()
    ids, ends, previous = [], [], 0
    for token in tokens:
        token_id, start, end = token
        valid = all(
            isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
            for v in (start, end)
        )
        if not valid or not 0 <= start <= end <= len(text) or end < previous:
            raise ValueError(
                f"Argument `{argument}` returned the token {token!r} for the "
                f"text {text!r} ({len(text)} characters). Expected integer "
                "character offsets with 0 <= start <= end <= len(text), the "
                f"ends never decreasing (the previous token ended at {previous})."
            )
        previous = int(end)
        ids.append(_check_id(token_id, argument, text))
        ends.append(to_bytes[previous])
    return ids, ends


def _token_ends(tokenize, text: str, argument: str):
    """`(ids, ends)` of one text: token ids and end offsets in UTF-8 bytes."""
    tokens = tokenize(text)
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(
            f"Argument `{argument}` must return a list of tokens. For the text "
            f"{text!r} it returned {tokens!r} of type {type(tokens).__name__}."
            + (
                " Wrap a KerasHub tokenizer with `kd.lm.keras_hub_tokenize`."
                if hasattr(tokens, "shape")
                else ""
            )
        )
    if not tokens:
        return [], []
    forms = {_form(token, argument, text) for token in tokens}
    if forms == {2}:
        return _piece_ends(tokens, text, argument)
    if forms == {3}:
        return _offset_ends(tokens, text, argument)
    raise TypeError(
        f"Argument `{argument}` mixed `(token_id, piece)` and `(token_id, "
        f"start, end)` tokens for the text {text!r}. Expected one form."
    )


def _pair(teacher_ends, student_ends, teacher_length: int) -> list[int]:
    """For each student token, the last of the first `teacher_length` teacher
    tokens ending at the same offset, or -1."""
    last = {}
    for position, end in enumerate(teacher_ends[:teacher_length]):
        last[end] = position
    return [last.get(end, -1) for end in student_ends]


# ---------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            "Argument `texts` must be a list of strings. Received a single "
            f"{type(texts).__name__}: texts={texts!r}; wrap it in a list."
        )
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(
            "Argument `texts` must be a list of strings. Received: "
            f"texts={texts!r} of type {type(texts).__name__}."
        ) from None
    for i, text in enumerate(texts):
        if isinstance(text, np.str_):
            texts[i] = str(text)
        elif not isinstance(text, str):
            raise TypeError(
                f"Argument `texts` must hold strings. Received: texts[{i}]="
                f"{text!r} of type {type(text).__name__}."
            )
    if not texts:
        raise ValueError("Argument `texts` must hold at least one text. Received: [].")
    return texts


def _check_callable(value, argument: str):
    if not callable(value):
        raise TypeError(
            f"Argument `{argument}` must be a function `text -> tokens`. "
            f"Received: {argument}={value!r} of type {type(value).__name__}."
        )
    return value


def align_tokenizations(
    texts: Sequence[str],
    teacher_tokenize: Callable,
    student_tokenize: Callable,
    teacher_length: int,
    student_length: int,
) -> TokenAlignment:
    """Pairs a student's token positions with a teacher's over the same texts.

    Use it when the teacher and the student have different tokenizers: both
    tokenize each text, and student position `s` is paired with the teacher
    position whose token ends at the same offset of the text (in UTF-8
    bytes), the last one if several do. Both have then read the same text,
    so both predict the same next text, and their distributions can be
    compared by a vocabulary-agnostic loss
    (`kd.losses.UniversalLogitDistance`). Student positions without such a
    teacher token among the first `teacher_length`, and padding, get weight
    0. See this module's docstring for the rule and the token forms.

    Args:
        texts: a list of strings.
        teacher_tokenize: a function `text -> tokens`, each token
            `(token_id, piece)` (pieces, str or bytes, concatenating to the
            text) or `(token_id, start, end)` (character offsets, ends never
            decreasing). Zero-width tokens (`(bos_id, "")`) are allowed.
        student_tokenize: the same for the student.
        teacher_length: int >= 1, the length of the teacher's rows
            (longer tokenizations are truncated, shorter padded with 0).
        student_length: int >= 1, the same for the student.

    Returns:
        A `TokenAlignment` of numpy arrays: `teacher_ids`, `student_ids`,
        `index` (the paired teacher position of each student position),
        `weight` (1 where a real student position is paired), and the
        masks of real tokens `teacher_mask` and `student_mask`.

    Example:

    >>> import keras_kd as kd
    >>> chars = lambda text: [(ord(c), c) for c in text]
    >>> words = kd.lm.with_vocabulary(
    ...     lambda text: ["hel", "lo", " wor", "ld"], ["hel", "lo", " wor", "ld"])
    >>> a = kd.lm.align_tokenizations(["hello world"], chars, words, 16, 6)
    >>> a.index.tolist(), a.weight.tolist()
    ([[2, 4, 8, 10, 0, 0]], [[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    """
    texts = _check_texts(texts)
    teacher_tokenize = _check_callable(teacher_tokenize, "teacher_tokenize")
    student_tokenize = _check_callable(student_tokenize, "student_tokenize")
    teacher_length = _utils.check_int(
        teacher_length, "teacher_length", 1, "the teacher's positions per row"
    )
    student_length = _utils.check_int(
        student_length, "student_length", 1, "the student's positions per row"
    )
    rows = len(texts)
    result = TokenAlignment(
        teacher_ids=np.zeros((rows, teacher_length), np.int32),
        student_ids=np.zeros((rows, student_length), np.int32),
        index=np.zeros((rows, student_length), np.int32),
        weight=np.zeros((rows, student_length), np.float32),
        teacher_mask=np.zeros((rows, teacher_length), np.float32),
        student_mask=np.zeros((rows, student_length), np.float32),
    )
    for row, text in enumerate(texts):
        teacher_ids, teacher_ends = _token_ends(
            teacher_tokenize, text, "teacher_tokenize"
        )
        student_ids, student_ends = _token_ends(
            student_tokenize, text, "student_tokenize"
        )
        teacher_ids, student_ids = (
            teacher_ids[:teacher_length],
            student_ids[:student_length],
        )
        result.teacher_ids[row, : len(teacher_ids)] = teacher_ids
        result.teacher_mask[row, : len(teacher_ids)] = 1.0
        result.student_ids[row, : len(student_ids)] = student_ids
        result.student_mask[row, : len(student_ids)] = 1.0
        pairs = np.array(
            _pair(teacher_ends, student_ends[:student_length], teacher_length),
            np.int64,
        )
        paired = pairs >= 0
        result.index[row, : len(pairs)] = np.where(paired, pairs, 0)
        result.weight[row, : len(pairs)] = paired
    return result


def with_vocabulary(
    tokenize: Callable[[str], Sequence[str]], vocabulary
) -> Callable[[str], list]:
    """A tokenizer of `(token_id, piece)` from one that returns token strings.

    Args:
        tokenize: a function `text -> list of str` whose strings concatenate
            to the text (e.g. `["hel", "lo", " wor", "ld"]`).
        vocabulary: a mapping `{piece: id}`, or a list of pieces (a piece's
            id is its position).

    Returns:
        A function `text -> [(token_id, piece), ...]` for
        `align_tokenizations` and `aligned_dataset`; an unknown piece
        raises a `ValueError` naming it.

    Example:

    >>> import keras_kd as kd
    >>> tokenize = kd.lm.with_vocabulary(list, ["a", "b", " "])  # characters
    >>> tokenize("ab a")
    [(0, 'a'), (1, 'b'), (2, ' '), (0, 'a')]
    """
    _check_callable(tokenize, "tokenize")
    if isinstance(vocabulary, Mapping):
        lookup = dict(vocabulary)
    elif isinstance(vocabulary, (list, tuple)):
        lookup = {piece: i for i, piece in enumerate(vocabulary)}
    else:
        raise TypeError(
            "Argument `vocabulary` must be a dict `{piece: id}` or a list of "
            f"pieces. Received: vocabulary of type {type(vocabulary).__name__}."
        )

    def tokenize_with_ids(text):
        tokens = []
        for piece in tokenize(text):
            if piece not in lookup:
                raise ValueError(
                    f"Argument `vocabulary` has no entry for the piece {piece!r} "
                    f"of the text {text!r} ({len(lookup)} entries)."
                )
            tokens.append((lookup[piece], piece))
        return tokens

    return tokenize_with_ids


__all__ = [
    "TokenAlignment",
    "align_tokenizations",
    "keras_hub_tokenize",
    "with_vocabulary",
]
