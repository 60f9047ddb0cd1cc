"""Finding a tapped layer; one multi-output view of a model, built once."""

from __future__ import annotations

from keras_kd import _utils
from keras_kd.backend import LEGACY, keras


def check_graph_model(model, argument: str) -> None:
    """Raises unless `model` is Sequential or Functional (taps need a graph)."""
    if not _utils.is_graph_model(model):
        raise ValueError(
            f"Feature taps on the {argument} need a Sequential or Functional "
            f"model: its intermediate outputs are read from one multi-output "
            f"view of its graph of layers. Received a subclassed model "
            f"{model.name!r} ({type(model).__name__}), which has no such "
            "graph. Rebuild it with the Functional API (`keras.Input` and "
            "layer calls), or return the features from its `call` as extra "
            "outputs and distil those outputs."
        )


def layer_path(model, spec, argument: str) -> tuple:
    """The names leading from `model` to the layer `spec` (a name, path or object)."""
    if isinstance(spec, str):
        path = tuple(spec.split("/"))
        current = model
        for depth, name in enumerate(path):
            if depth and not isinstance(current, keras.Model):
                _refuse_inner_layer(current, path, depth, argument, spec)
            names = [layer.name for layer in getattr(current, "layers", [])]
            if name not in names:
                where = "/".join(path[:depth]) or repr(model.name)
                raise ValueError(
                    f"Argument `{argument}`: no layer {name!r} in {where} "
                    f"(of the {argument.split('_')[0]} {model.name!r}). "
                    f"Received: {argument}={spec!r}. Its layers: {names}."
                )
            current = current.get_layer(name)
        return path

    def search(container, prefix):
        for layer in getattr(container, "layers", []):
            if layer is spec:
                return (*prefix, layer.name)
            if isinstance(layer, keras.Model):
                found = search(layer, (*prefix, layer.name))
                if found:
                    return found
        return None

    path = search(model, ())
    if path is None:
        raise ValueError(
            f"Argument `{argument}`: the layer {spec.name!r} is not a layer "
            f"of the model {model.name!r} (nor of a model nested in it)."
        )
    return path


def _refuse_inner_layer(layer, path, depth, argument, spec):
    """A path into a layer that is not a model (e.g. the attention inside a
    KerasHub `TransformerDecoder`): its sublayers have no output of their own
    in the model's graph, so reading one would mean running the layer again."""
    raise ValueError(
        f"Argument `{argument}`={spec!r}: {'/'.join(path[:depth])!r} is a layer "
        f"({type(layer).__name__}), not a model, so what runs inside it (here "
        f"{'/'.join(path[depth:])!r}) has no output of its own in the model's "
        "graph; reading it would mean running the layer a second time, which "
        "keras-kd does not do (one forward pass per model). Tap the layer's own "
        f"output ({'/'.join(path[:depth])!r}: e.g. a transformer block's hidden "
        "states) or, for attention maps, build the blocks from "
        "`keras.layers.MultiHeadAttention` called with "
        "`return_attention_scores=True` and tap `(its name, 1)` "
        "(examples/language_model_distillation.py does)."
    )


def _layer_output(layer, index, argument: str, path):
    try:
        output = layer.output
    except (AttributeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"Argument `{argument}`: the output of layer {'/'.join(path)!r} "
            f"cannot be read ({error}). A layer called more than once in the "
            "model has no single output to tap."
        ) from None
    if isinstance(output, (list, tuple)):
        if index is None:
            raise ValueError(
                f"Argument `{argument}`: layer {'/'.join(path)!r} has "
                f"{len(output)} outputs; say which with a tuple "
                f"({'/'.join(path)!r}, output_index)."
            )
        if index >= len(output):
            raise ValueError(
                f"Argument `{argument}`: output index {index} out of range "
                f"for layer {'/'.join(path)!r} with {len(output)} outputs."
            )
        return output[index]
    if index not in (None, 0):
        raise ValueError(
            f"Argument `{argument}`: layer {'/'.join(path)!r} has one output; "
            f"received output index {index}."
        )
    return output


def _select(output, index):
    if isinstance(output, (list, tuple)):
        return output[index or 0]
    return output


def _model_output(model):
    """`model.output`; a Sequential never called has only `outputs`."""
    outputs = model.outputs
    return outputs[0] if len(outputs) == 1 else model.output


def _single_input(model):
    inputs = model.inputs
    return inputs[0] if len(inputs) == 1 else inputs


def build_view(model, taps, argument: str):
    """One model computing `model`'s outputs and the tapped layers' outputs.

    Args:
        model: a built Sequential or Functional model.
        taps: a list of `(path, output_index)`, `path` a tuple of layer names
            (more than one name reaches into nested models).
        argument: `"teacher_layer"` or `"student_layer"`, for messages.

    Returns:
        A `keras.Model` sharing `model`'s layers, called as `model` is, that
        returns `[model's output, [tap outputs in order]]`.
    """
    check_graph_model(model, argument.split("_")[0])
    nested = {}
    for path, _ in taps:
        if len(path) > 1:
            nested.setdefault(path[0], []).append((path[1:], _))
    if not nested:
        outputs = [
            _layer_output(model.get_layer(path[0]), index, argument, path)
            for path, index in taps
        ]
        return keras.Model(_single_input(model), [_model_output(model), outputs])
    sub_views = {}
    for name, sub_taps in nested.items():
        sub_views[name] = (
            build_view(model.get_layer(name), sub_taps, argument),
            len(sub_taps),
        )
    return _rewired_view(model, taps, sub_views, argument)


def _rewired_view(model, taps, sub_views, argument):
    """The view of a model whose taps reach into nested models.

    The nested models are replaced by their own views and the outer graph is
    called again on new inputs, reusing every layer (no weights are copied).
    """
    recorded = {}

    def call(layer, *args, **kwargs):
        if layer.name in sub_views:
            view, _ = sub_views[layer.name]
            output, inner = view(*args, **kwargs)
            recorded[layer.name] = (output, inner)
            return output
        output = layer(*args, **kwargs)
        recorded[layer.name] = (output, None)
        return output

    if isinstance(model, keras.Sequential):
        inputs = keras.Input(
            shape=tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype
        )
        outputs = inputs
        for layer in model.layers:
            outputs = call(layer, outputs)
    elif not LEGACY:
        clone = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call
        )
        inputs, outputs = _single_input(clone), clone.output
    else:
        raise ValueError(
            f"Argument `{argument}`: in the tf_keras flavour, a tap inside a "
            f"nested model is reachable when the outer model "
            f"({model.name!r}) is Sequential; it is a Functional model. Build "
            "the outer model from the nested model's layers, or use the "
            "Keras 3 flavour (the default), which rewires Functional models."
        )
    features, counters = [], {}
    for path, index in taps:
        output, inner = recorded[path[0]]
        if len(path) == 1:
            features.append(_select(output, index))
        else:
            position = counters.get(path[0], 0)
            counters[path[0]] = position + 1
            features.append(inner[position])
    return keras.Model(inputs, [outputs, features])


def feature_shape(model, path, index, argument: str):
    """The static shape of a tapped output (batch axis included)."""
    current = model
    for name in path[:-1]:
        current = current.get_layer(name)
    output = _layer_output(current.get_layer(path[-1]), index, argument, path)
    return tuple(output.shape)


__all__ = ["build_view", "check_graph_model", "feature_shape", "layer_path"]
