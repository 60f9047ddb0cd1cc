"""Standard TFLite metadata for image classifiers, as phone apps read it.

MediaPipe Tasks (and the older Task Library) find a model's labels, input
normalization and tensor roles in the `TFLITE_METADATA` entry of the file's
metadata table: a `ModelMetadata` flatbuffer (schema `metadata_schema.fbs`,
file identifier `M001`) with the associated files (`labels.txt`) appended to
the `.tflite` file as a zip archive. This module writes that layout with the
flatbuffers `Builder` directly, slot by slot from the schema, and reads it
back, so no metadata writer (and none of the protobuf pins that come with
them) is needed.

The schema's field order gives the slots below; a union field takes two
slots, its type then its value.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table

from keras_kd.export._convert import add_metadata

FIELD_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
# The oldest parser that understands every field written here (all from the
# schema's 1.0.0).
MIN_PARSER_VERSION = "1.0.0"

COLOR_SPACES = {1: "RGB", 2: "GRAYSCALE"}
FILE_TYPES = {0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS"}
# Union members: ContentProperties and ProcessUnitOptions.
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2
_NORMALIZATION_OPTIONS = 1
_TENSOR_AXIS_LABELS = 2
# Slots, from the schema's field order.
_FILE = {"name": 0, "description": 1, "type": 2}
_IMAGE = {"color_space": 0}
_CONTENT = {"properties_type": 0, "properties": 1}
_NORMALIZATION = {"mean": 0, "std": 1}
_UNIT = {"options_type": 0, "options": 1}
_STATS = {"max": 0, "min": 1}
_TENSOR = {
    "name": 0,
    "description": 1,
    "content": 3,
    "process_units": 4,
    "stats": 5,
    "associated_files": 6,
}
_SUBGRAPH = {"name": 0, "inputs": 2, "outputs": 3}
_MODEL = {
    "name": 0,
    "description": 1,
    "version": 2,
    "subgraphs": 3,
    "author": 4,
    "license": 5,
    "min_parser_version": 7,
}


@dataclasses.dataclass(frozen=True)
class ImageClassifierMetadata:
    """What the standard metadata of an image classifier says.

    `mean` and `std` have one value per channel: the model's input is
    `(pixel - mean) / std` for pixels in [0, 255]. `integer_input` is True
    for a file whose input tensor is int8 (no stats are written then: the
    tensor's quantization parameters say how pixels map to it).
    """

    name: str
    description: str
    channels: int
    mean: tuple
    std: tuple
    labels: tuple | None
    integer_input: bool = False

    @property
    def color_space(self) -> str:
        return "GRAYSCALE" if self.channels == 1 else "RGB"


def describe(model, specs, labels, normalization, quantization):
    """The `ImageClassifierMetadata` of `model`, or None without `labels`
    and `normalization`; raises when the model is not an image classifier
    that the metadata can describe. `labels` and `normalization` come
    checked (`_checks.check_labels`, `check_normalization`)."""
    if labels is None and normalization is None:
        return None
    argument = "labels" if labels is not None else "normalization"
    if labels is not None and normalization is None:
        raise ValueError(
            "Argument `normalization` is required with `labels`: the "
            "metadata tells the app how to turn pixels into the model's "
            "input, and MediaPipe refuses a float input without it. Received: "
            "normalization=None. Expected (mean, std) such that the input is "
            "(pixel - mean) / std, e.g. (127.5, 127.5) for inputs in [-1, 1], "
            "(0, 255) for [0, 1], (0, 1) for raw pixels."
        )
    shapes = [tuple(spec.shape) for spec in specs]
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][-1] not in (1, 3):
        raise ValueError(
            f"Argument `{argument}` describes an image classifier, but the "
            f"model's inputs have shapes {shapes}. Expected one image input "
            "(batch, height, width, channels) with 3 (RGB) or 1 (grayscale) "
            "channels; leave labels and normalization out for other models."
        )
    channels = int(shapes[0][-1])
    classes = _num_classes(model, shapes[0], argument)
    mean, std = normalization
    mean, std = _per_channel(mean, channels), _per_channel(std, channels)
    if labels is not None and len(labels) != classes:
        raise ValueError(
            f"Argument `labels` must name each of the model's {classes} "
            f"classes. Received {len(labels)} labels: {_preview(labels)}."
        )
    return ImageClassifierMetadata(
        name=model.name,
        description=(
            f"Image classifier of {classes} classes, exported by keras-kd "
            f"({quantization or 'float32'})."
        ),
        channels=channels,
        mean=mean,
        std=std,
        labels=labels,
        integer_input=quantization == "int8_io",
    )


def _per_channel(values, channels):
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(
            f"Argument `normalization` must give one mean and one std, or one "
            f"per channel ({channels}). Received a part of {len(values)} "
            f"values: {list(values)}."
        )
    return values


def _num_classes(model, shape, argument) -> int:
    """The class count of a model with one (batch, classes) output, from a
    call on one blank image."""
    blank = np.zeros((1,) + tuple(d or 1 for d in shape[1:]), np.float32)
    outputs = model(blank, training=False)
    if isinstance(outputs, (list, tuple, dict)) or len(outputs.shape) != 2:
        described = (
            f"{len(outputs)} outputs"
            if isinstance(outputs, (list, tuple, dict))
            else f"an output of shape {tuple(outputs.shape)}"
        )
        raise ValueError(
            f"Argument `{argument}` describes an image classifier, but the "
            f"model has {described}. Expected one output (batch, classes)."
        )
    return int(outputs.shape[-1])


def _preview(labels) -> str:
    shown = ", ".join(repr(label) for label in labels[:5])
    return f"[{shown}{', ...' if len(labels) > 5 else ''}]"


def attach(content: bytes, info: ImageClassifierMetadata) -> bytes:
    """`content` (a `.tflite` flatbuffer) with the standard metadata of
    `info` in its metadata table and the label file zipped after it."""
    content = add_metadata(content, {FIELD_NAME: build(info)})
    if info.labels:
        content = append_files(content, {LABELS_FILE: label_file(info.labels)})
    return content


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def build(info: ImageClassifierMetadata) -> bytes:
    """The `ModelMetadata` flatbuffer for `info`."""
    b = flatbuffers.Builder(1024)
    subgraph = _subgraph(b, info)
    fields = {
        "name": b.CreateString(info.name),
        "description": b.CreateString(info.description),
        "version": b.CreateString("1"),
        "subgraphs": _offsets(b, [subgraph]),
        "author": b.CreateString("keras-kd"),
        "min_parser_version": b.CreateString(MIN_PARSER_VERSION),
    }
    b.StartObject(8)
    for key, offset in fields.items():
        b.PrependUOffsetTRelativeSlot(_MODEL[key], offset, 0)
    b.Finish(b.EndObject(), FILE_IDENTIFIER)
    return bytes(b.Output())


def _subgraph(b, info):
    inputs = _offsets(b, [_input_tensor(b, info)])
    outputs = _offsets(b, [_output_tensor(b, info)])
    name = b.CreateString("main")
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH["name"], name, 0)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH["inputs"], inputs, 0)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH["outputs"], outputs, 0)
    return b.EndObject()


def _input_tensor(b, info):
    b.StartObject(2)
    b.PrependInt8Slot(_IMAGE["color_space"], 2 if info.channels == 1 else 1, 0)
    properties = b.EndObject()
    content = _content(b, _IMAGE_PROPERTIES, properties)
    mean, std = _floats(b, info.mean), _floats(b, info.std)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(_NORMALIZATION["mean"], mean, 0)
    b.PrependUOffsetTRelativeSlot(_NORMALIZATION["std"], std, 0)
    options = b.EndObject()
    b.StartObject(2)
    b.PrependUint8Slot(_UNIT["options_type"], _NORMALIZATION_OPTIONS, 0)
    b.PrependUOffsetTRelativeSlot(_UNIT["options"], options, 0)
    units = _offsets(b, [b.EndObject()])
    stats = None
    if not info.integer_input:  # the range of (pixel - mean) / std
        low = [(0.0 - m) / s for m, s in zip(info.mean, info.std)]
        high = [(255.0 - m) / s for m, s in zip(info.mean, info.std)]
        stats = _stats(b, low, high)
    return _tensor_table(
        b,
        "image",
        f"Input image ({info.color_space}), normalized as (pixel - mean) / std.",
        {"content": content, "process_units": units, "stats": stats},
    )


def _output_tensor(b, info):
    b.StartObject(0)
    content = _content(b, _FEATURE_PROPERTIES, b.EndObject())
    files = None
    if info.labels:
        file_name = b.CreateString(LABELS_FILE)
        file_description = b.CreateString("One label per class, in class order.")
        b.StartObject(5)
        b.PrependUOffsetTRelativeSlot(_FILE["name"], file_name, 0)
        b.PrependUOffsetTRelativeSlot(_FILE["description"], file_description, 0)
        b.PrependInt8Slot(_FILE["type"], _TENSOR_AXIS_LABELS, 0)
        files = _offsets(b, [b.EndObject()])
    return _tensor_table(
        b,
        "probability",
        "Scores of the classes (the highest wins).",
        {"content": content, "associated_files": files},
    )


def _tensor_table(b, name, description, children):
    """A `TensorMetadata` table: its name, description and the `children`
    `{field: offset or None}` already built."""
    name, description = b.CreateString(name), b.CreateString(description)
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(_TENSOR["name"], name, 0)
    b.PrependUOffsetTRelativeSlot(_TENSOR["description"], description, 0)
    for field, offset in children.items():
        if offset is not None:
            b.PrependUOffsetTRelativeSlot(_TENSOR[field], offset, 0)
    return b.EndObject()


def _content(b, kind, properties):
    b.StartObject(3)
    b.PrependUint8Slot(_CONTENT["properties_type"], kind, 0)
    b.PrependUOffsetTRelativeSlot(_CONTENT["properties"], properties, 0)
    return b.EndObject()


def _stats(b, low, high):
    high, low = _floats(b, high), _floats(b, low)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(_STATS["max"], high, 0)
    b.PrependUOffsetTRelativeSlot(_STATS["min"], low, 0)
    return b.EndObject()


def _floats(b, values):
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependFloat32(float(value))
    return b.EndVector()


def _offsets(b, offsets):
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def append_files(content: bytes, files: dict) -> bytes:
    """`content` followed by a zip archive of `{name: bytes}` (stored, not
    compressed), as MediaPipe's `MetadataPopulator` appends associated files:
    the flatbuffer still starts at byte 0, and the file is also a zip."""
    stream = io.BytesIO()
    stream.write(content)
    with zipfile.ZipFile(stream, "a") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return stream.getvalue()


def label_file(labels) -> bytes:
    return ("\n".join(labels) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def parse(buffer: bytes, content: bytes | None = None) -> dict:
    """The fields of a `ModelMetadata` flatbuffer, as plain values.

    With the whole file's `content`, each tensor's `TENSOR_AXIS_LABELS` file
    is read from the appended zip into `labels` (None when absent).
    """
    buffer = bytes(buffer)
    if buffer[4:8] != FILE_IDENTIFIER:
        raise ValueError(
            f"The {FIELD_NAME} entry is not a metadata flatbuffer (file "
            f"identifier {buffer[4:8]!r}, expected {FILE_IDENTIFIER!r})."
        )
    root = Table(buffer, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buffer, 0))
    archive = _archive(content)
    result = {key: _string(root, _MODEL[key]) for key in _MODEL if key != "subgraphs"}
    subgraphs = _tables(root, _MODEL["subgraphs"])
    result["inputs"], result["outputs"], result["labels"] = [], [], None
    if subgraphs:
        result["inputs"] = [_tensor(t, archive) for t in _tables(subgraphs[0], 2)]
        result["outputs"] = [_tensor(t, archive) for t in _tables(subgraphs[0], 3)]
    for tensor in result["outputs"]:
        if tensor["labels"] is not None:
            result["labels"] = tensor["labels"]
            break
    return result


def _archive(content):
    if content is None:
        return {}
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def _tensor(table, archive) -> dict:
    tensor = {
        "name": _string(table, _TENSOR["name"]),
        "description": _string(table, _TENSOR["description"]),
        "color_space": None,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "associated_files": [],
        "labels": None,
    }
    content = _child(table, _TENSOR["content"])
    if content is not None:
        kind = _scalar(content, _CONTENT["properties_type"], number_types.Uint8Flags)
        properties = _union(content, _CONTENT["properties"])
        if kind == _IMAGE_PROPERTIES and properties is not None:
            space = _scalar(properties, _IMAGE["color_space"], number_types.Int8Flags)
            tensor["color_space"] = COLOR_SPACES.get(space, "UNKNOWN")
    for unit in _tables(table, _TENSOR["process_units"]):
        kind = _scalar(unit, _UNIT["options_type"], number_types.Uint8Flags)
        options = _union(unit, _UNIT["options"])
        if kind == _NORMALIZATION_OPTIONS and options is not None:
            tensor["mean"] = _float_list(options, _NORMALIZATION["mean"])
            tensor["std"] = _float_list(options, _NORMALIZATION["std"])
    stats = _child(table, _TENSOR["stats"])
    if stats is not None:
        tensor["min"] = _float_list(stats, _STATS["min"])
        tensor["max"] = _float_list(stats, _STATS["max"])
    for entry in _tables(table, _TENSOR["associated_files"]):
        name = _string(entry, _FILE["name"])
        kind = FILE_TYPES.get(
            _scalar(entry, _FILE["type"], number_types.Int8Flags), "OTHER"
        )
        tensor["associated_files"].append({"name": name, "type": kind})
        if kind == "TENSOR_AXIS_LABELS" and name in archive:
            tensor["labels"] = archive[name].decode("utf-8").splitlines()
    return tensor


def _offset(table, slot):
    return table.Offset(4 + 2 * slot)


def _string(table, slot):
    o = _offset(table, slot)
    return table.String(o + table.Pos).decode("utf-8") if o else None


def _scalar(table, slot, flags):
    o = _offset(table, slot)
    return table.Get(flags, o + table.Pos) if o else 0


def _child(table, slot):
    o = _offset(table, slot)
    return Table(table.Bytes, table.Indirect(o + table.Pos)) if o else None


def _union(table, slot):
    o = _offset(table, slot)
    if not o:
        return None
    child = Table(bytearray(), 0)
    table.Union(child, o)
    return child


def _tables(table, slot):
    o = _offset(table, slot)
    if not o:
        return []
    start = table.Vector(o)
    return [
        Table(table.Bytes, table.Indirect(start + 4 * i))
        for i in range(table.VectorLen(o))
    ]


def _float_list(table, slot):
    o = _offset(table, slot)
    if not o:
        return None
    start = table.Vector(o)
    return [
        float(table.Get(number_types.Float32Flags, start + 4 * i))
        for i in range(table.VectorLen(o))
    ]
