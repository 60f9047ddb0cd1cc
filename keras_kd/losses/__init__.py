"""Distillation losses.

Each loss compares a student's output (`y_pred`) with a teacher's output
(`y_true`): the response losses their outputs softened by a temperature,
the feature losses their intermediate features. They are ordinary
`keras.losses.Loss` subclasses: the `Distiller` uses them, and so can any
Keras model compiled with teacher outputs as its targets
(`model.compile(loss=KLDivergence(4.0))` with `model.fit(x, teacher_logits)`).

| loss | the student matches | paper |
| --- | --- | --- |
| `KLDivergence` | the teacher's softened probabilities | Hinton 2015 |
| `KLDivergence(standardize=True)` | the same, logits z-scored | Sun 2024 |
| `SoftTargetCrossEntropy` | as `KLDivergence` (+ teacher entropy) | Hinton 2015 |
| `DIST` | correlations over classes and the batch | Huang 2022 |
| `DecoupledKD` | target / non-target parts apart; labels | Zhao 2022 |
| `ReverseKL` | the teacher's modes, mode-seeking (generative LMs) | Gu 2024 |
| `GeneralizedJSD` | between forward (beta=0) and reverse KL (beta=1) | Agarwal 2024 |
| `SkewKL` | KL to a mixture; skew reverse KL with `reverse=True` | Ko 2024 |
| `TotalVariation` | half the L1 distance of the distributions | Wen 2023 |
| `UniversalLogitDistance` | sorted probabilities; any vocabularies | Boizard 2024 |
| `FeatureMSE` | an intermediate feature (equal shapes) | Romero 2015 |
| `CosineDistance` | the direction of each feature vector | |
| `AttentionTransfer` | spatial attention maps (any widths) | Zagoruyko 2017 |
| `RelationalKD` | distances and angles in the batch (any widths) | Park 2019 |
| `AttentionMapLoss` | attention probabilities (any head counts) | Wang 2020 |

The feature losses (`keras_kd.losses.feature`) compare intermediate
features; those marked "any" (class attribute `width_agnostic = True`) need
no projection of the student's feature. `get_feature_loss` resolves a name
(`"mse"`, `"cosine"`, `"at"`, `"rkd"`, `"attention_map"`, ...), a config
or a function into one.

The computation always runs in float32, whatever the mixed-precision policy,
and softens logits with a numerically stable `log_softmax`, never
`log(softmax(...))`.

A loss that needs the batch's true classes sets `requires_labels = True`
and accepts `labels=` in `__call__`; the `Distiller` then calls it as
`loss(teacher_output, student_output, sample_weight=..., labels=y)`, with
`labels=None` on a batch without labels.
"""

from keras_kd.losses._base import (
    as_loss,
    softened_log_probs,
    standardize_logits,
    validate_temperature,
)
from keras_kd.losses.decoupled import DecoupledKD
from keras_kd.losses.feature import (
    AttentionMapLoss,
    AttentionTransfer,
    CosineDistance,
    FeatureMSE,
    RelationalKD,
    get_feature_loss,
)
from keras_kd.losses.generative import (
    GeneralizedJSD,
    ReverseKL,
    SkewKL,
    TotalVariation,
    UniversalLogitDistance,
)
from keras_kd.losses.response import DIST, KLDivergence, SoftTargetCrossEntropy

__all__ = [
    "DIST",
    "AttentionMapLoss",
    "AttentionTransfer",
    "CosineDistance",
    "DecoupledKD",
    "FeatureMSE",
    "GeneralizedJSD",
    "KLDivergence",
    "RelationalKD",
    "ReverseKL",
    "SkewKL",
    "SoftTargetCrossEntropy",
    "TotalVariation",
    "UniversalLogitDistance",
    "as_loss",
    "get_feature_loss",
    "softened_log_probs",
    "standardize_logits",
    "validate_temperature",
]
