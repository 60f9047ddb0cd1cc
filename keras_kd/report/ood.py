"""Out-of-distribution inputs: how uncertain each model is off its data.

`compare(..., ood_data=...)` runs every model once over inputs that come
from no class the models know (no labels needed) and summarises, per model,
the mean predictive entropy on the labelled in-distribution data and on the
OOD inputs, and the AUROC with which the entropy tells them apart (OOD as
the positive class: higher entropy, more likely OOD). A distilled student
that is more confident than its teacher off the data (lower mean OOD
entropy) is flagged in the report's bias section.
"""

from __future__ import annotations

import numpy as np

from keras_kd._batches import check_data_kind, iterate_batches
from keras_kd.backend import tf
from keras_kd.report import metrics

_OOD_EXPECTED = (
    "out-of-distribution inputs: a numpy array, a tuple (x,) or (x, y) of "
    "arrays (labels are ignored) or a tf.data.Dataset, with samples of the "
    "models' input shape"
)


def check_ood_data(ood_data) -> None:
    """Raises `TypeError` unless `ood_data` is None or inputs `fit` takes."""
    check_data_kind(ood_data, "ood_data")


def _outputs(model, packed, name):
    outputs = model.predict_on_batch(packed)
    flat = tf.nest.flatten(outputs)
    if len(flat) != 1:
        raise ValueError(
            f"Argument `{name}` must have one output (batch, num_classes). "
            f"Received a model with {len(flat)} outputs."
        )
    return np.asarray(flat[0])


def ood_probabilities(models, ood_data, specs, structure, batch_size) -> dict:
    """Per name the probabilities of `models[name]` on the OOD inputs.

    Args:
        models: `{name: keras.Model}`.
        ood_data: the OOD inputs (labels, if any, are ignored).
        specs: one `tf.TensorSpec` per flat model input.
        structure: packs the flat inputs into what the models take.
        batch_size: samples per model call.

    Raises:
        ValueError: naming `ood_data` if its samples do not have the models'
            input shape, or if it yields no samples.
    """
    parts = {name: [] for name in models}
    for inputs, _ in iterate_batches(ood_data, specs, "ood_data", None):
        for start in range(0, len(inputs[0]), batch_size):
            chunk = [a[start : start + batch_size] for a in inputs]
            packed = tf.nest.pack_sequence_as(structure, chunk)
            for name, model in models.items():
                parts[name].append(_outputs(model, packed, name))
    if not next(iter(parts.values())):
        raise ValueError(
            f"Argument `ood_data` yielded no samples. Expected {_OOD_EXPECTED}."
        )
    return {
        name: metrics.to_probabilities(np.concatenate(chunks))
        for name, chunks in parts.items()
    }


def ood_summary(in_probs: dict, ood_probs: dict) -> dict:
    """The OOD figures of a report.

    Args:
        in_probs: `{name: probabilities on the in-distribution data}`.
        ood_probs: `{name: probabilities on the OOD inputs}`, the same names
            (at least "teacher" and "student").

    Returns:
        A dict of plain values: `num_samples` (OOD inputs), `models` (name
        to `entropy_in` and `entropy_ood`, the mean predictive entropies in
        nats, and `auroc`, of the entropy separating OOD inputs from the
        data, OOD positive), `entropy_gap` (the student's mean OOD entropy
        minus the teacher's) and `student_more_confident` (whether that gap
        is negative: the student is surer than its teacher off the data).
    """
    rows = {}
    for name, probs in ood_probs.items():
        inside = metrics.predictive_entropy(in_probs[name])
        outside = metrics.predictive_entropy(probs)
        rows[name] = {
            "entropy_in": float(inside.mean()),
            "entropy_ood": float(outside.mean()),
            "auroc": metrics.auroc(inside, outside),
        }
    gap = rows["student"]["entropy_ood"] - rows["teacher"]["entropy_ood"]
    return {
        "num_samples": int(len(ood_probs["teacher"])),
        "models": rows,
        "entropy_gap": float(gap),
        "student_more_confident": bool(gap < 0.0),
    }
