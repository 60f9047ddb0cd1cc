"""`calibrate`: temperature scaling of a trained classifier (Guo et al. 2017).

A distilled student is often over- or under-confident: its top-1 probability
says 95% where it is right 85% of the time. Temperature scaling divides the
logits by one number `T`, fitted on held-out labelled data by minimizing the
negative log-likelihood, and so changes the confidence without changing a
single prediction (the arg-max is the same at any `T`). `calibrate` fits
`T` and returns the model followed by a `TemperatureScaling` layer, whose
output is `softmax(logits / T)`: a model that saves as a `.keras` file,
loads wherever `keras_kd` is imported, and exports with
`kd.export.to_tflite`.

The fit is a golden-section search on `log T` in numpy: the NLL is convex
in `1 / T`, so it has one minimum along `log T`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings

import numpy as np

from keras_kd._batches import (
    check_data_kind,
    input_specs,
    is_stream,
    iterate_batches,
    replayable,
)
from keras_kd._utils import (
    PROB_EPSILON,
    check_bool,
    check_int,
    check_model,
    check_number,
    is_graph_model,
    log_probs,
    output_is_probabilities,
)
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.report import metrics

# The temperatures searched: a fit at either end is reported in the notes.
TEMPERATURE_RANGE = (0.01, 100.0)

# The search stops when the bracket on log T is narrower than this.
_LOG_TOLERANCE = 1e-9
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

_DATA_EXPECTED = (
    "held-out labelled samples: a tuple (x, y) of arrays, or a "
    "tf.data.Dataset (or generator) of (x, y) batches"
)


@register_serializable
class TemperatureScaling(keras.layers.Layer):
    """Softmax of logits divided by a fixed temperature: `softmax(z / T)`.

    The layer `kd.calibrate` appends to a model. Its input is the model's
    logits, or, with `from_probabilities=True` (a model ending in softmax),
    its probabilities, whose logarithm (clipped at 1e-7) is taken as the
    logits. It has no weights; it computes in float32 whatever the
    mixed-precision policy.

    Args:
        temperature: the temperature `T`, a number > 0 (above 1 softens the
            probabilities, below 1 sharpens them).
        from_probabilities: whether the inputs are probabilities.
        **kwargs: passed to `keras.layers.Layer`.

    Example:

    ```python
    from keras_kd.calibrate import TemperatureScaling

    probabilities = TemperatureScaling(temperature=1.7)(student(inputs))
    ```
    """

    def __init__(
        self, temperature: float = 1.0, from_probabilities: bool = False, **kwargs
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = check_number(
            temperature,
            "temperature",
            low=0.0,
            low_open=True,
            what="the softmax temperature",
        )
        self.from_probabilities = check_bool(from_probabilities, "from_probabilities")

    def call(self, inputs):
        logits = tf.cast(inputs, tf.float32)
        if self.from_probabilities:
            logits = log_probs(logits)
        return tf.nn.softmax(logits / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "from_probabilities": self.from_probabilities,
            }
        )
        return config


@dataclasses.dataclass
class CalibrationResult:
    """What `kd.calibrate` fitted and measured.

    `print(result)` shows the temperature and the figures before and after.

    Attributes:
        model: the calibrated model: the original model's layers (their
            weights shared, not copied) followed by a `TemperatureScaling`
            layer; it outputs probabilities.
        temperature: the fitted temperature `T`.
        ece_before: expected calibration error of the model on the
            validation data (`num_bins` equal-width bins).
        ece_after: the same, of the calibrated model.
        nll_before: mean negative log-likelihood (nats) before.
        nll_after: the same, after.
        num_samples: the validation samples the temperature was fitted on.
        num_bins: the confidence bins of the ECE.
        from_probabilities: whether the model outputs probabilities (a final
            softmax) rather than logits.
        notes: anything the figures need to be read with.
    """

    model: object
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    num_samples: int
    num_bins: int = 15
    from_probabilities: bool = False
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        """The figures as plain Python values (JSON-able), without the model."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "model"
        }

    def __str__(self) -> str:
        lines = [
            f"Temperature scaling on {self.num_samples} samples: "
            f"T = {self.temperature:.4f}",
            f"  ECE ({self.num_bins} bins): {self.ece_before:.4f} -> "
            f"{self.ece_after:.4f}",
            f"  NLL (nats):     {self.nll_before:.4f} -> {self.nll_after:.4f}",
        ]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _nll_at(logits, labels, log_temperature: float) -> float:
    """Mean NLL of `softmax(logits / exp(log_temperature))`, in float64."""
    scaled = logits * math.exp(-log_temperature)
    top = scaled.max(-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(scaled - top).sum(-1))
    return float(np.mean(lse - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels) -> float:
    """The temperature `T` minimizing the NLL of `softmax(logits / T)`.

    A golden-section search on `log T` over `TEMPERATURE_RANGE`; the NLL is
    convex in `1 / T`, hence unimodal in `log T`, so the search finds its
    minimum (or the end of the range nearest it).

    Args:
        logits: float logits, shape `(num_samples, num_classes)`.
        labels: integer labels `(num_samples,)`, or one-hot rows.

    Returns:
        `T` as a float in `TEMPERATURE_RANGE`.

    Example:

    ```python
    from keras_kd.calibrate import fit_temperature

    T = fit_temperature(student.predict(x_val), y_val)
    ```
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2 or not len(logits):
        raise ValueError(
            "Argument `logits` must have shape (num_samples, num_classes) with "
            f"num_classes >= 2 and samples. Received shape {logits.shape}."
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError("Argument `logits` holds values that are not finite.")
    labels = metrics.labels_of(labels, len(logits), logits.shape[1])

    def nll(log_t):
        return _nll_at(logits, labels, log_t)

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > _LOG_TOLERANCE:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(d)
    candidates = [(nll(low), low), (nll(high), high), (nll((a + b) / 2), (a + b) / 2)]
    return float(math.exp(min(candidates)[1]))


def _check_validation_data(data):
    if data is None:
        raise ValueError(
            "Argument `validation_data` is required. Received: "
            f"validation_data=None. Expected {_DATA_EXPECTED}."
        )
    check_data_kind(data, "validation_data")
    if isinstance(data, tuple):
        if len(data) < 2 or data[1] is None:
            raise ValueError(
                "Argument `validation_data` must hold labels. Received a tuple "
                f"of {len(data)} element(s). Expected {_DATA_EXPECTED}."
            )
    elif not is_stream(data):
        raise ValueError(
            "Argument `validation_data` must hold labels. Received inputs "
            f"alone (of type {type(data).__name__}). Expected {_DATA_EXPECTED}."
        )


def _single_output(outputs):
    flat = tf.nest.flatten(outputs)
    if len(flat) != 1:
        raise ValueError(
            "Argument `model` must have one output (batch, num_classes). "
            f"Received a model with {len(flat)} outputs."
        )
    array = np.asarray(flat[0], dtype=np.float64)
    if array.ndim != 2 or array.shape[-1] < 2:
        raise ValueError(
            "Argument `model` must output (batch, num_classes) with "
            f"num_classes >= 2. Received outputs of shape {array.shape}."
        )
    return array


def _predict(model, data, specs, structure, batch_size):
    """`(outputs, labels)` of `model` over the labelled `data`."""
    outputs, labels = [], []
    batches = iterate_batches(data, specs, "validation_data", None, with_labels=True)
    for inputs, y in batches:
        if y is None:
            raise ValueError(
                "Argument `validation_data` must hold labels. Received batches "
                f"without them. Expected {_DATA_EXPECTED}."
            )
        for start in range(0, len(inputs[0]), batch_size):
            chunk = [a[start : start + batch_size] for a in inputs]
            packed = tf.nest.pack_sequence_as(structure, chunk)
            outputs.append(_single_output(model.predict_on_batch(packed)))
        labels.append(np.asarray(y))
    if not outputs:
        raise ValueError(
            f"Argument `validation_data` yielded no samples. Expected {_DATA_EXPECTED}."
        )
    return np.concatenate(outputs), np.concatenate(labels)


def _is_probabilities(model, outputs) -> bool:
    """Whether `model` outputs probabilities: a final softmax, or rows that
    are non-negative and sum to 1 (the rule of `kd.report`)."""
    structural = output_is_probabilities(model)
    return bool(structural and structural[0]) or metrics.is_probabilities(outputs)


def _range_notes(temperature: float, num_samples: int) -> list:
    """A note (and a warning) when `temperature` is at an end of the range:
    the data then does not pin it down."""
    low, high = TEMPERATURE_RANGE
    if math.isclose(temperature, low):
        note = (
            f"the fitted temperature is the lowest searched ({low}): the model "
            f"classifies (nearly) all {num_samples} validation samples "
            "correctly, so the NLL keeps falling as T shrinks and the data "
            "does not determine T. Calibrate on more, or harder, held-out "
            "data; the calibrated model is close to one-hot."
        )
    elif math.isclose(temperature, high):
        note = (
            f"the fitted temperature is the highest searched ({high}): on "
            "this data the model's confidence carries little information "
            "(its predictions are near chance); the calibrated model is "
            "close to uniform."
        )
    else:
        return []
    warnings.warn(f"kd.calibrate: {note}", stacklevel=3)
    return [note]


def _calibrated_model(model, specs, structure, layer, name):
    """`model` followed by `layer`: a graph model's own inputs and layers
    (no nested model, so no optimizer state comes along when it is saved),
    else `model` called on new inputs as one layer."""
    if is_graph_model(model):
        try:
            inputs, outputs = model.input, tf.nest.flatten(model.output)[0]
        except (AttributeError, ValueError):
            inputs = None
        if inputs is not None:
            return keras.Model(inputs, layer(outputs), name=name)
    flat = [
        keras.Input(shape=tuple(spec.shape)[1:], dtype=spec.dtype.name)
        for spec in specs
    ]
    inputs = tf.nest.pack_sequence_as(structure, flat)
    outputs = tf.nest.flatten(model(inputs))[0]
    return keras.Model(inputs, layer(outputs), name=name)


def calibrate(
    model,
    validation_data,
    *,
    batch_size: int = 256,
    num_bins: int = 15,
    name: str | None = None,
) -> CalibrationResult:
    """Fits a temperature on held-out data so the model's confidence is honest.

    Temperature scaling (Guo et al. 2017, "On calibration of modern neural
    networks"): the model's logits `z` become `softmax(z / T)`, with the one
    `T` that minimizes the negative log-likelihood of `validation_data`.
    Predictions (the arg-max) do not change; the confidence does. Use it on
    a distilled student before shipping it, with data neither model trained
    on (not the test set you report on). The data must hold some mistakes
    of the model: on data it classifies without error the NLL falls as `T`
    shrinks, so the fit ends at the lowest temperature searched
    (`TEMPERATURE_RANGE`), with a warning and a note in the result.

    A model whose last layer applies softmax (or whose outputs are
    probabilities) is handled: `log p` is taken as its logits.

    Args:
        model: a trained `keras.Model` with one output `(batch,
            num_classes)`: logits or probabilities.
        validation_data: held-out labelled samples: `(x, y)` numpy arrays
            (`(x, y, sample_weight)`: the weights are ignored) or a
            `tf.data.Dataset` / generator of `(x, y)` batches. Labels are
            class indices or one-hot rows.
        batch_size: samples per model call.
        num_bins: confidence bins of the ECE.
        name: the calibrated model's name (default `"<model>_calibrated"`).

    Returns:
        A `CalibrationResult`: `model` (the calibrated model: `model`
        followed by a `TemperatureScaling` layer, outputting
        probabilities), `temperature`, and ECE and NLL before and after on
        `validation_data`.

    Raises:
        TypeError: if `model` is not a Keras model or `validation_data` is
            not data `fit` takes.
        ValueError: if `validation_data` holds no labels or no samples, or
            the model has more than one output.

    Example:

    ```python
    result = kd.calibrate(student, (x_val, y_val))
    print(result)  # T, ECE and NLL before and after
    result.model.save("student_calibrated.keras")
    kd.export.to_tflite(result.model, "student.tflite")
    ```
    """
    check_model(model, "model")
    _check_validation_data(validation_data)
    batch_size = check_int(batch_size, "batch_size", minimum=1, what="samples per call")
    num_bins = check_int(num_bins, "num_bins", minimum=1, what="confidence bins")
    if name is not None and not isinstance(name, str):
        raise TypeError(
            f"Argument `name` must be a str or None. Received: name={name!r}."
        )
    data = replayable(validation_data, sys.maxsize)
    specs, structure = input_specs(model, None, [data])
    outputs, labels = _predict(model, data, specs, structure, batch_size)
    from_probabilities = _is_probabilities(model, outputs)
    if from_probabilities:
        logits = np.log(np.clip(outputs, PROB_EPSILON, 1.0))
    else:
        logits = outputs
    labels = metrics.labels_of(labels, len(logits), logits.shape[1], "validation_data")
    temperature = fit_temperature(logits, labels)
    before = metrics.to_probabilities(outputs)
    after = metrics.to_probabilities(logits / temperature)
    notes = _range_notes(temperature, int(len(labels)))
    layer = TemperatureScaling(
        temperature, from_probabilities=from_probabilities, name="temperature_scaling"
    )
    calibrated = _calibrated_model(
        model, specs, structure, layer, name or f"{model.name}_calibrated"
    )
    return CalibrationResult(
        model=calibrated,
        temperature=temperature,
        ece_before=metrics.expected_calibration_error(before, labels, num_bins),
        ece_after=metrics.expected_calibration_error(after, labels, num_bins),
        nll_before=metrics.negative_log_likelihood(before, labels),
        nll_after=metrics.negative_log_likelihood(after, labels),
        num_samples=int(len(labels)),
        num_bins=num_bins,
        from_probabilities=from_probabilities,
        notes=notes,
    )
