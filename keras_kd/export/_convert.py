"""From a Keras model to the bytes of a `.tflite` file.

The model is saved as a SavedModel with one serving signature (flat inputs
`input_0`, `input_1`, ... with a dynamic batch dimension; float32 outputs
`output_0`, ...), converted with `tf.lite.TFLiteConverter` configured for the
quantization mode, and metadata entries are added to the flatbuffer.
"""

from __future__ import annotations

import tempfile
import warnings

import numpy as np

from keras_kd import backend
from keras_kd._utils import is_graph_model, walk_layers
from keras_kd.backend import keras, tf
from keras_kd.export._checks import FULL_INTEGER

# Class names of tfmot's quantization-aware and pruning wrappers.
QAT_LAYERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
PRUNING_LAYERS = ("PruneLowMagnitude",)


# ---------------------------------------------------------------------------
# The model to convert
# ---------------------------------------------------------------------------


def layers_named(model, class_names) -> list:
    """The names of `model`'s layers (nested, wrapped) of the given classes."""
    return [
        layer.name
        for layer in walk_layers(model)
        if type(layer).__name__ in class_names
    ]


def float32_model(model):
    """`(model to convert, note)`: a float32 copy of a mixed-precision model.

    LiteRT has no float16 kernels for a model's own float16 computation
    (its float16 mode stores weights only), so a model built under
    `mixed_float16` / `mixed_bfloat16` is converted from a copy computing in
    float32, with the same weights. A float32 model is returned as it is,
    with the note None.
    """
    mixed = sorted(
        {
            str(layer.compute_dtype)
            for layer in walk_layers(model)
            if getattr(layer, "compute_dtype", None) not in (None, "float32")
            and tf.as_dtype(layer.compute_dtype).is_floating
            and tf.as_dtype(layer.compute_dtype) != tf.float32
        }
    )
    if not mixed:
        return model, None
    if not is_graph_model(model):
        raise ValueError(
            f"Argument `model` computes in {', '.join(mixed)} (a mixed "
            "precision policy), which LiteRT cannot run, and as a subclassed "
            f"model ({type(model).__name__}) it cannot be copied to float32 "
            "here. Build the same model under "
            "keras.mixed_precision.set_global_policy('float32'), copy the "
            "weights with `set_weights(model.get_weights())`, and export that."
        )

    def float32_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    return copy, (
        f"The model computes in {', '.join(mixed)}; the file was converted "
        "from a float32 copy with the same weights, and compared with the "
        "model as it is."
    )


def _serving_fn(model, structure):
    def serve(*inputs):
        packed = tf.nest.pack_sequence_as(structure, list(inputs))
        outputs = tf.nest.flatten(model(packed, training=False))
        result = {}
        for i, output in enumerate(outputs):
            if output.dtype.is_floating and output.dtype != tf.float32:
                output = tf.cast(output, tf.float32)  # mixed precision
            result[f"output_{i}"] = output
        return result

    return serve


def _save_serving_model(model, structure, specs, directory) -> None:
    serve = _serving_fn(model, structure)
    if backend.LEGACY:
        module = tf.Module()
        module.model_variables = list(model.variables)
        function = tf.function(serve, input_signature=specs, autograph=False)
        module.serve = function
        tf.saved_model.save(
            module,
            directory,
            signatures={"serving_default": function.get_concrete_function()},
        )
    else:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve, input_signature=specs)
        archive.write_out(directory, verbose=False)


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------


def make_converter(saved_model_dir):
    """The converter (a function of its own so tests can make it fail)."""
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)


def convert(
    model,
    specs,
    structure,
    quantization,
    calibration,
    select_tf_ops: bool,
    converter_options: dict,
) -> bytes:
    """The `.tflite` bytes of `model`.

    Args:
        model: a float32 Keras model.
        specs: one `tf.TensorSpec` per flat input, named `input_<i>`.
        structure: packs the flat inputs into what `model` is called with.
        quantization: one of `QUANTIZATIONS`.
        calibration: a list of arrays (one per input) to calibrate the
            full-integer modes on, or None.
        select_tf_ops: allow TensorFlow ops without a builtin kernel.
        converter_options: further converter attributes to set.

    Raises:
        RuntimeError: when the converter fails.
    """
    with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as directory:
        _save_serving_model(model, structure, specs, directory)
        converter = make_converter(directory)
        _configure(converter, quantization, calibration, specs, select_tf_ops)
        for name, value in converter_options.items():
            if not hasattr(converter, name):
                raise ValueError(
                    "Argument `converter_options` names an attribute that "
                    f"`tf.lite.TFLiteConverter` does not have: {name!r}."
                )
            setattr(converter, name, value)
        try:
            with warnings.catch_warnings():
                # The converter's calibrator uses the deprecated
                # tf.lite.Interpreter, and warns about int8 inputs it handles.
                warnings.filterwarnings(
                    "ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated"
                )
                warnings.filterwarnings(
                    "ignore", message="Statistics for quantized inputs"
                )
                content = converter.convert()
        except Exception as e:  # the converter raises many kinds
            raise RuntimeError(
                _conversion_message(model, quantization, e, select_tf_ops)
            ) from e
    if not content:
        raise RuntimeError(
            f"Converting model {model.name!r} to TFLite returned no bytes."
        )
    return bytes(content)


def _configure(converter, quantization, calibration, specs, select_tf_ops):
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in FULL_INTEGER and calibration is not None:
        # Integer kernels only; the calibration fills in the ranges that a
        # quantization-aware model (if partly annotated) does not carry.
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = _representative_dataset(calibration, specs)
    # A quantization-aware model without calibration data: the converter
    # takes every range from its fake-quantization nodes.
    if quantization == "int8_io":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops


def _representative_dataset(calibration, specs):
    n = len(calibration[0])
    names = [s.name for s in specs]

    def generate():
        for i in range(n):
            yield {name: array[i : i + 1] for name, array in zip(names, calibration)}

    return generate


def _conversion_message(model, quantization, error, select_tf_ops) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    summary = "\n".join(lines[-12:]) if lines else type(error).__name__
    hint = ""
    if "TF Select" in text and not select_tf_ops:
        hint = (
            " Some operations have no LiteRT builtin kernel: pass "
            "select_tf_ops=True to keep them as TensorFlow ops (the app then "
            "needs the select-TF-ops library)."
        )
    return (
        f"Converting model {model.name!r} to TFLite "
        f"(quantization={quantization!r}) failed; nothing was written.{hint}\n"
        f"Converter error: {summary}"
    )


# ---------------------------------------------------------------------------
# The flatbuffer
# ---------------------------------------------------------------------------


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def add_metadata(content: bytes, metadata: dict) -> bytes:
    """`content` with the `{name: bytes}` entries added to its metadata."""
    from tensorflow.lite.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    if model.metadata is None:
        model.metadata = []
    if model.buffers is None:
        model.buffers = []
    for name, value in metadata.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value, dtype=np.uint8).copy()
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def metadata_entries(content: bytes) -> dict:
    """The metadata table of `.tflite` bytes, as `{name: bytes}`."""
    model = _schema().Model.GetRootAsModel(content, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buffer = model.Buffers(entry.Buffer())
        entries[entry.Name().decode("utf-8")] = bytes(buffer.DataAsNumpy())
    return entries


def flex_ops(content: bytes) -> list:
    """The TensorFlow (select, "Flex") ops `.tflite` bytes use, sorted."""
    model = _schema().Model.GetRootAsModel(content, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i).CustomCode()
        if code and code.startswith(b"Flex"):
            names.add(code.decode("utf-8")[len("Flex") :])
    return sorted(names)
