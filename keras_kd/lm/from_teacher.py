"""`init_from_teacher`: a student that starts from the teacher's own weights.

DistilBERT (Sanh et al. 2019) initialises its 6-block student from every
other block of the 12-block BERT and calls that start crucial: the student
begins as a shallower copy of the teacher instead of from random weights.
`init_from_teacher` does that for Keras models: it copies the weights of
mapped transformer blocks, and of the embeddings and output heads whose
shapes match, from a teacher into a student of the same width.
"""

from __future__ import annotations

import re

from keras_kd import _utils
from keras_kd.backend import keras, tf

# The default block rule: a layer name that ends in digits right after a
# character that is neither a digit nor `_` (`t_mha3`, `s_ff_in0`). Keras's
# automatic names (`dense_1`, `layer_normalization_2`) end in `_<digits>` and
# are therefore never block layers by default.
_BLOCK_NAME = re.compile(r".*[^\d_](\d+)")

# Mismatched weights listed in one error message; the rest are counted.
_MAX_LISTED = 8


def _shape(variable) -> tuple:
    return tuple(int(d) for d in variable.shape)


def _path(variable) -> str:
    """`layer/.../name`: Keras 3's `path`, or tf_keras's name without `:0`."""
    path = getattr(variable, "path", None)
    return path if path else variable.name.split(":")[0]


def _describe(variable) -> str:
    return f"`{_path(variable)}` {_shape(variable)}"


class _Side:
    """One model's layers split into blocks (lists of layers, by index) and
    the other layers that hold weights."""

    def __init__(self, model, argument: str, blocks):
        _utils.check_model(model, argument)
        self.argument = argument
        self.model = model
        root = getattr(model, "backbone", None)
        if isinstance(root, keras.Model):  # a KerasHub task: its backbone's layers
            layers = list(root.layers) + [
                layer for layer in model.layers if layer is not root
            ]
        else:
            root, layers = model, list(model.layers)
        self.weights = list(model.weights) if model.built else []
        if not self.weights:
            raise ValueError(
                f"Argument `{argument}` has no weights yet: build it first "
                f"(call it on a batch). Received: {argument}={model!r}."
            )
        self.blocks = _find_blocks(root, layers, blocks, argument)
        in_blocks = {id(layer) for block in self.blocks for layer in block}
        self.others = [
            layer for layer in layers if layer.weights and id(layer) not in in_blocks
        ]
        self.block_of = {
            layer.name: index
            for index, block in enumerate(self.blocks)
            for layer in block
        }


def _block_index(blocks, layer, argument: str):
    """The block index `blocks` (None, a regex or a callable) gives `layer`."""
    if blocks is None:
        found = _BLOCK_NAME.fullmatch(layer.name)
        return int(found.group(1)) if found else None
    if isinstance(blocks, re.Pattern):
        found = blocks.fullmatch(layer.name)
        if found is None:
            return None
        group = "index" if "index" in blocks.groupindex else 1
        return int(found.group(group))
    index = blocks(layer)
    if index is None:
        return None
    return _utils.check_int(
        index, f"blocks (its value for layer {layer.name!r} of `{argument}`)", 0
    )


def _check_blocks_argument(blocks):
    """`blocks` as None, a compiled regex, a Layer subclass or a function."""
    if blocks is None:
        return None
    if isinstance(blocks, type) and issubclass(blocks, keras.layers.Layer):
        return blocks
    if isinstance(blocks, (str, re.Pattern)):
        try:
            pattern = re.compile(blocks)
        except re.error as error:
            raise ValueError(
                f"Argument `blocks` is not a valid regular expression ({error}). "
                f"Received: blocks={blocks!r}."
            ) from None
        if not pattern.groups:
            raise ValueError(
                "Argument `blocks`, a regular expression, must have a group "
                "that captures the block index, e.g. r't_.*?(\\d+)' or "
                f"r'(?P<index>\\d+)_.*'. Received: blocks={blocks!r}."
            )
        return pattern
    if callable(blocks) and not isinstance(blocks, type):
        return blocks
    raise TypeError(
        "Argument `blocks` must be None (the default rule), a regular "
        "expression with a group for the block index, a Layer subclass (each "
        "layer of it is one block) or a function of a layer returning its "
        f"block index or None. Received: blocks={blocks!r} of type "
        f"{type(blocks).__name__}."
    )


