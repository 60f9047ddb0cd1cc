"""The `Distiller`: a `keras.Model` that trains a student from a frozen teacher.

Online distillation, where the teacher learns too, is
`keras_kd.online.OnlineDistiller`; `Distiller(..., train_teacher=True)` builds
one, so that code and saved files written for the single class still work.
"""

from __future__ import annotations

import inspect

import numpy as np

from keras_kd import (
    _distillation,
    _precision,
    _teaching,
    _utils,
    augment,
    backend,
    taps,
)
from keras_kd._utils import output_is_probabilities
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.distiller import fit_checks
from keras_kd.distiller.steps import DistillerSteps
from keras_kd.losses import KLDivergence

# compile's default recipe (KL, T=1, alpha=0.5), chosen on validation splits
# by benchmarks/recipes.py; BENCHMARKS.md has the comparison.
_DEFAULT_TEMPERATURE = 1.0


@register_serializable
class Distiller(DistillerSteps, keras.Model):
    """Trains a student model from a frozen teacher and the hard labels.

    A `Distiller` wraps a trained `teacher` and a `student` and behaves like
    the student: `fit`, `evaluate`, `predict` and `__call__` work as they do
    on any Keras model, on numpy arrays, `tf.data.Dataset`s and tfds datasets
    (`as_supervised=True`), with sample weights. In each training step the
    teacher runs once in inference mode (`training=False`, outside the
    gradient tape) and the student once in training mode, and the student
    minimises

        loss = alpha * distillation_loss(teacher(x), student(x))
               + (1 - alpha) * loss(y, student(x))

    so **`alpha` weights the distillation term** (Hinton et al. 2015), not
    the hard-label term as in some other libraries.

    The teacher is frozen (`teacher.trainable` is set to False): its weights
    are bit-identical after `fit`. A teacher (or student) whose last layer
    applies softmax is detected, and its probabilities are turned into
    log-probabilities before softening, so the soft targets are right.

    With `teacher=None` the Distiller trains the student on the hard labels
    only (the first generation of self-distillation).

    **Consistent teaching** (Beyer et al. 2022): with `augmentation` and / or
    `mixup`, each training batch is augmented once, then mixed, in the train
    step; teacher and student both see that one view. `evaluate`, `predict`
    and `__call__` see the raw inputs. See `keras_kd.augment`.

    **Unlabelled data.** A batch of inputs only gives the distillation term
    alone (`hard_loss` 0, compiled metrics not updated). In a batch of
    `keras_kd.data.mix` (labelled and unlabelled examples) distillation
    covers every row, the hard loss and the compiled metrics (in `fit` and
    `evaluate`) the labelled rows; a loss that requires labels
    (`DecoupledKD`) gets the teacher's top class on unlabelled rows.

    **Teacher outputs computed once.** Batches of
    `keras_kd.data.with_teacher_outputs` (`TeacherBatch`) carry the
    teacher's outputs, used instead of running the teacher (`fit` checks
    the first batch against it). Refused, with the reason: feature taps,
    several teachers, `augmentation` / `mixup` in training, online training.

    History carries `loss` (the total), `hard_loss`, `distillation_loss` and
    the compiled metrics, for training and validation.

    Args:
        teacher: a trained `keras.Model`, a list of them (several teachers:
            the soft targets average their probabilities, weighted by
            `teacher_weights`), or None.
        student: the `keras.Model` to train; its outputs must have the
            teacher's shapes (but for `class_indices`).
        train_teacher: online distillation: train the teacher at the same
            time. `Distiller(..., train_teacher=True)` returns a
            `keras_kd.online.OnlineDistiller` (a `Distiller`); see it for
            details.
        teacher_alpha: with `train_teacher`, the weight of the distillation
            term in the teacher's loss, in [0, 1]; ignored otherwise.
        name: the model's name.
        augmentation: None, a Keras layer (e.g. `keras_kd.augment.jitter(2)`
            or a `keras.Sequential` of preprocessing layers, called with
            `training=True`) or a function `f(x) -> x` of the batch's inputs.
            Saved as Keras saves it: a layer by its config, a function by
            its registered name (`keras.saving.register_keras_serializable`
            or `load_model(custom_objects=...)`; a lambda needs
            `safe_mode=False`).
        mixup: None, a float alpha > 0 or a `keras_kd.augment.MixUp`: inputs
            `lam * x + (1 - lam) * x[perm]`, `lam ~ Beta(alpha, alpha)` per
            batch, folded to `lam >= 0.5`; hard loss
            `lam * loss(y, p) + (1 - lam) * loss(y[perm], p)`.
            `augmentation` and `mixup` work without a teacher too, not with
            `train_teacher=True`.
        features: a list of `keras_kd.FeatureMatch`: intermediate layers the
            student learns to match (feature distillation), each adding
            `weight * feature_loss` to the loss; projection adapters, where
            widths differ, are in `adapters`. Each model still runs once per
            step. Needs Sequential or Functional models; see
            `keras_kd.taps`.
        teacher_weights: with several teachers, one weight >= 0 each
            (default equal): the soft targets are `sum_k w_k softmax(z_k / T)
            / sum_k w_k` at the distillation loss's temperature `T`.
        teacher_inputs: with dict inputs, the key (or list of keys) the
            teacher reads, e.g. a higher-resolution image.
        student_inputs: the key (or keys) the student reads; `predict` and
            `__call__` route a dict the same way.
        class_indices: the teacher classes the student's outputs stand for,
            in order (a student with fewer classes): the teacher's
            distribution is restricted to them and renormalised.
        mask_token_id: for masked language models: the distillation and
            feature terms cover only the positions where the student's input
            token is this id (the hard loss keeps the batch's sample weights).
            Without it, they cover every token the sample weights (or a
            Keras mask) leave in; either way, averaged over those tokens.
        teacher_dtype: None, or `"bfloat16"` / `"float16"`: the (Sequential
            or functional) teacher runs as a copy computing in that dtype,
            outputs cast to float32; not with `train_teacher`. Faster only
            with fast kernels for it (see `keras_kd._precision`).
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    import keras, keras_kd as kd

    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(temperature=1.0),
        alpha=0.5,  # weight of the distillation term (the defaults)
    )
    distiller.fit(x_train, y_train, validation_split=0.1, epochs=5)
    distiller.student.save("student.keras")
    ```
    """

    # Whether the teacher learns too; `OnlineDistiller` sets it.
    train_teacher = False

    def __new__(cls, *args, **kwargs):
        if cls is Distiller and _asks_for_online_training(args, kwargs):
            # Online training lives in keras_kd.online, which builds on this
            # module; it is imported here, when asked for, not at import time.
            from keras_kd.online import OnlineDistiller

            return super().__new__(OnlineDistiller, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        teacher=None,
        student=None,
        train_teacher: bool = False,
        teacher_alpha: float = 0.0,
        name="distiller",
        augmentation=None,
        mixup=None,
        features=None,
        teacher_weights=None,
        teacher_inputs=None,
        student_inputs=None,
        class_indices=None,
        mask_token_id=None,
        teacher_dtype=None,
        **kwargs,
    ):
        backend.check_tensorflow_backend("Distiller")
        train_teacher = _utils.check_bool(train_teacher, "train_teacher")
        augmentation, mixup = _distillation.check_consistent_teaching(
            augmentation, mixup, type(self).__name__, self.train_teacher
        )
        if train_teacher and not self.train_teacher:
            raise ValueError(
                f"{type(self).__name__} cannot train its teacher: "
                "`train_teacher=True` is online distillation, which "
                "`keras_kd.online.OnlineDistiller` implements (subclass it). "
                "Received: train_teacher=True."
            )
        _utils.check_alpha(teacher_alpha, "teacher_alpha")
        teachers, teacher_weights = _teaching.check_teachers(teacher, teacher_weights)
        teacher_dtype = _precision.check_teacher_dtype(
            teacher_dtype, type(self).__name__, self.train_teacher
        )
        _utils.check_model(student, "student", allow_none=False)
        if any(t is student for t in teachers):
            raise ValueError(
                "Arguments `teacher` and `student` must be different models. "
                f"Received the same model for both: {student.name!r}. For "
                "self-distillation, give the teacher a frozen copy of the "
                "student (see `keras_kd.callbacks.SelfDistillation`)."
            )
        _distillation.check_trainable(student)
        class_indices = _teaching.check_class_indices(class_indices, teachers, student)
        features = _teaching.check_features(features)
        if not features:  # with taps, outputs may differ if no loss reads them
            _teaching.check_teacher_outputs(
                teachers, student, class_indices, _distillation.check_output_shapes
            )
        keys = _teaching.check_routing(
            teacher_inputs, student_inputs, augmentation, mixup
        )
        _teaching.refuse_online(
            self.train_teacher, teachers, features, keys, class_indices, mask_token_id
        )
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        self.augmentation = augmentation
        self._mixup = mixup
        self._teacher_swapped = False
        object.__setattr__(self, "_teachers", teachers)
        self._teacher_weights = teacher_weights
        self._teacher_inputs, self._student_inputs = keys
        self._class_indices = class_indices
        self._mask_token_id = _teaching.check_mask_token_id(mask_token_id)
        for model in teachers:
            if not self.train_teacher:
                model.trainable = False
        # The teachers as they run: lower-precision copies with
        # `teacher_dtype` (not tracked: `teacher` is what is saved).
        runners = _precision.teacher_copies(teachers, teacher_dtype)
        object.__setattr__(self, "_teacher_runners", runners)
        self._teacher_dtype = teacher_dtype
        # The views share the models' layers: not tracked, so that no weight
        # is saved twice. The adapters are the Distiller's own weights.
        object.__setattr__(
            self,
            "_features",
            taps.Features(features, student, runners.models) if features else None,
        )
        self.adapters = list(self._features.adapters) if features else []
        self._alpha = tf.Variable(0.5, trainable=False, dtype=tf.float32, name="alpha")
        self._distillation_loss = None
        self._distillation_fns = None
        self._has_hard_loss = False
        self._teacher_probs = _teaching.target_probabilities(teachers, class_indices)
        self._student_probs = output_is_probabilities(student)
        self.total_loss_tracker = keras.metrics.Mean(name="loss")
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.feature_loss_tracker = (
            keras.metrics.Mean(name="feature_loss") if features else None
        )
        if getattr(student, "built", False):
            self.built = True

    # ------------------------------------------------------------------
    # Keras API
    # ------------------------------------------------------------------

    def call(self, inputs, training=None):
        if self._student_inputs is not None and isinstance(inputs, dict):
            inputs = _teaching.route(inputs, self._student_inputs, "student_inputs")
        return self.student(inputs, training=training)

    @property
    def features(self) -> list:
        """The `keras_kd.FeatureMatch`es given as `features`."""
        return list(self._features.matches) if self._features else []

    @property
    def alpha(self) -> float:
        """Weight of the distillation term, in [0, 1]."""
        return float(self._alpha.numpy())

    @alpha.setter
    def alpha(self, value):
        self._alpha.assign(_utils.check_alpha(value))

    @property
    def alpha_variable(self):
        """The `tf.Variable` holding alpha; assigning it needs no retrace."""
        return self._alpha

    @property
    def mixup(self):
        """The `keras_kd.augment.MixUp` of the train step, or None."""
        return self._mixup

    @property
    def distillation_loss(self):
        """The distillation loss given to `compile` (one or a structure)."""
        return self._distillation_loss

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        metrics=None,
        distillation_loss=None,
        alpha=0.5,
        **kwargs,
    ):
        """Configures the distiller for training.

        Takes everything `keras.Model.compile` takes, plus the distillation
        loss and its weight.

        Args:
            optimizer: the student's optimizer, as in `keras.Model.compile`.
            loss: the hard-label loss on the student's outputs, as in
                `keras.Model.compile` (a loss, its name, or a list / dict for
                several outputs). May be None only with a teacher and
                `alpha=1` (distillation alone, no labels needed).
            metrics: the student's metrics, as in `keras.Model.compile`.
            distillation_loss: the loss between teacher and student outputs,
                `keras_kd.losses.KLDivergence(temperature=1.0)` by default:
                with the default `alpha=0.5`, the recipe that, compared on
                validation splits over data sets and student sizes (README,
                "When distillation helps"), improved on training alone the
                most without being worse on average anywhere. Until 0.1 the
                default was `temperature=2.0`, which hurt students of about
                1% of the teacher's size.
                For several outputs: one loss for all, or a list / dict
                (keyed by output name) with a loss, or None to skip, per
                output. A loss that declares `requires_labels = True`
                (`keras_kd.losses.DecoupledKD`) is given the batch's labels,
                `labels=None` on a batch without them; one with a
                `step_counter` attribute is given the optimizer's
                `iterations`.
            alpha: weight of the distillation term, in [0, 1]:
                `loss = alpha * distillation + (1 - alpha) * hard` (default
                0.5, part of the default recipe). Ignored when there is no
                teacher.
            **kwargs: passed to `keras.Model.compile` (`loss_weights`,
                `weighted_metrics`, `jit_compile`, `steps_per_execution`...).
        """
        alpha = _utils.check_alpha(alpha)
        _distillation.check_hard_loss(loss)
        if loss is None and (self.teacher is None or alpha < 1.0):
            teacher = "None" if self.teacher is None else repr(self.teacher.name)
            raise ValueError(
                "Argument `loss` (the hard-label loss) is required unless "
                "there is a teacher and alpha=1. Received: loss=None, "
                f"alpha={alpha}, teacher={teacher}."
            )
        if distillation_loss is None:
            distillation_loss = KLDivergence(temperature=_DEFAULT_TEMPERATURE)
        self._distillation_loss = _distillation.check_distillation_loss(
            distillation_loss, self._output_names()
        )
        self._distillation_fns = None
        self._alpha.assign(alpha)
        self._has_hard_loss = loss is not None
        self._hard_loss_spec = loss  # read by `fit`'s check of the labels
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if getattr(self, "optimizer", None) is not None:
            _distillation.attach_step_counter(
                self._distillation_loss, self.optimizer.iterations
            )

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        config = dict(config)
        config["distillation_loss"] = keras.saving.serialize_keras_object(
            self._distillation_loss
        )
        config["alpha"] = self.alpha
        return config

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        # A teacher swapped in by `replace_teacher` is not part of the saved
        # state (its weights are not saved), so it is not in the config.
        teacher = None if self._teacher_swapped else self.teacher
        serialize = keras.saving.serialize_keras_object
        config = {
            "name": self.name,
            "teacher": None if teacher is None else serialize(teacher),
            "student": serialize(self.student),
        }
        # Only when set, so a plain Distiller's config is as keras-kd 0.1's.
        for key, value in (("augmentation", self.augmentation), ("mixup", self.mixup)):
            if value is not None:
                config[key] = serialize(value)
        if not self._teacher_swapped and isinstance(self.teacher, (list, tuple)):
            config["teacher"] = [serialize(t) for t in self._teachers]
        config.update(_teaching.routing_config(self))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        teacher = config.pop("teacher", None)
        for key in ("augmentation", "mixup"):
            if config.get(key) is not None:
                config[key] = deserialize(config[key])
        if config.get("features"):
            config["features"] = [
                taps.FeatureMatch.from_config(c) for c in config["features"]
            ]
        if isinstance(teacher, list):
            teacher = [deserialize(t) for t in teacher]
        elif teacher is not None:
            teacher = deserialize(teacher)
        return cls(
            teacher=teacher,
            student=deserialize(config.pop("student")),
            **config,
        )

    @property
    def loss_trackers(self):
        """The `keras.metrics.Mean`s that report the losses, in log order.

        `loss` (the total), `hard_loss` and `distillation_loss`; an
        `OnlineDistiller` adds `teacher_loss`.
        """
        trackers = [
            self.total_loss_tracker,
            self.hard_loss_tracker,
            self.distillation_loss_tracker,
        ]
        return trackers + ([self.feature_loss_tracker] if self._features else [])

    @property
    def metrics(self):
        own = self.loss_trackers
        # Keras 3 builds the compiled metrics on their first labels: until
        # then (training on inputs only) they have no result to report.
        rest = [
            m
            for m in super().metrics
            if not any(m is o for o in own)
            and not backend.is_keras_loss_tracker(m)
            and getattr(m, "built", True)
        ]
        return own + rest

    def fit(self, *args, **kwargs):
        """Trains the student, as `keras.Model.fit` does, after checking the data.

        Takes what `keras.Model.fit` takes. Once, before the first step, the
        data and the arguments are checked (see
        `keras_kd.distiller.fit_checks`): `batch_size`, `epochs`,
        `validation_split` and the step counts; the lengths of `x`, `y` and
        `sample_weight`; empty data; the inputs' shapes against the student's
        and the teacher's; non-finite inputs; labels out of range for the
        student's classes; the teacher's outputs on the first batch; and
        8-bit images given to models without a Rescaling layer (a warning).
        Numpy data is checked in full, a `tf.data.Dataset` on its first
        batch; a generator is not read.

        Raises:
            TypeError, ValueError: a bad argument or bad data, before
                training starts.
        """
        bound = inspect.signature(super().fit).bind(*args, **kwargs)
        fit_checks.check_fit(self, bound.arguments)
        return super().fit(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 reads the first batch of a multi-worker strategy with a
        # `strategy.reduce` that fails on `(x, y)`: read this worker's share.
        strategy = self.distribute_strategy
        if iterator is not None and backend.is_multi_worker(strategy):
            data_batch = backend.first_local_batch(strategy, iterator)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _symbolic_build(self, *args, **kwargs):
        # Keras 3, under a tf.distribute strategy, builds the compiled metrics
        # from one batch read as `(x, y, sample_weight)` before the first
        # step: a `TeacherBatch` (four fields) is handed over as that.
        batch = kwargs.get("data_batch")
        if batch is not None and _distillation.cached_outputs(batch) is not None:
            kwargs["data_batch"] = _distillation.unpack_batch(batch)[:3]
        return super()._symbolic_build(*args, **kwargs)

    def make_train_function(self, force=False):
        self._teacher_runners.sync()  # a lower-precision teacher's copy
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        self._teacher_runners.sync()
        return super().make_test_function(force=force)

    def train_step(self, data):
        stored = self._stored_teaching(data, training=True)
        x, y, sample_weight, labelled = _distillation.unpack_batch(data)
        x, mix = augment.transform_batch(
            x, self.augmentation, self._mixup, self.optimizer.iterations, labelled
        )
        teaching = self._teacher_forward(x) if stored is None else stored
        with tf.GradientTape() as tape:
            y_pred, features = self._student_forward(x, training=True)
            loss = self._step_loss(
                x, y, y_pred, teaching, sample_weight, labelled, mix, features
            )
        backend.minimize(self.optimizer, loss, self.trainable_variables, tape)
        rows = _distillation.labelled_rows(y_pred, labelled)
        logs = self.compute_metrics(x, y, rows, sample_weight)
        return backend.multi_worker_step_logs(self.distribute_strategy, logs)

    def test_step(self, data):
        stored = self._stored_teaching(data, training=False)
        x, y, sample_weight, labelled = _distillation.unpack_batch(data)
        teaching = self._teacher_forward(x) if stored is None else stored
        y_pred, features = self._student_forward(x, training=False)
        self._step_loss(x, y, y_pred, teaching, sample_weight, labelled, None, features)
        rows = _distillation.labelled_rows(y_pred, labelled)
        logs = self.compute_metrics(x, y, rows, sample_weight)
        return backend.multi_worker_step_logs(self.distribute_strategy, logs)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics (when there are labels); returns logs."""
        if y is None:  # distillation alone: nothing to score the student on
            return {m.name: m.result() for m in self.loss_trackers}
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def replace_teacher(self, teacher):
        """Swaps in a new frozen teacher, e.g. between generations.

        `keras_kd.callbacks.SelfDistillation` calls it at the start of each
        generation; call it yourself to continue training a student from
        another teacher without rebuilding the Distiller (optimizer state,
        metrics and compiled settings are kept).

        The new teacher is not tracked as part of the Distiller's state, so
        the Distiller's weights (and checkpoints of them, such as those of
        `BackupAndRestore`) keep the same structure from one generation to
        the next, and it is not part of the Distiller's saved config.
        Compiled train/test functions are rebuilt.

        Args:
            teacher: a `keras.Model` whose outputs have the student's shapes
                (it is frozen), or None to train on hard labels alone.

        Example:

        ```python
        distiller.fit(x, y, epochs=5)
        distiller.replace_teacher(better_teacher)
        distiller.fit(x, y, epochs=5)
        ```
        """
        teachers, _ = _teaching.check_teachers(teacher, self._teacher_weights)
        if any(t is self.student for t in teachers):
            raise ValueError(
                "The new teacher must not be the student itself; give it a frozen copy."
            )
        if self._features is None:
            _teaching.check_teacher_outputs(
                teachers,
                self.student,
                self._class_indices,
                _distillation.check_output_shapes,
            )
        for model in teachers:
            model.trainable = False
        runners = _precision.teacher_copies(teachers, self._teacher_dtype)
        if self._features is not None and teachers:
            self._features.set_teachers(runners.models)
        object.__setattr__(self, "_teacher_runners", runners)
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "_teachers", teachers)
        self._teacher_swapped = True
        self._teacher_probs = _teaching.target_probabilities(
            teachers, self._class_indices
        )
        self._distillation_fns = None
        self.train_function = None
        self.test_function = None
        self.predict_function = None
        if getattr(self, "optimizer", None) is not None:
            self.make_train_function(force=True)
            self.make_test_function(force=True)


def _asks_for_online_training(args, kwargs) -> bool:
    """Whether `Distiller(*args, **kwargs)` has `train_teacher=True`."""
    value = kwargs.get("train_teacher", args[2] if len(args) > 2 else False)
    return isinstance(value, (bool, np.bool_)) and bool(value)


__all__ = ["Distiller", "output_is_probabilities"]
