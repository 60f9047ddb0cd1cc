"""Reading intermediate layers: feature taps, multi-output views, adapters.

Feature-based distillation (FitNets, Romero et al. 2015; attention
transfer, Zagoruyko & Komodakis 2017; relational KD, Park et al. 2019)
asks the student to match what happens *inside* the teacher as well as its
outputs. A `FeatureMatch` names one pair of layers and how to compare them;
`keras_kd.Distiller(..., features=[...])` reads them.

Each model still runs **once per step**: for a model with taps, keras-kd
builds one multi-output view of it, `keras.Model(model.input, [model.output,
[tapped outputs]])`, once, sharing its layers (and weights), and calls the
view instead of the model. That needs a model with a graph of layers
(Sequential or Functional); a subclassed model is refused with an error that
says what to do.

Where the widths of a pair differ, a learned **projection adapter** (a 1x1
convolution for 4-D feature maps, a `Dense` on the last axis otherwise) maps
the student's feature to the teacher's width (FitNets' regressor), or the
teacher's to the student's (`projection="teacher"`). Adapters train with the
student and live in `Distiller.adapters`: they are never part of
`Distiller.student`, its saved file or its export.
"""

from keras_kd.taps.features import Features, align_spatial, make_adapter, plan_match
from keras_kd.taps.layer_map import layer_map, uniform_map
from keras_kd.taps.match import FeatureMatch
from keras_kd.taps.views import (
    build_view,
    check_graph_model,
    feature_shape,
    layer_path,
)

__all__ = [
    "FeatureMatch",
    "Features",
    "align_spatial",
    "build_view",
    "check_graph_model",
    "feature_shape",
    "layer_map",
    "layer_path",
    "make_adapter",
    "plan_match",
    "uniform_map",
]