def _find_blocks(root, layers, blocks, argument: str) -> list:
    """The blocks of a model: a list, by index, of lists of layers."""
    hub = getattr(root, "transformer_layers", None)
    if blocks is None and isinstance(hub, (list, tuple)) and hub:
        return [[layer] for layer in hub]
    if isinstance(blocks, type):
        found = [[layer] for layer in layers if isinstance(layer, blocks)]
    else:
        by_index = {}
        for layer in layers:
            if layer.weights:
                index = _block_index(blocks, layer, argument)
                if index is not None:
                    by_index.setdefault(index, []).append(layer)
        if by_index and sorted(by_index) != list(range(len(by_index))):
            names = {i: [layer.name for layer in by_index[i]] for i in sorted(by_index)}
            raise ValueError(
                f"The blocks found in `{argument}` must be numbered 0, 1, ... "
                f"without gaps; found {names}. Pass `blocks=` to say which "
                "layers form the blocks."
            )
        found = [by_index[i] for i in range(len(by_index))]
    if not found:
        raise ValueError(
            f"Found no blocks in `{argument}` (its layers: "
            f"{[layer.name for layer in layers if layer.weights]}). By default "
            "a block is a KerasHub backbone's `transformer_layers` entry, or "
            "the layers whose names end in the block's index (`t_mha0`); pass "
            "`blocks=` (a regex, a Layer subclass or a function) otherwise."
        )
    return found


def _block_number(key, side: _Side, layer_map) -> int:
    """A block given by index or by the name of one of its layers."""
    count = len(side.blocks)
    if isinstance(key, str):
        if key not in side.block_of:
            raise ValueError(
                f"Argument `layer_map` names {key!r}, which is no layer of a "
                f"block of `{side.argument}` (its block layers: "
                f"{sorted(side.block_of)}). Received: layer_map={layer_map!r}."
            )
        return side.block_of[key]
    what = f"a block index of `{side.argument}` or the name of a layer in one"
    index = _utils.check_int(key, "layer_map", 0, what)
    if index >= count:
        raise ValueError(
            f"Argument `layer_map` maps {side.argument} block {index}, but "
            f"`{side.argument}` has {count} blocks (0 to {count - 1}). "
            f"Received: layer_map={layer_map!r}."
        )
    return index


