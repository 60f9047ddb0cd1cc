"""Born-Again Networks inside one `fit`: the Keras hooks of self-distillation.

What trains when (and with which alpha, temperature and teachers) is decided
by the plain-Python `GenerationPlan`; the finished generations' weights live
in a `GenerationStore`. This module turns their answers into Keras actions:
swapping the teacher, re-initialising the student, resetting the optimizer.
"""

from __future__ import annotations

import numpy as np

from keras_kd import _utils, backend
from keras_kd.backend import keras, tf
from keras_kd.callbacks.generation_store import GenerationStore
from keras_kd.callbacks.generations import MODES, GenerationPlan, per_generation
from keras_kd.distiller import Distiller
from keras_kd.ensemble import Ensemble
from keras_kd.losses import validate_temperature


class SelfDistillation(keras.callbacks.Callback):
    """Born-Again Networks: generations of a student teach the next one.

    Put it in the callbacks of a `Distiller` built with `teacher=None` and
    call `fit(epochs=generations * epochs_per_generation)`. Generation 1
    trains on the hard labels. At each generation boundary the callback
    freezes a copy of the current student as the new teacher (or, with
    `ensemble=True`, the average of all earlier generations' probabilities:
    BANE), re-initialises the student (a fresh initialisation of the same
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
        epochs_per_generation: epochs in each generation, >= 1.
        model_fn: optional callable returning a fresh, built student of the
            same architecture (needed for subclassed students). It also
            builds the frozen copies that teach.
        ensemble: distil from the average of all earlier generations
            instead of the last one.
        alpha: the distillation weight for each generation (a number, or a
            list with one entry per generation; generation 1, which has no
            teacher, trains on the labels whatever its alpha). None keeps
            the Distiller's compiled alpha.
        temperature: the temperature for each generation (a number or a
            list); None keeps the distillation loss's.
        monitor: with `restore_best`, the metric that decides the best
            generation, e.g. "val_loss"; every generation must log it.
        mode: "auto", "min" or "max": whether the best generation has the
            lowest or the highest `monitor`. "auto" knows losses (min) and
            Keras's built-in metrics such as "val_accuracy" (max); for any
            other metric pass "min" or "max".
        restore_best: at the end, load the weights of the best generation
            by `monitor` into the student (and set `best_generation`).
        keep_weights: also give each generation's final student weights in
            `generation_results` (as numpy arrays).
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
        generations = _utils.check_int(
            generations, "generations", minimum=1, what="the number of generations"
        )
        epochs_per_generation = _utils.check_int(
            epochs_per_generation,
            "epochs_per_generation",
            minimum=1,
            what="the epochs in each generation",
        )
        if model_fn is not None and not callable(model_fn):
            raise TypeError(
                "Argument `model_fn` must be a callable returning a new "
                f"student. Received: model_fn={model_fn!r}."
            )
        if mode not in MODES:
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
        if seed is not None:
            seed = _utils.check_int(seed, "seed", minimum=0, what="a random seed")
        self.restore_best = _utils.check_bool(restore_best, "restore_best")
        self.plan = GenerationPlan(
            generations,
            epochs_per_generation,
            alphas=per_generation(alpha, generations, "alpha", _utils.check_alpha),
            temperatures=per_generation(
                temperature, generations, "temperature", validate_temperature
            ),
            ensemble=_utils.check_bool(ensemble, "ensemble"),
            # The monitor decides only the restored generation; its direction
            # is resolved (or an unknown one refused) here, before training.
            monitor=monitor if self.restore_best else None,
            mode=mode,
        )
        self.store = GenerationStore(backup_dir)
        self.model_fn = model_fn
        self.monitor = monitor
        self.mode = mode
        self.keep_weights = _utils.check_bool(keep_weights, "keep_weights")
        self.early_stopping = early_stopping
        self._early_stopping_start = []  # its `best` at the start of training
        self.seed = seed
        self.backup_dir = backup_dir
        self.verbose = verbose
        self.best_generation = None
        self.generation = 0  # the generation training now; 0 before `fit`
        self._last_logs = {}
        self._optimizer_state = None

    # -- the plan's settings, as attributes --------------------------------

    @property
    def generations(self) -> int:
        return self.plan.generations

    @property
    def epochs_per_generation(self) -> int:
        return self.plan.epochs_per_generation

    @property
    def ensemble(self) -> bool:
        return self.plan.ensemble

    @property
    def alphas(self) -> list:
        return self.plan.alphas

    @property
    def temperatures(self) -> list:
        return self.plan.temperatures

    @property
    def generation_results(self) -> list:
        """Each finished generation: "generation", "first_epoch",
        "last_epoch", "metrics" (its last epoch's logs) and, with
        `keep_weights`, "weights"."""
        results = [dict(r) for r in self.plan.results]
        if self.keep_weights:
            for result in results:
                result["weights"] = self.store.get(result["generation"])
        return results

    def generation_of_epoch(self, epoch: int) -> int:
        """The (1-based) generation that trains in `epoch` (0-based)."""
        return self.plan.generation_of_epoch(epoch)

    # -- Keras hooks -----------------------------------------------------

    def _reset_early_stopping(self):
        """A fresh start for the inner EarlyStopping at each generation.

        Keras before 3.15 does not reset `best` in `on_train_begin`, so a new
        generation would be compared with the previous one's best and end
        after one epoch. The value `best` has after the first reset (the
        flavour's own start value: the baseline, +-inf or None) is put back
        at every later one, whatever the Keras version.
        """
        self.early_stopping.on_train_begin()
        if not self._early_stopping_start:
            self._early_stopping_start.append(self.early_stopping.best)
        else:
            self.early_stopping.best = self._early_stopping_start[0]

    def on_train_begin(self, logs=None):
        distiller = self._distiller()
        self._fresh_student()  # fail early if the student cannot be rebuilt
        self._snapshot_optimizer()
        if self.early_stopping is not None:
            self.early_stopping.set_model(distiller)
            self._reset_early_stopping()
        if self.generation == 0:
            self.generation = 1
            self._apply_settings(1)

    def on_epoch_begin(self, epoch, logs=None):
        plan = self.plan
        generation = plan.generation_of_epoch(epoch)
        if generation == self.generation:
            return
        if not all(plan.is_finished(g) for g in range(1, generation)):
            self._resume()  # a run that BackupAndRestore resumed
            generation = plan.generation_of_epoch(epoch)
        if generation > 1:
            # Mid-generation on resume: BackupAndRestore brought back the
            # student and optimizer; only the teacher is rebuilt.
            fresh = epoch == plan.first_epoch(generation)
            self._start_generation(generation, fresh=fresh)
        self.generation = generation

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["generation"] = self.generation
        self._last_logs = {k: v for k, v in logs.items() if k != "generation"}
        generation = self.generation
        ended_early = False
        if self.early_stopping is not None:
            stopping_before = self.model.stop_training
            self.early_stopping.on_epoch_end(epoch, logs)
            if self.model.stop_training and not stopping_before:
                # Our EarlyStopping ends the generation, not the run.
                self.model.stop_training = False
                ended_early = epoch < self.plan.last_epoch(generation)
        if ended_early or epoch >= self.plan.last_epoch(generation):
            if ended_early:
                self.plan.end_early(generation, epoch)
            self._finish_generation(generation, epoch)
            if self.plan.is_last(generation):
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if (
            self.generation
            and not self.plan.is_finished(self.generation)
            and self._last_logs
        ):
            self._finish_generation(self.generation, None)
        if self.restore_best and self.plan.results:
            self.best_generation = self.plan.best_generation()
            self._distiller().student.set_weights(self.store.get(self.best_generation))
            if self.verbose:
                print(
                    f"SelfDistillation: restored generation {self.best_generation}, "
                    f"the best by {self.monitor} ({self.plan.mode})."
                )

    # -- generations -----------------------------------------------------

    def _finish_generation(self, generation, last_epoch):
        if self.plan.is_finished(generation):
            return
        self.plan.record(generation, last_epoch, self._last_logs)
        self.store.put(generation, self._distiller().student.get_weights())
        self.store.save(self.plan.state(), generation)

    def _start_generation(self, generation, fresh):
        distiller = self._distiller()
        distiller.replace_teacher(self._teacher_for(generation))
        if fresh:
            if self.seed is not None:
                keras.utils.set_random_seed(self.seed + generation)
            distiller.student.set_weights(self._fresh_student().get_weights())
            self._reset_optimizer()
        self._apply_settings(generation)
        if self.early_stopping is not None:
            self._reset_early_stopping()
        if self.verbose:
            teachers = self.plan.teachers(generation)
            what = (
                f"an ensemble of generations 1-{teachers[-1]}"
                if len(teachers) > 1
                else f"generation {teachers[0]}"
            )
            print(
                f"\nSelfDistillation: generation {generation}/{self.generations} "
                f"starts, taught by {what}."
            )

    def _resume(self):
        state = self.store.load()
        if state is None:
            raise ValueError(
                "This fit resumes in a later self-distillation generation, "
                "but the earlier generations' weights are unknown. Pass the "
                "same `backup_dir` to SelfDistillation as in the interrupted "
                f"run. Received: backup_dir={self.backup_dir!r}."
            )
        self.plan.restore(state)

    def _apply_settings(self, generation):
        distiller = self._distiller()
        alpha = self.plan.alpha(generation)
        if alpha is not None:
            distiller.alpha = alpha
        temperature = self.plan.temperature(generation)
        if temperature is not None:
            for loss in tf.nest.flatten(distiller.distillation_loss):
                if loss is not None and hasattr(loss, "temperature"):
                    loss.temperature = temperature

    # -- models ----------------------------------------------------------

    def _distiller(self) -> Distiller:
        if not isinstance(self.model, Distiller):
            raise TypeError(
                "SelfDistillation must be used in `fit` of a "
                "`keras_kd.Distiller`. Received a model of type "
                f"{type(self.model).__name__}."
            )
        return self.model

    def _fresh_student(self):
        student = self._distiller().student
        if self.model_fn is not None:
            model = self.model_fn()
            _utils.check_model(model, "model_fn()")
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
        expected = [tuple(w.shape) for w in student.weights]
        got = [tuple(w.shape) for w in model.weights]
        if not model.built or got != expected:
            raise ValueError(
                "The rebuilt student must be built and have the student's "
                f"weights: got weights of shapes {got}, expected {expected}. "
                "`model_fn` must return a built model of the student's "
                "architecture."
            )
        return model

    def _teacher_for(self, generation):
        members = []
        for g in self.plan.teachers(generation):
            member = self._fresh_student()
            member.set_weights(self.store.get(g))
            member.trainable = False
            members.append(member)
        if len(members) == 1:
            return members[0]
        return Ensemble(members, name=f"ensemble_of_{len(members)}")

    def _snapshot_optimizer(self):
        optimizer = self.model.optimizer
        backend.build_optimizer(optimizer, self.model.trainable_variables)
        self._optimizer_state = [np.array(v.numpy()) for v in optimizer.variables]

    def _reset_optimizer(self):
        for variable, value in zip(
            self.model.optimizer.variables, self._optimizer_state
        ):
            variable.assign(value)
