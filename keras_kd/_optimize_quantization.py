"""Quantization-aware distillation: `keras_kd.optimize.quantization_aware`.

A student whose forward pass simulates int8 arithmetic (tfmot's fake
quantization), so that it learns weights that survive conversion to a
full-integer `.tflite`. Users import it from `keras_kd.optimize`.
"""

from __future__ import annotations

from keras_kd._optimize_checks import check_graph_model, layer_selector, load_tfmot
from keras_kd.backend import keras


def quantization_aware(model, layers=None):
    """A quantization-aware copy of `model`, to distil into and export as int8.

    Wraps the layers with tfmot's fake quantization (8-bit weights and
    activations, as the int8 `.tflite` will compute them), so that training
    (usually a short fine-tuning of an already distilled student, with the
    teacher still guiding it) adapts the weights to int8 arithmetic. The
    returned model starts from `model`'s weights. Hand it to
    `keras_kd.Distiller` as the student, then export it with
    `keras_kd.export.to_tflite(..., quantization="int8")` (no calibration
    data is needed when every layer is annotated).

    Needs the tf_keras flavour (`TF_USE_LEGACY_KERAS=1`) and
    `pip install keras-kd[optimize]`.

    Args:
        model: a built Sequential or Functional tf_keras model.
        layers: None to quantize every layer (`tfmot...quantize_model`), or a
            list of layer names and / or classes to annotate only those
            (e.g. `[keras.layers.Dense]`); the others stay float (give
            `representative_data` to `to_tflite` to calibrate them).

    Returns:
        A new quantization-aware `keras.Model`.

    Example:

    ```python
    student_q = kd.optimize.quantization_aware(student)
    distiller = kd.Distiller(teacher=teacher, student=student_q)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4), loss=hard_loss,
                      alpha=0.9)
    distiller.fit(x_train, y_train, epochs=1)
    kd.export.to_tflite(student_q, "student_qat.tflite", quantization="int8")
    ```
    """
    tfmot = load_tfmot("quantization_aware")
    check_graph_model(model, "model", "quantization_aware")
    selected = layer_selector(model, layers)
    quantize = tfmot.quantization.keras
    try:
        if selected is None:
            return quantize.quantize_model(model)

        def annotate(layer):
            if selected(layer):
                return quantize.quantize_annotate_layer(layer)
            return layer

        annotated = keras.models.clone_model(model, clone_function=annotate)
        with quantize.quantize_scope():
            return quantize.quantize_apply(annotated)
    except RuntimeError as e:
        if "not supported" not in str(e):
            raise
        raise ValueError(
            f"tensorflow-model-optimization cannot quantize every layer of "
            f"model {model.name!r}: {e} Pass `layers=[...]` to annotate only "
            "the supported ones (e.g. [keras.layers.Dense, "
            "keras.layers.Conv2D])."
        ) from e
