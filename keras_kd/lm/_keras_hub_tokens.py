"""KerasHub tokenizers as `align_tokenizations` tokenizers: `keras_hub_tokenize`.

A KerasHub tokenizer returns ids only; `align_tokenizations` needs each
token's span of the text. `keras_hub_tokenize` gives the spans of a
`ByteTokenizer` (one token per UTF-8 byte), a `UnicodeCodepointTokenizer`
(one per character) and a `WordPieceTokenizer` (pieces located in the
text). Keras 3 only, as KerasHub is.

Private to `keras_kd.lm`: `vocabularies.py` re-exports `keras_hub_tokenize`,
which is public as `keras_kd.lm.keras_hub_tokenize` and
`keras_kd.lm.vocabularies.keras_hub_tokenize`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import numpy as np

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
