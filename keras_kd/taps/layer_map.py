"""`layer_map`: which teacher layer each student layer learns from.

Language models are distilled layer by layer (TinyBERT, Jiao et al. 2020;
MiniLM, Wang et al. 2020): a student with fewer transformer blocks matches
the hidden states (and attention) of a subset of the teacher's, e.g. student
block `i` learns from teacher block `2i + 1`. `layer_map` turns such a map
into `FeatureMatch`es for `Distiller(..., features=...)`.
"""

from __future__ import annotations

from keras_kd import _utils
from keras_kd.taps.match import FeatureMatch


def _check_layers(layers, argument: str) -> list:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)):
        raise TypeError(
            f"Argument `{argument}` must be a list of layers (names, objects, "
            "paths, or (layer, output_index) tuples), one per block. "
            f"Received: {argument}={layers!r}."
        )
    if not layers:
        raise ValueError(f"Argument `{argument}` must not be empty.")
    return list(layers)


def uniform_map(num_student: int, num_teacher: int) -> dict:
    """Student block `i` -> teacher block `(i + 1) * n_t // n_s - 1`.

    Spreads the student's blocks evenly over the teacher's and always pairs
    the last with the last (TinyBERT's uniform strategy): 4 student and 8
    teacher blocks give {0: 1, 1: 3, 2: 5, 3: 7}, i.e. teacher `2i + 1`.
    """
    return {i: (i + 1) * num_teacher // num_student - 1 for i in range(num_student)}


def layer_map(teacher_layers, student_layers, mapping="uniform", **match_kwargs):
    """`FeatureMatch`es pairing each student layer with a teacher layer.

    Args:
        teacher_layers: the teacher's layers, in order (e.g. the outputs of
            its transformer blocks, or `(mha_layer, 1)` for their attention
            scores): names, objects, paths or `(layer, output_index)`.
        student_layers: the student's layers, in the same forms.
        mapping: `"uniform"` (default: `uniform_map`), a dict `{student
            index: teacher index}` (students not in it are not tapped), or a
            function `f(student_index) -> teacher_index`.
        **match_kwargs: passed to every `FeatureMatch` (`loss`, `weight`,
            `projection`, `spatial`, `teacher`).

    Returns:
        A list of `FeatureMatch`, in student order.

    Example:

    ```python
    hidden = kd.taps.layer_map([f"t_block{i}" for i in range(8)],
                               [f"s_block{i}" for i in range(4)],
                               mapping=lambda i: 2 * i + 1, loss="mse")
    attention = kd.taps.layer_map([(f"t_mha{i}", 1) for i in range(8)],
                                  [(f"s_mha{i}", 1) for i in range(4)],
                                  loss="attention_map")
    distiller = kd.Distiller(teacher, student, features=hidden + attention)
    ```
    """
    teacher_layers = _check_layers(teacher_layers, "teacher_layers")
    student_layers = _check_layers(student_layers, "student_layers")
    if isinstance(mapping, str):
        if mapping != "uniform":
            raise ValueError(
                "Argument `mapping` must be 'uniform', a dict or a function. "
                f"Received: mapping={mapping!r}."
            )
        pairs = uniform_map(len(student_layers), len(teacher_layers))
    elif isinstance(mapping, dict):
        pairs = dict(mapping)
    elif callable(mapping):
        pairs = {i: mapping(i) for i in range(len(student_layers))}
    else:
        raise TypeError(
            "Argument `mapping` must be 'uniform', a dict {student index: "
            "teacher index} or a function of the student index. Received: "
            f"mapping={mapping!r}."
        )
    matches = []
    for student_index in sorted(pairs):
        teacher_index = pairs[student_index]
        for value, count, what in (
            (student_index, len(student_layers), "student"),
            (teacher_index, len(teacher_layers), "teacher"),
        ):
            _utils.check_int(
                value, f"mapping ({what} index)", 0, f"a {what} layer index"
            )
            if value >= count:
                raise ValueError(
                    f"Argument `mapping` pairs {what} layer {value}, but "
                    f"{count} {what} layers were given (indices 0 to {count - 1}). "
                    f"Received: mapping={mapping!r}."
                )
        matches.append(
            FeatureMatch(
                teacher_layers[teacher_index],
                student_layers[student_index],
                **match_kwargs,
            )
        )
    return matches


__all__ = ["layer_map", "uniform_map"]
