"""Training across tokenizers: the teacher and the data, at aligned positions.

`keras_kd.lm.vocabularies` pairs a student's token positions with a
teacher's by the text both tokenizations came from (`align_tokenizations`).
This module trains on that pairing: `aligned_teacher` wraps the teacher so
that its logits come out at the student's positions (through the
`GatherPositions` layer), and `aligned_dataset` builds the `(inputs, next
ids, weights)` dataset it trains on. A `kd.Distiller` routes each model its
entries of the dict of inputs: `teacher_inputs=["teacher_ids", "index"]`,
`student_inputs="student_ids"`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keras_kd import _utils
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.lm.vocabularies import align_tokenizations

# The keys of the inputs `aligned_dataset` builds and `aligned_teacher` reads.
TEACHER_IDS, INDEX, STUDENT_IDS = "teacher_ids", "index", "student_ids"


@register_serializable
class GatherPositions(keras.layers.Layer):
    """Picks, for each student position, the teacher's output at its pair.

    Called on `[values, index]`, `values` `(batch, teacher_time, ...)` and
    `index` `(batch, student_time)` integer, it returns `(batch,
    student_time, ...)` float32: `values[b, index[b, s]]`. With
    `from_probabilities=True` (a teacher ending in softmax) it returns the
    log-probabilities, which are logits. The layer `aligned_teacher` ends
    with.

    Args:
        from_probabilities: whether `values` are probabilities.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, from_probabilities: bool = False, **kwargs):
        kwargs.setdefault("dtype", "float32")  # the losses read float32
        super().__init__(**kwargs)
        self.from_probabilities = _utils.check_bool(
            from_probabilities, "from_probabilities"
        )

    def call(self, inputs):
        values, index = inputs
        values = tf.cast(values, tf.float32)
        if self.from_probabilities:
            values = _utils.log_probs(values)
        return tf.gather(values, tf.cast(index, tf.int32), batch_dims=1)

    def compute_output_shape(self, input_shape):
        values, index = input_shape
        return tuple(index)[:2] + tuple(values)[2:]

    def compute_mask(self, inputs, mask=None):
        return None  # the teacher's mask is over its own positions

    def get_config(self) -> dict:
        config = super().get_config()
        config["from_probabilities"] = self.from_probabilities
        return config


def aligned_teacher(
    teacher, ids_key: str = TEACHER_IDS, index_key: str = INDEX, name=None
):
    """The teacher with its outputs at the student's positions.

    The returned functional model reads a dict `{ids_key: (batch,
    teacher_time) ids, index_key: (batch, student_time) teacher positions}`
    (`align_tokenizations`' `teacher_ids` and `index`), runs `teacher` on
    the ids and returns its logits at the given positions, `(batch,
    student_time, teacher_vocab)` float32. It goes into a `kd.Distiller`
    as the teacher, with `teacher_inputs=[ids_key, index_key]` so that it
    gets those two entries of the batch's dict of inputs, and the student
    gets its own with `student_inputs`. A teacher ending in softmax gives
    log-probabilities (logits of the same distribution). The teacher
    itself is unchanged, and the Distiller freezes it as usual.

    Args:
        teacher: a `keras.Model` with one output, called on a `(batch,
            time)` tensor of token ids, returning `(batch, time, vocab)`.
        ids_key: the name of the teacher's ids in the dict of inputs.
        index_key: the name of the gather index.
        name: the model's name (default `"aligned_" + teacher.name`).

    Returns:
        A functional `keras.Model`; it saves and loads like any other.

    Example:

    ```python
    distiller = kd.Distiller(kd.lm.aligned_teacher(teacher), student,
                             teacher_inputs=["teacher_ids", "index"],
                             student_inputs="student_ids")
    distiller.compile("adam", distillation_loss=kd.losses.UniversalLogitDistance(),
                      alpha=1.0)
    distiller.fit(kd.lm.aligned_dataset(texts, teacher_tokenize,
                                        student_tokenize, 256, 64), epochs=1)
    ```
    """
    _utils.check_model(teacher, "teacher")
    for value, argument in ((ids_key, "ids_key"), (index_key, "index_key")):
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"Argument `{argument}` must be a non-empty string, a key of "
                f"the dict of inputs. Received: {argument}={value!r}."
            )
    if ids_key == index_key:
        raise ValueError(
            "Arguments `ids_key` and `index_key` must differ. Received: "
            f"ids_key=index_key={ids_key!r}."
        )
    outputs = tf.nest.flatten(getattr(teacher, "outputs", None) or [])
    if len(outputs) > 1:
        raise ValueError(
            f"Argument `teacher` ({teacher.name!r}) must have one output, the "
            f"(batch, time, vocab) logits. It has {len(outputs)}."
        )
    inputs = tf.nest.flatten(getattr(teacher, "inputs", None) or [])
    dtype = inputs[0].dtype if len(inputs) == 1 else "int32"
    ids = keras.Input((None,), dtype=dtype, name=ids_key)
    index = keras.Input((None,), dtype="int32", name=index_key)
    probabilities = _utils.output_is_probabilities(teacher) or [False]
    gathered = GatherPositions(from_probabilities=probabilities[0], name="positions")(
        [teacher(ids), index]
    )
    return keras.Model(
        {ids_key: ids, index_key: index},
        gathered,
        name=name or f"aligned_{teacher.name}",
    )


