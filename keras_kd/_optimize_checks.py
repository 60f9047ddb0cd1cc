"""What `keras_kd.optimize` checks first: the flavour, the model, the layers.

tensorflow-model-optimization (tfmot) loaded only in the tf_keras flavour,
or an error that explains the fix; the Sequential or Functional model tfmot
can rewrite; the layers a user asks to wrap, as a predicate. Users import
nothing from here: `keras_kd.optimize` is the public face.
"""

from __future__ import annotations

from keras_kd import backend
from keras_kd._utils import check_model, is_graph_model
from keras_kd.backend import keras


def load_tfmot(function: str):
    """tensorflow-model-optimization, or an error that explains the fix."""
    if not backend.LEGACY:
        raise RuntimeError(
            f"`keras_kd.optimize.{function}` needs tensorflow-model-"
            "optimization, which works with tf_keras (Keras 2) only, and this "
            "process uses Keras 3. Set the environment variable "
            "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported (e.g. "
            "`TF_USE_LEGACY_KERAS=1 python train.py`), install the extra with "
            "`pip install keras-kd[optimize]`, and build the models with "
            "`from keras_kd.backend import keras`."
        )
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"`keras_kd.optimize.{function}` needs tensorflow-model-"
            "optimization. Install it with `pip install keras-kd[optimize]` "
            "(or `pip install tensorflow-model-optimization tf-keras`)."
        ) from e
    return tfmot


def check_graph_model(model, argument: str, function: str) -> None:
    check_model(model, argument)
    if not is_graph_model(model):
        raise ValueError(
            f"`keras_kd.optimize.{function}` needs a Sequential or Functional "
            "model: tensorflow-model-optimization rewrites the model's graph "
            f"of layers. Received: {argument}={model.name!r}, a subclassed "
            f"{type(model).__name__}. Rebuild the student with the Functional "
            "API (keras.Input ... keras.Model(inputs, outputs))."
        )
    if not model.built:
        raise ValueError(
            f"Argument `{argument}` must be built. Received: "
            f"{argument}={model.name!r} with built=False. Give it a "
            "`keras.Input`."
        )


def layer_selector(model, layers, argument: str = "layers"):
    """A predicate over the model's layers, from names and / or classes."""
    if layers is None:
        return None
    if isinstance(layers, (str, type)):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set)):
        raise TypeError(
            f"Argument `{argument}` must be None or a non-empty list of layer "
            "names and / or layer classes (e.g. [keras.layers.Dense]). "
            f"Received: {argument}={layers!r} of type {type(layers).__name__}."
        )
    if not layers:
        raise ValueError(
            f"Argument `{argument}` must be None or a non-empty list of layer "
            "names and / or layer classes (e.g. [keras.layers.Dense]). "
            f"Received: {argument}={layers!r}."
        )
    names = {layer.name for layer in model.layers}
    wanted_names, wanted_types = set(), []
    for item in layers:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(
                    f"Argument `{argument}` names a layer that the model does "
                    f"not have. Received: {item!r}. Expected one of "
                    f"{sorted(names)}."
                )
            wanted_names.add(item)
        elif isinstance(item, type) and issubclass(item, keras.layers.Layer):
            wanted_types.append(item)
        else:
            raise TypeError(
                f"Argument `{argument}` must hold layer names or layer "
                f"classes. Received the item {item!r} of type "
                f"{type(item).__name__}."
            )

    def selected(layer) -> bool:
        return layer.name in wanted_names or isinstance(layer, tuple(wanted_types))

    if not any(selected(layer) for layer in model.layers):
        raise ValueError(
            f"Argument `{argument}` selects no layer of model {model.name!r}. "
            f"Received: {argument}={layers!r}; its layers are "
            f"{[f'{layer.name} ({type(layer).__name__})' for layer in model.layers]}."
        )
    return selected
