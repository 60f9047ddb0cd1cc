"""`--pixel-range`: the pixel range each model is fed.

A model that scales its own inputs (a `Rescaling(1/255)` first layer, the
keras.io convention, or a `Normalization` layer, as keras.applications
models have) takes images as they are stored, 0-255; any other model takes
them divided by 255, in [0, 1]. `auto` (the default) tells one from the
other per model with `keras_kd._utils.rescales_inputs`; `0-255` or `0-1`
says it for every model, and `MODEL=RANGE` (`teacher=0-255`) for one.

When the teacher and the student of `distill` take different ranges, the
Distiller gets each image twice, `{"teacher": ..., "student": ...}`, in each
model's own range, and routes them (`teacher_inputs` / `student_inputs`):
both models stay as they are, so the saved and exported student is the
student. `report` feeds one batch to every model, so there the data is in
the student's range (the `.tflite` file's too) and a teacher or baseline
that takes the other range is called through a `Rescaling` layer in front
of it.
"""

from __future__ import annotations

import argparse

RANGES = ("auto", "0-255", "0-1")
_WHY_AUTO = {
    "0-255": "auto: it has a Rescaling or Normalization layer",
    "0-1": "auto: no Rescaling or Normalization layer",
}


def option_type(models):
    """argparse type of `--pixel-range`: `RANGE` or `MODEL=RANGE`.

    Args:
        models: the model names `MODEL=` may name in this command (empty:
            only `RANGE`).

    Returns:
        A function from the text to `(model name or None, range)`.
    """

    def parse(text):
        model, _, value = text.rpartition("=")
        if value not in RANGES or (model and model not in models):
            names = "|".join(models)
            form = f" or MODEL=RANGE with MODEL one of {names}" if models else ""
            raise argparse.ArgumentTypeError(
                f"expected a RANGE, one of {', '.join(RANGES)}{form}; got {text}"
            )
        return (model or None), value

    return parse


def add_option(parser, models) -> None:
    """Adds `--pixel-range` to a command whose models are `models`."""
    per_model = (
        f" `MODEL=RANGE` sets one model's ({', '.join(models)}); repeat the "
        f"option for several."
        if models
        else ""
    )
    parser.add_argument(
        "--pixel-range",
        action="append",
        type=option_type(models),
        default=None,
        metavar="[MODEL=]RANGE" if models else "RANGE",
        help="the pixel values the model(s) take: 0-255 (images as stored, for "
        "a model that scales its own inputs) or 0-1 (divided by 255); auto "
        "(default) gives 0-255 to a model holding a Rescaling or Normalization "
        f"layer and 0-1 to any other.{per_model}",
    )


def resolve(choices, name: str, model) -> tuple:
    """`(range, why)` of the model called `name`.

    Args:
        choices: the parsed `--pixel-range` values (None when not given): a
            list of `(model name or None, range)`, the last one winning.
        name: the model's name in the command (`"teacher"`, ...).
        model: the Keras model (read by `auto`).

    Returns:
        `("0-255" or "0-1", why)`: the range, and how it was chosen, for
        messages.
    """
    from keras_kd._utils import rescales_inputs

    overall, own = "auto", None
    for model_name, value in choices or ():
        if model_name is None:
            overall = value
        elif model_name == name:
            own = value
    chosen = own or overall
    if chosen != "auto":
        return chosen, "set by --pixel-range"
    value = "0-255" if rescales_inputs(model) else "0-1"
    return value, _WHY_AUTO[value]


def describe(ranges: dict) -> str:
    """One line: `Pixel range: teacher 0-255 (auto: ...), student 0-1 (...).`"""
    parts = [f"{name} {value} ({why})" for name, (value, why) in ranges.items()]
    return f"Pixel range: {', '.join(parts)}."


def other(value: str) -> str:
    """The range that is not `value`."""
    return "0-1" if value == "0-255" else "0-255"


def to_range(x, fed: str, wanted: str):
    """Images `x` in the range `fed`, given in the range `wanted`."""
    if fed == wanted:
        return x
    return x / 255.0 if wanted == "0-1" else x * 255.0


def routed(dataset, teacher_range: str, student_range: str):
    """`(x, y)` batches in the student's range as `({"teacher", "student"}, y)`.

    Each model gets the images in its own range (`distill`, when the two
    differ).
    """

    def both(x, y):
        teacher_x = to_range(x, student_range, teacher_range)
        return {"teacher": teacher_x, "student": x}, y

    return dataset.map(both)


def fed_through(model, fed: str, wanted: str):
    """`model`, or a model that takes range `fed` and gives it range `wanted`.

    The wrapper is `Input -> Rescaling -> model`: it shares `model`'s weights
    and has no weights of its own (`report`, for a teacher or baseline whose
    range differs from the student's).
    """
    if fed == wanted:
        return model
    from keras_kd.backend import keras

    first = model.inputs[0]
    inputs = keras.Input(tuple(first.shape[1:]), dtype=first.dtype)
    factor = 1.0 / 255.0 if wanted == "0-1" else 255.0
    scaled = keras.layers.Rescaling(factor, name=f"{model.name}_pixel_range")(inputs)
    return keras.Model(inputs, model(scaled), name=model.name)


def own_figures(report, name: str, model, first, runs: int = 20) -> None:
    """Puts `model`'s own size and latency in `report.models[name]`.

    `report` ran `model` through `fed_through`; the wrapper's `.keras` file
    is larger (HDF5 groups of the nesting) and its call slower than the
    model's own. Both are measured again on `model` itself, as
    `kd.report.compare` measures them: the size of the (uncompiled) model
    saved as `.keras`, and the median of `runs` batch-1 calls after three
    warm-up calls.

    Args:
        report: the `kd.report.Report`.
        name: the model's name in the report (`"teacher"`, `"baseline"`).
        model: the model itself, uncompiled (as loaded from its file).
        first: one image in the model's own range, batch of 1.
        runs: timed calls, `compare`'s `latency_runs`.
    """
    import os
    import tempfile
    import time

    import numpy as np

    row = report.models[name]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        row["size_bytes"] = os.path.getsize(path)
    if row.get("latency_ms") is None:
        return
    for _ in range(min(3, runs)):
        model.predict_on_batch(first)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict_on_batch(first)
        times.append(time.perf_counter() - start)
    row["latency_ms"] = 1000.0 * float(np.median(times))
