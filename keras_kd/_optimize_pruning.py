"""Pruning-aware distillation: `prune`, `pruning_callbacks`, `strip`.

A student whose smallest weights are pruned to zero on tfmot's polynomial
schedule while the teacher guides it, so that the exported file compresses.
`prune` starts tfmot's step counter itself and `strip` re-applies the masks
before removing the wrappers, so training needs no callback. Users import
these from `keras_kd.optimize`.
"""

from __future__ import annotations

import importlib.util
import os

from keras_kd._optimize_checks import check_graph_model, layer_selector, load_tfmot
from keras_kd._utils import check_int, check_model, check_number, walk_layers
from keras_kd.backend import keras


def default_frequency(span: int) -> int:
    """The largest divisor of `span` up to a tenth of it (and 100)."""
    cap = max(1, min(100, span // 10))
    return max(d for d in range(1, cap + 1) if span % d == 0)


def prune(
    model,
    target_sparsity: float,
    end_step: int,
    begin_step: int = 0,
    initial_sparsity: float = 0.0,
    frequency: int | None = None,
    layers=None,
):
    """A copy of `model` whose weights are pruned to `target_sparsity`.

    Wraps the layers with tfmot's `prune_low_magnitude` on a polynomial
    schedule: from `begin_step` to `end_step` (training steps of the
    returned model, i.e. batches), every `frequency` steps, the smallest
    weights of each kernel are set to zero, until the share of zeros reaches
    `target_sparsity` at `end_step`. Distil into the returned model (no
    callback needed), then `strip` it and export it; the zeros make the file
    compress (`gzipped_size`).

    Needs the tf_keras flavour (`TF_USE_LEGACY_KERAS=1`) and
    `pip install keras-kd[optimize]`.

    Args:
        model: a built Sequential or Functional tf_keras model.
        target_sparsity: the share of zeros to reach in each pruned kernel,
            in [0, 1).
        end_step: the training step at which the target is reached; at
            most the number of steps `fit` will run
            (`epochs * steps_per_epoch`).
        begin_step: the step at which pruning starts.
        initial_sparsity: the sparsity applied at `begin_step`.
        frequency: steps between two mask updates; it must divide
            `end_step - begin_step` so that the last update falls on
            `end_step`. None picks the largest such divisor up to a tenth of
            the span (and 100).
        layers: None to prune every prunable layer, or a list of layer names
            and / or classes.

    Returns:
        A new `keras.Model` with pruning wrappers, starting from `model`'s
        weights; `model` itself is left unchanged.

    Example:

    ```python
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    student_p = kd.optimize.prune(student, target_sparsity=0.8, end_step=steps)
    distiller = kd.Distiller(teacher=teacher, student=student_p)
    distiller.compile(optimizer="adam", loss=hard_loss, alpha=0.9)
    distiller.fit(x_train, y_train, batch_size=batch_size, epochs=epochs)
    pruned = kd.optimize.strip(student_p)
    ```
    """
    tfmot = load_tfmot("prune")
    check_graph_model(model, "model", "prune")
    schedule = _schedule(
        tfmot,
        target_sparsity=target_sparsity,
        end_step=end_step,
        begin_step=begin_step,
        initial_sparsity=initial_sparsity,
        frequency=frequency,
    )
    selected = layer_selector(model, layers)
    # tfmot wraps the layers themselves; a copy leaves `model` untouched.
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    prune_low_magnitude = tfmot.sparsity.keras.prune_low_magnitude
    if selected is None:
        pruned = prune_low_magnitude(copy, pruning_schedule=schedule)
    else:

        def annotate(layer):
            if selected(layer):
                return prune_low_magnitude(layer, pruning_schedule=schedule)
            return layer

        pruned = keras.models.clone_model(copy, clone_function=annotate)
    _start_pruning_steps(pruned)
    return pruned


def _schedule(
    tfmot, *, target_sparsity, end_step, begin_step, initial_sparsity, frequency
):
    """`prune`'s schedule arguments, checked, as tfmot's `PolynomialDecay`."""
    target_sparsity = check_number(
        target_sparsity,
        "target_sparsity",
        0.0,
        1.0,
        high_open=True,
        what="the share of zeros to reach",
    )
    initial_sparsity = check_number(
        initial_sparsity,
        "initial_sparsity",
        0.0,
        1.0,
        high_open=True,
        what="the share of zeros at `begin_step`",
    )
    if initial_sparsity > target_sparsity:
        raise ValueError(
            "Argument `initial_sparsity` must not exceed `target_sparsity`. "
            f"Received: initial_sparsity={initial_sparsity}, "
            f"target_sparsity={target_sparsity}."
        )
    begin_step = check_int(begin_step, "begin_step", 0, "a training step")
    end_step = check_int(end_step, "end_step", begin_step + 1, "a training step")
    span = end_step - begin_step
    if frequency is None:
        frequency = default_frequency(span)
    frequency = check_int(frequency, "frequency", 1, "training steps")
    if span % frequency:
        raise ValueError(
            "Argument `frequency` must divide `end_step - begin_step`, or the "
            "last mask update falls before `end_step` and the target "
            f"sparsity is never reached. Received: frequency={frequency}, "
            f"begin_step={begin_step}, end_step={end_step} (span {span}). "
            f"Expected a divisor of {span}, e.g. "
            f"{default_frequency(span)} (or frequency=None)."
        )
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=initial_sparsity,
        final_sparsity=target_sparsity,
        begin_step=begin_step,
        end_step=end_step,
        frequency=frequency,
    )


def _pruning_wrappers(model) -> list:
    """The layers of `model` (nested ones too) that `prune` wrapped."""
    return [
        layer
        for layer in walk_layers(model)
        if type(layer).__name__ == "PruneLowMagnitude"
    ]


def _start_pruning_steps(model) -> None:
    """What tfmot's `UpdatePruningStep.on_train_begin` does, done once here."""
    for layer in _pruning_wrappers(model):
        if int(layer.pruning_step.numpy()) == -1:
            layer.pruning_step.assign(0)


def pruning_callbacks(log_dir: str | None = None) -> list:
    """tfmot's pruning callbacks, for `fit` on a model from `prune`.

    Not required (`prune` starts the step counter and `strip` re-applies the
    masks), but `UpdatePruningStep` re-applies the masks at the end of every
    epoch, so checkpoints saved between epochs are sparse, and
    `PruningSummaries` logs the sparsity of each layer to TensorBoard.

    Args:
        log_dir: a TensorBoard log directory for `PruningSummaries`, or None.

    Returns:
        A list of callbacks to pass to `fit(callbacks=...)`.
    """
    tfmot = load_tfmot("pruning_callbacks")
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    if log_dir is not None:
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(
                "Argument `log_dir` must be a directory path or None. "
                f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}."
            )
        if not os.fspath(log_dir):
            raise ValueError(
                "Argument `log_dir` must be a directory path or None. "
                "Received: log_dir=''."
            )
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "Argument `log_dir` asks for TensorBoard pruning summaries, "
                "and TensorBoard is not installed. Install it with "
                f"`pip install tensorboard`, or pass log_dir=None. Received: "
                f"log_dir={os.fspath(log_dir)!r}."
            )
        callbacks.append(
            tfmot.sparsity.keras.PruningSummaries(log_dir=os.fspath(log_dir))
        )
    return callbacks


def strip(model):
    """`model` without its pruning wrappers: a plain Keras model to export.

    Re-applies each wrapper's mask first (the last optimizer step may have
    moved pruned weights away from zero), then removes the wrappers with
    tfmot's `strip_pruning`. A model without pruning wrappers is returned
    unchanged. Quantization-aware wrappers stay: the converter needs them.

    Args:
        model: a model from `prune`, after training.

    Returns:
        A `keras.Model` with the same layers and sparse weights.
    """
    check_model(model, "model")
    wrappers = _pruning_wrappers(model)
    if not wrappers:
        return model
    tfmot = load_tfmot("strip")
    for layer in wrappers:
        layer.pruning_obj.weight_mask_op()
    return tfmot.sparsity.keras.strip_pruning(model)
