"""Callbacks that drive distillation: self-distillation and schedules.

* `SelfDistillation` runs Born-Again Networks (Furlanello et al. 2018)
  inside one `fit`: each generation's student becomes the next one's frozen
  teacher.
* `AlphaSchedule` and `TemperatureSchedule` change `alpha` and the softmax
  temperature by epoch or by step. The values live in variables, so the
  compiled train function is not retraced.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile

import numpy as np

from keras_kd.backend import keras, tf
from keras_kd.distiller import Distiller, _check_alpha, output_is_probabilities
from keras_kd.losses import validate_temperature


def _check_positive_int(value, argument):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Argument `{argument}` must be a positive integer. "
            f"Received: {argument}={value!r}."
        )
    return int(value)


def _per_generation(value, generations, argument, check):
    """A value per generation from a number, a list, or None."""
    if value is None:
        return [None] * generations
    if isinstance(value, (list, tuple)):
        if len(value) != generations:
            raise ValueError(
                f"Argument `{argument}` must have one value per generation "
                f"({generations}). Received {len(value)} values: {list(value)}."
            )
        return [None if v is None else check(v, argument) for v in value]
    return [check(value, argument)] * generations


def _atomic_write(path, write):
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _EnsembleTeacher(keras.Model):
    """Averages the predicted probabilities of several frozen models.

    Its output is the log of the mean probability: logits whose softmax is
    the ensemble's prediction (BANE, Furlanello et al. 2018).
    """

    def __init__(self, members, members_output_probabilities=False, **kwargs):
        super().__init__(**kwargs)
        self.members = list(members)
        self._probs = members_output_probabilities

    def call(self, inputs, training=False):
        log_probs = []
        for member in self.members:
            out = tf.cast(member(inputs, training=False), tf.float32)
            if self._probs:
                log_probs.append(tf.math.log(tf.clip_by_value(out, 1e-7, 1.0)))
            else:
                log_probs.append(tf.nn.log_softmax(out, axis=-1))
        stacked = tf.stack(log_probs, axis=0)
        return tf.reduce_logsumexp(stacked, axis=0) - math.log(len(log_probs))


class SelfDistillation(keras.callbacks.Callback):
    """Born-Again Networks: generations of a student teach the next one.

    Put it in the callbacks of a `Distiller` built with `teacher=None` and
    call `fit(epochs=generations * epochs_per_generation)`. Generation 1
    trains on the hard labels. At each generation boundary the callback
    freezes a copy of the current student as the new teacher (or, with
    `ensemble=True`, the average of all earlier generations: BANE),
    re-initialises the student (a fresh initialisation of the same
    architecture, from the student's own config unless `model_fn` is given),
    resets the optimizer's state (iterations and slots), and training goes
    on. The History gets a `generation` entry per epoch, and
    `generation_results` holds each generation's final metrics.

    `alpha` weights the distillation term (`loss = alpha * distillation +
    (1 - alpha) * hard`), per generation if a list is given.

    For a run that `keras.callbacks.BackupAndRestore` can resume in the right
    generation with the right teacher, pass `backup_dir`: the callback keeps
    each finished generation's weights there (written atomically) and reads
    them back on resume; with `seed`, re-initialisation is reproducible, so
    a resumed run matches an uninterrupted one. Put `SelfDistillation`
    before `BackupAndRestore` in the callbacks list.

    Args:
        generations: number of generations, >= 1.
        epochs_per_generation: epochs in each generation.
        model_fn: optional callable returning a fresh, built student of the
            same architecture (needed for subclassed students).
        ensemble: distil from the average of all earlier generations
            instead of the last one.
        alpha: the distillation weight for each generation (a number, or a
            list with one entry per generation; generation 1's is ignored).
            None keeps the Distiller's compiled alpha.
        temperature: the temperature for each generation (a number or a
            list); None keeps the distillation loss's.
        monitor: metric that decides the best generation, e.g. "val_loss".
        mode: "min", "max" or "auto" (max for accuracy-like names).
        restore_best: at the end, load the weights of the best generation
            by `monitor` into the student.
        keep_weights: also store each generation's final student weights
            in `generation_results` (as numpy arrays).
        early_stopping: an optional `keras.callbacks.EarlyStopping` applied
            within each generation: when it fires, the generation ends and
            the next starts (the run ends after the last generation). An
            EarlyStopping passed to `fit` directly ends the whole run.
        seed: optional int; when set, generation g is initialised after
            `keras.utils.set_random_seed(seed + g)`.
        backup_dir: optional directory for the state a resumed run needs.
        verbose: 1 prints a line at each generation boundary.

    Example:

    ```python
    distiller = kd.Distiller(teacher=None, student=make_student())
    distiller.compile(optimizer="adam", loss=loss, metrics=["accuracy"],
                      distillation_loss=kd.losses.KLDivergence(2.0), alpha=0.5)
    born_again = kd.callbacks.SelfDistillation(generations=3,
                                               epochs_per_generation=5)
    history = distiller.fit(x, y, epochs=15, validation_data=(xv, yv),
                            callbacks=[born_again])
    born_again.generation_results[-1]["metrics"]["val_accuracy"]
    ```
    """

    def __init__(
        self,
        generations: int = 3,
        epochs_per_generation: int = 1,
        model_fn=None,
        ensemble: bool = False,
        alpha=None,
        temperature=None,
        monitor: str = "val_loss",
        mode: str = "auto",
        restore_best: bool = False,
        keep_weights: bool = False,
        early_stopping=None,
        seed: int | None = None,
        backup_dir: str | None = None,
        verbose: int = 1,
    ):
        super().__init__()
        self.generations = _check_positive_int(generations, "generations")
        self.epochs_per_generation = _check_positive_int(
            epochs_per_generation, "epochs_per_generation"
        )
        if model_fn is not None and not callable(model_fn):
            raise TypeError(
                "Argument `model_fn` must be a callable returning a new "
                f"student. Received: model_fn={model_fn!r}."
            )
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                "Argument `mode` must be 'auto', 'min' or 'max'. "
                f"Received: mode={mode!r}."
            )
        if early_stopping is not None and not isinstance(
            early_stopping, keras.callbacks.EarlyStopping
        ):
            raise TypeError(
                "Argument `early_stopping` must be a "
                "`keras.callbacks.EarlyStopping`. Received: "
                f"early_stopping={early_stopping!r}."
            )
        self.model_fn = model_fn
        self.ensemble = bool(ensemble)
        self.alphas = _per_generation(alpha, self.generations, "alpha", _check_alpha)
        self.temperatures = _per_generation(
            temperature, self.generations, "temperature", validate_temperature
        )
        self.monitor = monitor
        self.mode = mode
        self.restore_best = bool(restore_best)
        self.keep_weights = bool(keep_weights)
        self.early_stopping = early_stopping
        self.seed = seed
        self.backup_dir = backup_dir
        self.verbose = verbose
        self.generation_results = []
        self.best_generation = None
        self.generation = 0
        self._starts = [g * self.epochs_per_generation for g in range(self.generations)]
        self._weights = {}  # generation -> final student weights
        self._last_logs = {}
        self._optimizer_state = None

    # -- helpers ---------------------------------------------------------

    def _distiller(self) -> Distiller:
        if not isinstance(self.model, Distiller):
            raise TypeError(
                "SelfDistillation must be used in `fit` of a "
                "`keras_kd.Distiller`. Received a model of type "
                f"{type(self.model).__name__}."
            )
        return self.model

    def generation_of_epoch(self, epoch: int) -> int:
        """The (1-based) generation that trains in `epoch` (0-based)."""
        generation = 1
        for g, start in enumerate(self._starts, start=1):
            if epoch >= start:
                generation = g
        return generation

    def _generation_end(self, generation):
        return self._starts[generation - 1] + self.epochs_per_generation - 1

    def _fresh_student(self):
        student = self._distiller().student
        if self.model_fn is not None:
            model = self.model_fn()
        else:
            try:
                model = keras.models.clone_model(student)
            except Exception as e:  # subclassed models may not clone
                raise ValueError(
                    "SelfDistillation could not rebuild the student from its "
                    f"config ({type(e).__name__}: {e}). Pass `model_fn`, a "
                    "callable that returns a new student of the same "
                    "architecture."
                ) from e
        if not model.built or len(model.weights) != len(student.weights):
            raise ValueError(
                "The rebuilt student must be built and have the same weights "
                f"as the student: got {len(model.weights)} weights, expected "
                f"{len(student.weights)}."
            )
        return model

    def _frozen_copy(self, weights):
        copy = self._fresh_student()
        copy.set_weights(weights)
        copy.trainable = False
        return copy

    def _teacher_for(self, generation):
        earlier = range(1, generation) if self.ensemble else [generation - 1]
        members = [self._frozen_copy(self._weights[g]) for g in earlier]
        if len(members) == 1:
            return members[0]
        probs = output_is_probabilities(self._distiller().student) or [False]
        return _EnsembleTeacher(members, members_output_probabilities=probs[0],
                                name=f"ensemble_of_{len(members)}")

    def _snapshot_optimizer(self):
        optimizer = self.model.optimizer
        if hasattr(optimizer, "built"):  # Keras 3
            built = optimizer.built
        else:  # tf_keras sets `_built` only once built
            built = getattr(optimizer, "_built", False)
        if not built:
            optimizer.build(self.model.trainable_variables)
        self._optimizer_state = [np.array(v.numpy()) for v in optimizer.variables]

    def _reset_optimizer(self):
        for variable, value in zip(self.model.optimizer.variables, self._optimizer_state):
            variable.assign(value)

    def _apply_generation_settings(self, generation):
        distiller = self._distiller()
        alpha = self.alphas[generation - 1]
        if alpha is not None:
            distiller.alpha = alpha
        temperature = self.temperatures[generation - 1]
        if temperature is not None:
            losses = tf.nest.flatten(distiller.distillation_loss)
            for loss in losses:
                if loss is not None and hasattr(loss, "temperature"):
                    loss.temperature = temperature

    def _state_path(self, name):
        return os.path.join(self.backup_dir, name)

    def _save_generation(self, generation):
        if self.backup_dir is None:
            return
        weights = self._weights[generation]
        _atomic_write(
            self._state_path(f"generation_{generation}.npz"),
            lambda p: np.savez(open(p, "wb"), *weights),
        )
        state = {
            "starts": self._starts,
            "finished": sorted(self._weights),
            "results": [
                {k: v for k, v in r.items() if k != "weights"}
                for r in self.generation_results
            ],
        }
        _atomic_write(
            self._state_path("self_distillation.json"),
            lambda p: open(p, "w").write(json.dumps(state)),
        )

    def _load_state(self):
        path = self._state_path("self_distillation.json") if self.backup_dir else None
        if path is None or not os.path.exists(path):
            raise ValueError(
                "This fit resumes in a later self-distillation generation, "
                "but the earlier generations' weights are unknown. Pass the "
                "same `backup_dir` to SelfDistillation as in the interrupted "
                "run."
            )
        with open(path) as f:
            state = json.load(f)
        self._starts = state["starts"]
        self.generation_results = state["results"]
        for g in state["finished"]:
            with np.load(self._state_path(f"generation_{g}.npz")) as archive:
                self._weights[g] = [archive[f"arr_{i}"] for i in range(len(archive.files))]
        if self.keep_weights:
            for result in self.generation_results:
                result["weights"] = self._weights.get(result["generation"])

    def _finish_generation(self, generation, last_epoch):
        if generation in self._weights:
            return
        self._weights[generation] = [
            np.array(w) for w in self._distiller().student.get_weights()
        ]
        result = {
            "generation": generation,
            "first_epoch": self._starts[generation - 1],
            "last_epoch": last_epoch,
            "metrics": {k: float(v) for k, v in self._last_logs.items()},
        }
        if self.keep_weights:
            result["weights"] = self._weights[generation]
        self.generation_results.append(result)
        self._save_generation(generation)

    def _start_generation(self, generation, fresh):
        distiller = self._distiller()
        distiller.replace_teacher(self._teacher_for(generation))
        if fresh:
            if self.seed is not None:
                keras.utils.set_random_seed(self.seed + generation)
            distiller.student.set_weights(self._fresh_student().get_weights())
            self._reset_optimizer()
        self._apply_generation_settings(generation)
        if self.early_stopping is not None:
            self.early_stopping.on_train_begin()
        if self.verbose:
            what = "an ensemble of generations 1-%d" % (generation - 1) if (
                self.ensemble and generation > 2) else f"generation {generation - 1}"
            print(f"\nSelfDistillation: generation {generation}/{self.generations} "
                  f"starts, taught by {what}.")

    # -- Keras hooks -----------------------------------------------------

    def on_train_begin(self, logs=None):
        distiller = self._distiller()
        self._fresh_student()  # fail early if the student cannot be rebuilt
        self._snapshot_optimizer()
        if self.early_stopping is not None:
            self.early_stopping.set_model(distiller)
            self.early_stopping.on_train_begin()
        if self.generation == 0:
            self.generation = 1
            self._apply_generation_settings(1)

    def on_epoch_begin(self, epoch, logs=None):
        generation = self.generation_of_epoch(epoch)
        if generation == self.generation:
            return
        if any(g not in self._weights for g in range(1, generation)):
            self._load_state()  # a run resumed by BackupAndRestore
            generation = self.generation_of_epoch(epoch)
        if generation > 1:
            # Mid-generation on resume: BackupAndRestore brought back the
            # student and optimizer; only the teacher is rebuilt.
            fresh = epoch == self._starts[generation - 1]
            self._start_generation(generation, fresh=fresh)
        self.generation = generation

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["generation"] = self.generation
        self._last_logs = {k: v for k, v in logs.items() if k != "generation"}
        ended_early = False
        if self.early_stopping is not None:
            self.early_stopping.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                self.model.stop_training = False
                ended_early = epoch < self._generation_end(self.generation)
        if ended_early or epoch >= self._generation_end(self.generation):
            self._finish_generation(self.generation, epoch)
            if ended_early:
                shift = self._generation_end(self.generation) - epoch
                for g in range(self.generation, self.generations):
                    self._starts[g] -= shift
                self._save_generation(self.generation)
            if self.generation >= self.generations:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.generation and self.generation not in self._weights and self._last_logs:
            self._finish_generation(self.generation, None)
        if self.restore_best and self.generation_results:
            self.best_generation = self._best_generation()
            self._distiller().student.set_weights(self._weights[self.best_generation])
            if self.verbose:
                print(f"SelfDistillation: restored generation {self.best_generation}, "
                      f"the best by {self.monitor}.")

    def _best_generation(self):
        mode = self.mode
        if mode == "auto":
            mode = "max" if ("acc" in self.monitor or "auc" in self.monitor) else "min"
        scored = [
            (r["metrics"][self.monitor], r["generation"])
            for r in self.generation_results
            if self.monitor in r["metrics"]
        ]
        if not scored:
            raise ValueError(
                f"restore_best=True, but `monitor={self.monitor!r}` is not in "
                "the logs. Available: "
                f"{sorted(self.generation_results[-1]['metrics'])}."
            )
        pick = max if mode == "max" else min
        return pick(scored)[1]


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------


def linear(start: float, end: float, duration: int):
    """A schedule going linearly from `start` to `end` over `duration`
    epochs (or steps), then staying at `end`.

    Example:

    >>> f = linear(1.0, 0.0, 4)
    >>> [f(t) for t in range(6)]
    [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    duration = _check_positive_int(duration, "duration")

    def schedule(t):
        return start + (end - start) * min(t / duration, 1.0)

    return schedule


def cosine(start: float, end: float, duration: int):
    """A half-cosine schedule from `start` to `end` over `duration` epochs
    (or steps), then staying at `end`."""
    duration = _check_positive_int(duration, "duration")

    def schedule(t):
        progress = min(t / duration, 1.0)
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


class _VariableSchedule(keras.callbacks.Callback):
    """Sets a variable from `schedule(epoch)` or `schedule(step)`."""

    name = "value"

    def __init__(self, schedule, per: str = "epoch", verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                "Argument `schedule` must be a callable of the epoch (or "
                f"step) returning a number. Received: schedule={schedule!r}."
            )
        if per not in ("epoch", "step"):
            raise ValueError(
                f"Argument `per` must be 'epoch' or 'step'. Received: per={per!r}."
            )
        self.schedule = schedule
        self.per = per
        self.verbose = verbose
        self._variables = []
        self._step = 0

    def _get_variables(self):  # -> (variables, newly_created)
        raise NotImplementedError

    def _check(self, value):
        raise NotImplementedError

    def _set(self, t):
        value = self._check(self.schedule(t))
        for variable in self._variables:
            variable.assign(value)
        return value

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, Distiller):
            raise TypeError(
                f"{type(self).__name__} must be used in `fit` of a "
                f"`keras_kd.Distiller`. Received: {type(self.model).__name__}."
            )
        self._variables, created = self._get_variables()
        if created:
            # A train function traced before the variable existed holds the
            # old value as a constant: trace once more, now, with the variable.
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)
        self._step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            value = self._set(epoch)
            if self.verbose:
                print(f"\n{type(self).__name__}: epoch {epoch + 1}, {self.name}={value:.4g}")

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "step":
            self._set(self._step)
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._variables:
            logs[self.name] = float(self._variables[0].numpy())


class AlphaSchedule(_VariableSchedule):
    """Changes the Distiller's `alpha` (the weight of the distillation term)
    by epoch or by step, without retracing the train function.

    Args:
        schedule: `fn(epoch)` (or `fn(step)` with `per="step"`) returning
            alpha in [0, 1]; `keras_kd.callbacks.linear` and `cosine` build
            common ones.
        per: "epoch" or "step". With `steps_per_execution=N` a per-step
            schedule is applied every N steps.
        verbose: 1 prints the value at each epoch.

    Example:

    ```python
    # Lean on the teacher early, on the labels late.
    schedule = kd.callbacks.AlphaSchedule(kd.callbacks.linear(0.9, 0.1, 10))
    distiller.fit(x, y, epochs=10, callbacks=[schedule])
    ```
    """

    name = "alpha"

    def _get_variables(self):
        return [self.model.alpha_variable], False

    def _check(self, value):
        return _check_alpha(float(value) if isinstance(value, (np.floating, np.integer)) else value)


class TemperatureSchedule(_VariableSchedule):
    """Changes the distillation temperature by epoch or by step, without
    retracing the train function.

    The temperature moves into a variable of the loss
    (`loss.temperature_variable()`) at the start of training.

    Args:
        schedule: `fn(epoch)` (or `fn(step)`) returning a positive number.
        per: "epoch" or "step".
        loss: the loss(es) to drive; by default every distillation loss of
            the Distiller that has a temperature.
        verbose: 1 prints the value at each epoch.

    Example:

    ```python
    schedule = kd.callbacks.TemperatureSchedule(kd.callbacks.cosine(8.0, 1.0, 20))
    distiller.fit(x, y, epochs=20, callbacks=[schedule])
    ```
    """

    name = "temperature"

    def __init__(self, schedule, per: str = "epoch", loss=None, verbose: int = 0):
        super().__init__(schedule, per=per, verbose=verbose)
        self.loss = loss

    def _get_variables(self):
        losses = tf.nest.flatten(self.loss if self.loss is not None
                                 else self.model.distillation_loss)
        losses = [l for l in losses if l is not None and hasattr(l, "temperature_variable")]
        if not losses:
            raise ValueError(
                "TemperatureSchedule found no loss with a temperature: the "
                "Distiller's distillation loss must be a keras_kd loss "
                "(e.g. KLDivergence), or pass `loss=`."
            )
        created = any(not l.temperature_is_variable for l in losses)
        return [l.temperature_variable() for l in losses], created

    def _check(self, value):
        return validate_temperature(float(value))


__all__ = [
    "AlphaSchedule",
    "SelfDistillation",
    "TemperatureSchedule",
    "cosine",
    "linear",
]
