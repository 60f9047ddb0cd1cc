"""`FeatureMatch`: one pair of layers the student learns to match."""

from __future__ import annotations

from keras_kd import _utils
from keras_kd.backend import keras, register_serializable

_PROJECTIONS = ("auto", "student", "teacher", None)
_SPATIAL = (None, "pool", "resize")


def _feature_loss(identifier):
    # Imported here: keras_kd.losses is a sibling module; the resolver is its
    # public function.
    from keras_kd.losses import get_feature_loss

    return get_feature_loss(identifier)


def _check_layer_spec(spec, argument: str):
    """`spec` as `(layer or path, output index or None)`."""
    index = None
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError(
                f"Argument `{argument}` given as a tuple must be (layer, "
                f"output_index). Received: {argument}={spec!r}."
            )
        spec, index = spec
        index = _utils.check_int(index, f"{argument}[1]", 0, "an output index")
    if isinstance(spec, str):
        if not spec or any(not part for part in spec.split("/")):
            raise ValueError(
                f"Argument `{argument}` must name a layer, or a path "
                f'"nested_model/layer" of non-empty names. Received: '
                f"{argument}={spec!r}."
            )
    elif not isinstance(spec, keras.layers.Layer):
        raise TypeError(
            f"Argument `{argument}` must be a layer name, a path "
            '"nested_model/layer", a layer object, or a tuple (one of these, '
            f"output_index). Received: {argument}={spec!r} of type "
            f"{type(spec).__name__}."
        )
    return spec, index


@register_serializable
class FeatureMatch:
    """One pair of layers whose outputs the student learns to match.

    Given to `keras_kd.Distiller(..., features=[...])`. The Distiller adds
    `weight * loss(teacher_feature, student_feature)` to the student's loss:

        loss = alpha * distillation + (1 - alpha) * hard
               + sum_i weight_i * feature_loss_i

    Args:
        teacher_layer: the teacher's layer: its name, the layer object, a
            path `"nested_model/layer"` into a nested model, or a tuple
            `(one of these, output_index)` for a layer with several outputs
            (e.g. `("mha", 1)` for the attention scores of a
            `MultiHeadAttention` called with `return_attention_scores=True`).
        student_layer: the student's layer, in the same forms.
        loss: how to compare the two: `"mse"` (default), `"cosine"`,
            `"attention_transfer"`, `"relational"`, `"attention_map"`, a
            `keras_kd.losses` feature loss, or a function
            `f(teacher_feature, student_feature)` returning one value per
            sample.
        weight: the term's weight, a number >= 0 (default 1).
        projection: `"auto"` (default): where the channel widths differ and
            the loss needs equal widths, a learned adapter maps the student's
            feature to the teacher's width; `"student"`: that adapter always
            (FitNets' regressor); `"teacher"`: an adapter maps the teacher's
            feature to the student's width instead; None: never (widths must
            match, or the loss must not need it). A teacher-side adapter can
            shrink the teacher's feature towards zero to lower an MSE; prefer
            the student side.
        spatial: None (default): spatial sizes must match; `"pool"`: the
            larger map is average-pooled to the smaller one's size (an
            integer factor); `"resize"`: the student's map is resized
            (bilinear) to the teacher's size.
        teacher: which teacher the tap reads, an index into the Distiller's
            list of teachers (default 0).

    Example:

    ```python
    hint = kd.FeatureMatch("teacher_block2", "student_block2", loss="mse")
    at = kd.FeatureMatch("teacher_block3", "student_block3",
                         loss="attention_transfer", weight=500.0)
    distiller = kd.Distiller(teacher, student, features=[hint, at])
    ```
    """

    def __init__(
        self,
        teacher_layer,
        student_layer,
        loss="mse",
        weight: float = 1.0,
        projection: str | None = "auto",
        spatial: str | None = None,
        teacher: int = 0,
    ):
        self.teacher_layer, self.teacher_index = _check_layer_spec(
            teacher_layer, "teacher_layer"
        )
        self.student_layer, self.student_index = _check_layer_spec(
            student_layer, "student_layer"
        )
        self.loss = _feature_loss(loss)
        self.weight = _utils.check_number(weight, "weight", low=0.0)
        if projection not in _PROJECTIONS:
            raise ValueError(
                "Argument `projection` must be one of "
                f"{', '.join(repr(p) for p in _PROJECTIONS)}. "
                f"Received: projection={projection!r}."
            )
        if spatial not in _SPATIAL:
            raise ValueError(
                "Argument `spatial` must be None, 'pool' or 'resize'. "
                f"Received: spatial={spatial!r}."
            )
        self.projection = projection
        self.spatial = spatial
        self.teacher = _utils.check_int(teacher, "teacher", 0, "a teacher's index")

    def __repr__(self):
        return (
            f"FeatureMatch({_describe(self.teacher_layer, self.teacher_index)} <- "
            f"{_describe(self.student_layer, self.student_index)}, "
            f"loss={type(self.loss).__name__}, weight={self.weight})"
        )

    def get_config(self) -> dict:
        def spec(layer, index):
            name = layer if isinstance(layer, str) else layer.name
            return name if index is None else [name, index]

        return {
            "teacher_layer": spec(self.teacher_layer, self.teacher_index),
            "student_layer": spec(self.student_layer, self.student_index),
            "loss": keras.saving.serialize_keras_object(self.loss),
            "weight": self.weight,
            "projection": self.projection,
            "spatial": self.spatial,
            "teacher": self.teacher,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        loss = config.pop("loss", "mse")
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        for key in ("teacher_layer", "student_layer"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        return cls(loss=loss, **config)


def _describe(layer, index) -> str:
    name = layer if isinstance(layer, str) else repr(layer.name)
    return name if index is None else f"{name}[{index}]"


__all__ = ["FeatureMatch"]