def aligned_dataset(
    texts: Sequence[str],
    teacher_tokenize: Callable,
    student_tokenize: Callable,
    teacher_length: int,
    student_length: int,
    batch_size: int | None = 32,
):
    """A dataset of aligned texts for a `kd.Distiller`: `(x, y, weight)`.

    Each text gives `x = {"teacher_ids": (teacher_length,), "index":
    (student_length,), "student_ids": (student_length,)}`, `y` the
    student's next token at each position `(student_length,)` and `weight`
    `(student_length,)`: 1 where the student position is paired with a
    teacher position (`align_tokenizations`' rule) and has a next token,
    else 0. Use it with `aligned_teacher`, `teacher_inputs=["teacher_ids",
    "index"]` and `student_inputs="student_ids"`.

    The one `weight` serves both of the Distiller's terms, so with `alpha`
    < 1 the hard loss (next-token cross-entropy) also covers only the
    paired positions; with `alpha=1.0` (distillation only) nothing is lost.

    Args:
        texts: a list of strings.
        teacher_tokenize: the teacher's tokenizer (see `align_tokenizations`).
        student_tokenize: the student's.
        teacher_length: int >= 1, the teacher's positions per row.
        student_length: int >= 1, the student's input positions per row (its
            texts are tokenized to `student_length + 1` for the next ids).
        batch_size: the batch size, or None for an unbatched dataset.

    Returns:
        A `tf.data.Dataset` of `(x, y, weight)`.

    Example:

    ```python
    ds = kd.lm.aligned_dataset(texts, teacher_tokenize, student_tokenize,
                               teacher_length=256, student_length=64)
    distiller.fit(ds.shuffle(64), epochs=3)
    ```
    """
    student_length = _utils.check_int(
        student_length, "student_length", 1, "the student's positions per row"
    )
    if batch_size is not None:
        batch_size = _utils.check_int(batch_size, "batch_size", 1)
    a = align_tokenizations(
        texts, teacher_tokenize, student_tokenize, teacher_length, student_length + 1
    )
    x = {
        TEACHER_IDS: a.teacher_ids,
        INDEX: a.index[:, :-1],
        STUDENT_IDS: a.student_ids[:, :-1],
    }
    weight = a.weight[:, :-1] * a.student_mask[:, 1:]
    dataset = tf.data.Dataset.from_tensor_slices((x, a.student_ids[:, 1:], weight))
    return dataset if batch_size is None else dataset.batch(batch_size)