def _block_map(layer_map, student: _Side, teacher: _Side) -> dict:
    """`{student block: teacher block}` from `layer_map`."""
    num_student, num_teacher = len(student.blocks), len(teacher.blocks)
    if layer_map is None:
        return {i: i * num_teacher // num_student for i in range(num_student)}
    if isinstance(layer_map, dict):
        items = list(layer_map.items())
    elif callable(layer_map):
        items = [(i, layer_map(i)) for i in range(num_student)]
    else:
        raise TypeError(
            "Argument `layer_map` must be None (every other block), a dict "
            "{student block: teacher block} (indices or layer names) or a "
            "function of the student block index. Received: "
            f"layer_map={layer_map!r} of type {type(layer_map).__name__}."
        )
    mapping = {}
    for key, value in items:
        index = _block_number(key, student, layer_map)
        if index in mapping:
            raise ValueError(
                f"Argument `layer_map` maps student block {index} twice. "
                f"Received: layer_map={layer_map!r}."
            )
        mapping[index] = _block_number(value, teacher, layer_map)
    return dict(sorted(mapping.items()))


def _layer_problems(student_layer, teacher_layer) -> list:
    """Why `teacher_layer`'s weights cannot go into `student_layer` ([]: they can)."""
    s_type, t_type = type(student_layer).__name__, type(teacher_layer).__name__
    if s_type != t_type:
        return [
            f"layer `{student_layer.name}` of the student is a {s_type}, layer "
            f"`{teacher_layer.name}` of the teacher a {t_type}"
        ]
    s_weights, t_weights = student_layer.weights, teacher_layer.weights
    problems = [
        f"weight {_describe(s)} of the student, {_describe(t)} of the teacher"
        for s, t in zip(s_weights, t_weights)
        if _shape(s) != _shape(t)
    ]
    problems += [
        f"weight {_describe(v)} of the student has no match in the teacher"
        for v in s_weights[len(t_weights) :]
    ]
    problems += [
        f"weight {_describe(v)} of the teacher has no match in the student"
        for v in t_weights[len(s_weights) :]
    ]
    return problems


def _block_pairs(mapping: dict, student: _Side, teacher: _Side) -> list:
    """`(student variable, teacher variable)` of every mapped block; raises,
    listing every mismatch, unless all of them pair up with the same shapes."""
    pairs, problems = [], []
    for s_index, t_index in mapping.items():
        s_block, t_block = student.blocks[s_index], teacher.blocks[t_index]
        where = f"student block {s_index} <- teacher block {t_index}: "
        if len(s_block) != len(t_block):
            problems.append(
                where + f"layers {[layer.name for layer in s_block]} of the "
                f"student, {[layer.name for layer in t_block]} of the teacher"
            )
            continue
        for s_layer, t_layer in zip(s_block, t_block):
            found = _layer_problems(s_layer, t_layer)
            problems += [where + problem for problem in found]
            if not found:
                pairs += list(zip(s_layer.weights, t_layer.weights))
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = len(problems) - _MAX_LISTED
        raise ValueError(
            "Cannot initialise `student` from `teacher`: mapped blocks differ, "
            "and nothing was copied.\n  "
            + listed
            + (f"\n  ... and {more} more." if more > 0 else "")
            + "\nA student block must have the layers and weight shapes of the "
            "teacher block it is mapped to: give the student the teacher's "
            "width (hidden size, heads, feed-forward size), or map other "
            f"blocks with `layer_map`. Received: block map {mapping}."
        )
    return pairs


def _strip_prefix(name: str) -> str:
    return name.split("_", 1)[1] if "_" in name else name


def _other_pairs(student: _Side, teacher: _Side) -> list:
    """Non-block layers paired by name, else by name without its prefix."""
    pairs, s_left = [], []
    t_by_name = {layer.name: layer for layer in teacher.others}
    for layer in student.others:
        if layer.name in t_by_name:
            pairs.append((layer, t_by_name.pop(layer.name)))
        else:
            s_left.append(layer)
    t_left = list(t_by_name.values())
    for layer in s_left:
        role = _strip_prefix(layer.name)
        same = [t for t in t_left if _strip_prefix(t.name) == role]
        rivals = [s for s in s_left if _strip_prefix(s.name) == role]
        if len(same) == 1 and len(rivals) == 1:
            pairs.append((layer, same[0]))
    return pairs


def init_from_teacher(
    student, teacher, layer_map=None, blocks=None, verbose: bool = False
) -> dict:
    """Copies the teacher's weights into a student of the same width.

    DistilBERT (Sanh et al. 2019) initialises its student from one teacher
    block out of two and the teacher's embeddings; a student that starts as
    a shallower copy of the teacher learns faster than a random one. Call
    this once, after building the student and before distilling it.

    **Blocks.** The teacher's and the student's transformer blocks are found
    the same way, in this order:

    * a KerasHub backbone (or a task such as `GPT2CausalLM`, through its
      `.backbone`) with `blocks=None`: each layer of `transformer_layers`
      is one block;
    * `blocks=None` in any other model: the layers (of `model.layers`, with
      weights) whose names end in digits right after a character other
      than `_`, such as `t_mha0`, `t_ln_ff0` and `t_ff_in0`, form the block
      of that number. Names ending in `_<digits>`, Keras's automatic names
      (`dense_1`), are not block layers. A nested model among the layers
      counts as one layer;
    * `blocks`, a regular expression: the layers whose whole name matches
      it, the block index in its group `index` or else its first group;
    * `blocks`, a Layer subclass: each layer of that class (a KerasHub
      `TransformerDecoder`, your own block layer) is one block, in order;
    * `blocks`, a function `f(layer) -> block index or None`.

    Blocks must be numbered 0, 1, ... without gaps. Within a mapped pair of
    blocks, layers pair by position (their order in `model.layers`) and
    weights by position within their layer; each pair must be of the same
    layer class and shape.

    **The map.** `layer_map=None` takes every other block the DistilBERT way:
    student block `i` <- teacher block `i * T // S` for `S` student and `T`
    teacher blocks, so 2 of 4 give {0: 0, 1: 2} and 6 of 12 give teacher
    blocks 0, 2, 4, 6, 8, 10. Student block 0 always starts from teacher
    block 0, the one that reads the (copied) embeddings. A dict
    `{student block: teacher block}` chooses the pairs; keys and values are
    indices or the name of a layer of that block (`"transformer_layer_3"`,
    `"t_mha3"`); student blocks left out keep their weights. A function of
    the student block index may give the teacher block instead.

    **Other layers** (embeddings, final norm, output head: the layers with
    weights outside the blocks) pair by name, or else by name without the
    prefix up to the first `_` (`t_logits` with `s_logits`) when that is
    unambiguous. A pair is copied when every weight has the teacher's shape,
    else skipped and reported (a student with a smaller vocabulary keeps its
    own embedding). Layers without a counterpart keep their weights.

    **Refusals.** A mapped block pair whose weights differ in shape or number
    raises a `ValueError` naming both weights and both shapes. All checks run
    before any weight is written: on an error the student is unchanged.

    Args:
        student: the `keras.Model` to initialise, built.
        teacher: the `keras.Model` to copy from; it is not changed.
        layer_map: None (every other block, see above), a dict
            `{student block: teacher block}` by index or layer name, or a
            function of the student block index.
        blocks: how the blocks are found in both models: None (see above), a
            regular expression with a group for the block index, a Layer
            subclass, or a function `f(layer) -> index or None`.
        verbose: print what was copied and what was skipped.

    Returns:
        A dict: `"block_map"`, `{student block: teacher block}`; `"copied"`,
        the `(student weight, teacher weight)` paths copied; `"skipped"`,
        `(student layer, teacher layer, reason)` of the paired non-block
        layers whose shapes differ; `"unchanged"`, the paths of the
        student's weights that were not written.

    Example:

    ```python
    teacher = keras_hub.models.GPT2Backbone(vocabulary_size=64, num_layers=4,
        num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=32)
    student = keras_hub.models.GPT2Backbone(vocabulary_size=64, num_layers=2,
        num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=32)
    report = kd.init_from_teacher(student, teacher)  # blocks {0: 0, 1: 2}
    report = kd.init_from_teacher(student, teacher, layer_map={1: 3})
    ```
    """
    blocks = _check_blocks_argument(blocks)
    verbose = _utils.check_bool(verbose, "verbose")
    student_side = _Side(student, "student", blocks)
    teacher_side = _Side(teacher, "teacher", blocks)
    if student is teacher or student_side.model is teacher_side.model:
        raise ValueError(
            "Arguments `student` and `teacher` must be two different models. "
            f"Received: the same model {student.name!r} twice."
        )
    mapping = _block_map(layer_map, student_side, teacher_side)
    pairs = _block_pairs(mapping, student_side, teacher_side)
    skipped = []
    for s_layer, t_layer in _other_pairs(student_side, teacher_side):
        problems = _layer_problems(s_layer, t_layer)
        if problems:
            skipped.append((s_layer.name, t_layer.name, "; ".join(problems)))
        else:
            pairs += list(zip(s_layer.weights, t_layer.weights))
    for s_var, t_var in pairs:  # everything was checked: now write
        s_var.assign(tf.cast(t_var.numpy(), s_var.dtype))
    written = {id(s_var) for s_var, _ in pairs}
    report = {
        "block_map": mapping,
        "copied": [(_path(s), _path(t)) for s, t in pairs],
        "skipped": skipped,
        "unchanged": [_path(v) for v in student_side.weights if id(v) not in written],
    }
    if verbose:
        _print_report(report)
    return report


def _print_report(report: dict) -> None:
    print(
        f"init_from_teacher: student block <- teacher block {report['block_map']}; "
        f"{len(report['copied'])} weights copied, {len(report['unchanged'])} "
        "left as they were."
    )
    for student_layer, teacher_layer, reason in report["skipped"]:
        print(f"  skipped {student_layer} <- {teacher_layer}: {reason}")


__all__ = ["init_from_teacher"]
