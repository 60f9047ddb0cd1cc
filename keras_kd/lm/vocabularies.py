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
`WordPieceTokenizer` (Keras 3).

**Training.** `align_tokenizations` gives both sequences of ids, the gather
index and the weights; `keras_kd.lm.aligned` turns them into a teacher and
a dataset to train on.
"""

from __future__ import annotations

import numbers
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from keras_kd import _utils


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


# ---------------------------------------------------------------------------
# KerasHub tokenizers
# ---------------------------------------------------------------------------

_KERAS_HUB_KINDS = ("ByteTokenizer", "UnicodeCodepointTokenizer", "WordPieceTokenizer")


def _same_layout(processed: str, text: str, tokenizer, unit: str) -> None:
    """Raises unless the tokenizer's text has `text`'s characters' sizes."""
    size = (lambda c: len(c.encode("utf-8"))) if unit == "byte" else (lambda c: 1)
    if len(processed) != len(text) or any(
        size(a) != size(b) for a, b in zip(processed, text)
    ):
        raise ValueError(
            f"The {type(tokenizer).__name__} changed the text {text!r} into "
            f"{processed!r} (lowercasing or normalization), which has another "
            f"layout of {unit}s, so its tokens have no offsets into the text. "
            "Build it with `lowercase=False` (and no `normalization_form`)."
        )


def _word_piece_spans(tokenizer, ids, text: str) -> list:
    """`(id, start, end)` of a `WordPieceTokenizer`'s tokens, located in `text`."""
    view, owner = [], []  # the text as the tokenizer matches it, char by char
    for i, char in enumerate(text):
        if tokenizer.lowercase:
            char = char.casefold()
        if tokenizer.strip_accents:
            char = "".join(
                c
                for c in unicodedata.normalize("NFD", char)
                if unicodedata.category(c) != "Mn"
            )
        view.extend(char)
        owner.extend([i] * len(char))
    view = "".join(view)

    def blank(c):
        return c.isspace() or unicodedata.category(c) in ("Cc", "Cf")

    def boundary(c):
        return (
            blank(c)
            or unicodedata.category(c).startswith("P")
            or (c.isascii() and not c.isalnum())
        )

    suffix, spans, cursor = tokenizer.suffix_indicator, [], 0
    for token_id in ids:
        token = tokenizer.id_to_token(token_id)
        continued = cursor > 0 and token.startswith(suffix) and len(token) > len(suffix)
        if not continued:
            while cursor < len(view) and blank(view[cursor]):
                cursor += 1
        start = cursor
        if start >= len(view):
            raise ValueError(
                f"The WordPieceTokenizer's token {token!r} lies past the end of "
                f"the text {text!r}. Give `align_tokenizations` a function "
                "returning `(token_id, start, end)` offsets for this tokenizer."
            )
        if token == tokenizer.oov_token:  # a whole word the vocabulary lacks
            cursor += 1
            if not boundary(view[start]):
                while cursor < len(view) and not boundary(view[cursor]):
                    cursor += 1
        else:
            piece = token[len(suffix) :] if continued else token
            if not view.startswith(piece, cursor):
                raise ValueError(
                    f"Cannot locate the WordPieceTokenizer's token {token!r} in "
                    f"the text {text!r} after {view[:cursor]!r}. Give "
                    "`align_tokenizations` a function returning `(token_id, "
                    "start, end)` offsets for this tokenizer."
                )
            cursor += len(piece)
        spans.append((int(token_id), owner[start], owner[cursor - 1] + 1))
    return spans


def keras_hub_tokenize(tokenizer) -> Callable[[str], list]:
    """A tokenizer with spans, for `align_tokenizations`, from a KerasHub one.

    Supports `keras_hub.tokenizers.ByteTokenizer` (one token per UTF-8
    byte), `UnicodeCodepointTokenizer` (one per character) and
    `WordPieceTokenizer` (pieces located in the text; the suffix indicator
    `##` joins a piece to the previous one, spaces are skipped, and the
    out-of-vocabulary token covers a whole word). A Byte or Codepoint
    tokenizer that lowercases keeps working as long as lowercasing does not
    change the text's layout (e.g. "Straße" casefolds to "strasse": build it
    with `lowercase=False`). Keras 3 only, as KerasHub is.

    Args:
        tokenizer: one of the KerasHub tokenizers above, without a
            `sequence_length` (`align_tokenizations` pads).

    Returns:
        A function `text -> [(token_id, piece or start, end), ...]`.

    Example:

    ```python
    teacher_tokenize = kd.lm.keras_hub_tokenize(keras_hub.tokenizers.ByteTokenizer())
    student_tokenize = kd.lm.keras_hub_tokenize(word_piece_tokenizer)
    alignment = kd.lm.align_tokenizations(texts, teacher_tokenize,
                                          student_tokenize, 256, 64)
    ```
    """
    kinds = [
        c.__name__
        for c in type(tokenizer).__mro__
        if c.__module__.startswith("keras_hub")
    ]
    kind = next((k for k in kinds if k in _KERAS_HUB_KINDS), None)
    if kind is None:
        raise TypeError(
            "Argument `tokenizer` must be a KerasHub ByteTokenizer, "
            "UnicodeCodepointTokenizer or WordPieceTokenizer. Received: "
            f"tokenizer of type {type(tokenizer).__name__}. For another "
            "tokenizer, write a function returning `(token_id, start, end)` "
            "character offsets."
        )
    if getattr(tokenizer, "sequence_length", None):
        raise ValueError(
            f"Argument `tokenizer` pads to sequence_length="
            f"{tokenizer.sequence_length}; give a tokenizer without one "
            "(`align_tokenizations` truncates and pads to its lengths)."
        )

    def tokenize(text):
        ids = np.asarray(tokenizer.tokenize(text)).reshape(-1).tolist()
        if kind == "ByteTokenizer":
            _same_layout(bytes(ids).decode("utf-8", "replace"), text, tokenizer, "byte")
            encoded = text.encode("utf-8")
            return [(i, encoded[k : k + 1]) for k, i in enumerate(ids)]
        if kind == "UnicodeCodepointTokenizer":
            processed = "".join(chr(min(max(i, 0), 0x10FFFF)) for i in ids)
            _same_layout(processed, text, tokenizer, "character")
            return [(i, c) for i, c in zip(ids, text)]
        return _word_piece_spans(tokenizer, ids, text)

    return tokenize
