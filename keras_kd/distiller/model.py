"""The `Distiller`: a `keras.Model` that trains a student from a frozen teacher.

The class: its arguments, the Keras API (`compile`, `fit`, the train and
test steps, configuration) and `replace_teacher`. The losses of one step are
in `steps.py`, the checks in `arguments.py`, `teacher_side.py` and
`fit_checks.py`. Online distillation, where the teacher learns too, is
`keras_kd.online.OnlineDistiller`, a subclass.
"""

from __future__ import annotations

import inspect

from keras_kd import _precision, _utils, backend, taps
from keras_kd._utils import output_is_probabilities
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.distiller import (
    arguments,
    batches,
    fit_checks,
    pairing,
    recipe,
    teacher_side,
)
from keras_kd.distiller.config import DistillerConfig
from keras_kd.distiller.steps import DistillerSteps


@register_serializable
class Distiller(DistillerSteps, DistillerConfig, backend.ModelBuildHooks, keras.Model):
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
        train_teacher: whether the teacher learns too; False for a
            `Distiller`. Online distillation is `keras_kd.OnlineDistiller`
            (a subclass); `Distiller(..., train_teacher=True)` raises an
            error that names it.
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
        teacher_classes: the mirror, for a teacher with fewer classes (a
            continual update, Learning without Forgetting): the student
            classes the teacher's outputs stand for, in order; the
            distillation term compares the teacher with the student's
            outputs on those classes alone (renormalised). See
            `keras_kd.widen_head`.
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
        teacher_classes=None,
        **kwargs,
    ):
        backend.check_tensorflow_backend("Distiller")
        owner = type(self).__name__
        arguments.check_train_teacher(train_teacher, owner, self.train_teacher)
        _utils.check_alpha(teacher_alpha, "teacher_alpha")
        augmentation, mixup = arguments.check_consistent_teaching(
            augmentation, mixup, owner, self.train_teacher
        )
        teachers, teacher_weights = teacher_side.check_teachers(
            teacher, teacher_weights
        )
        teacher_dtype = _precision.check_teacher_dtype(
            teacher_dtype, owner, self.train_teacher
        )
        arguments.check_student(student, teachers)
        features = teacher_side.check_features(features)
        class_indices, teacher_classes = teacher_side.check_class_subsets(
            teachers, student, class_indices, teacher_classes,
            arguments.check_output_shapes, bool(features),
        )  # fmt: skip
        keys = teacher_side.check_routing(
            teacher_inputs, student_inputs, augmentation, mixup
        )
        mask_token_id = teacher_side.check_mask_token_id(mask_token_id)
        subset = class_indices if teacher_classes is None else teacher_classes
        teacher_side.refuse_online(
            self.train_teacher, teachers, features, keys, subset, mask_token_id
        )
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        self.augmentation = augmentation
        self._mixup = mixup
        self._teacher_swapped = False
        self._teacher_weights = teacher_weights
        self._teacher_inputs, self._student_inputs = keys
        self._class_indices = class_indices
        self._teacher_classes = teacher_classes
        self._mask_token_id = mask_token_id
        self._teacher_dtype = teacher_dtype
        self._set_teachers(teachers)
        # The views share the models' layers: not tracked, so that no weight
        # is saved twice. The adapters are the Distiller's own weights.
        taught = self._teacher_runners.models
        tapped = taps.Features(features, student, taught) if features else None
        object.__setattr__(self, "_features", tapped)
        self.adapters = list(tapped.adapters) if features else []
        self._alpha = tf.Variable(0.5, trainable=False, dtype=tf.float32, name="alpha")
        self._distillation_loss = None
        self._distillation_fns = None
        self._has_hard_loss = False
        self._hard_loss_spec = None  # compile's `loss`, read by fit's checks
        self._student_probs = output_is_probabilities(student)
        self.total_loss_tracker = keras.metrics.Mean(name="loss")
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.feature_loss_tracker = (
            keras.metrics.Mean(name="feature_loss") if features else None
        )
        if getattr(student, "built", False):
            self.built = True

    def _set_teachers(self, teachers):
        """Freezes `teachers` (a list) and makes them the ones that run."""
        for model in teachers:
            if not self.train_teacher:
                model.trainable = False
        # The teachers as they run: lower-precision copies with
        # `teacher_dtype` (not tracked: `teacher` is what is saved).
        runners = _precision.teacher_copies(teachers, self._teacher_dtype)
        object.__setattr__(self, "_teacher_runners", runners)
        object.__setattr__(self, "_teachers", teachers)
        self._teacher_probs = teacher_side.target_probabilities(
            teachers, self._class_indices
        )

    # ------------------------------------------------------------------
    # Keras API
    # ------------------------------------------------------------------

    def call(self, inputs, training=None):
        if self._student_inputs is not None and isinstance(inputs, dict):
            inputs = teacher_side.route(inputs, self._student_inputs, "student_inputs")
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
        alpha=None,
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
                `keras_kd.losses.KLDivergence(temperature=1.0)` by default
                (with alpha 0.5: compile's default recipe). A study of 27
                recipes on nine tasks (BENCHMARKS.md, "The default recipe
                study") found no rule that would take DIST's larger gains
                for much smaller students without losing 2-6 points on some
                task, so the default stays; `keras_kd.tune(..., budget=12)`
                takes those gains with training alone as a floor. What ran
                is `distiller.recipe`, printed once by the first `fit` with
                `verbose` on (with that advice for a student of at most 12%
                of the teacher's parameters).
                For several outputs: one loss for all, or a list / dict
                (keyed by output name) with a loss, or None to skip, per
                output. A loss that declares `requires_labels = True`
                (`keras_kd.losses.DecoupledKD`) is given the batch's labels,
                `labels=None` on a batch without them; one with a
                `step_counter` attribute is given the optimizer's
                `iterations`.
            alpha: weight of the distillation term, in [0, 1]:
                `loss = alpha * distillation + (1 - alpha) * hard`. None
                (the default) is 0.5. Ignored when there is no teacher.
            **kwargs: passed to `keras.Model.compile` (`loss_weights`,
                `weighted_metrics`, `jit_compile`, `steps_per_execution`...).
        """
        distillation_loss, alpha, self._recipe, by_default = recipe.from_compile(
            distillation_loss, alpha, self._teachers, self.student
        )
        self._recipe_unprinted = by_default  # printed by the first verbose `fit`
        arguments.check_hard_loss(loss)
        if loss is None and (self.teacher is None or alpha < 1.0):
            teacher = "None" if self.teacher is None else repr(self.teacher.name)
            raise ValueError(
                "Argument `loss` (the hard-label loss) is required unless "
                "there is a teacher and alpha=1. Received: loss=None, "
                f"alpha={alpha}, teacher={teacher}."
            )
        self._distillation_loss = arguments.check_distillation_loss(
            distillation_loss, self._output_names()
        )
        self._distillation_fns = None
        outputs = arguments.symbolic_outputs(self.student)
        subset = self._class_indices or self._teacher_classes
        if outputs and self._features is None and subset is None:
            arguments.check_vocabularies(
                self._teachers,
                self.student,
                pairing.losses_per_output(
                    self._distillation_loss, outputs, self._output_names()
                ),
            )
        self._alpha.assign(alpha)
        self._has_hard_loss = loss is not None
        self._hard_loss_spec = loss  # read by `fit`'s check of the labels
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if getattr(self, "optimizer", None) is None:
            return
        scaled = keras.mixed_precision.LossScaleOptimizer
        # Keras wraps the optimizer for the Distiller's own policy only: a
        # student computing in float16 needs its loss scaled too.
        if _utils.computes_in_float16(self.student) and not isinstance(
            self.optimizer, scaled
        ):
            self.optimizer = scaled(self.optimizer)
        pairing.attach_step_counter(self._distillation_loss, self.optimizer.iterations)

    @property
    def recipe(self):
        """What `compile` set up: a `keras_kd.distiller.recipe.Recipe`
        (objective, temperature, alpha and why), None before `compile`."""
        return getattr(self, "_recipe", None)

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
        subject = fit_checks.FitSubject(
            owner=type(self).__name__,
            student=self.student,
            teachers=tuple(self._teachers),
            teacher_inputs=self._teacher_inputs,
            hard_loss=self._hard_loss_spec,
            augmentation=self.augmentation,
            mixup=self._mixup,
            features=self._features,
            trains_teacher=self.train_teacher,
        )
        fit_checks.check_fit(subject, bound.arguments)
        if getattr(self, "_recipe_unprinted", False) and bound.arguments.get(
            "verbose", "auto"
        ):
            print(f"{type(self).__name__}: compile's default recipe: {self._recipe}")
            self._recipe_unprinted = False
        return super().fit(*args, **kwargs)

    def symbolic_build_batch(self, batch):
        # Keras 3, under a tf.distribute strategy, builds the compiled metrics
        # from one batch read as `(x, y, sample_weight)` before the first
        # step: a `TeacherBatch` (four fields) is handed over as that.
        if batches.cached_outputs(batch) is not None:
            return batches.unpack_batch(batch)[:3]
        return batch

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
        teachers, _ = teacher_side.check_teachers(teacher, self._teacher_weights)
        if any(t is self.student for t in teachers):
            raise ValueError(
                "The new teacher must not be the student itself; give it a frozen copy."
            )
        teacher_side.check_class_subsets(
            teachers, self.student, self._class_indices, self._teacher_classes,
            arguments.check_output_shapes, self._features is not None,
        )  # fmt: skip
        self._set_teachers(teachers)
        if self._features is not None and teachers:
            self._features.set_teachers(self._teacher_runners.models)
        object.__setattr__(self, "teacher", teacher)
        self._teacher_swapped = True
        self._distillation_fns = None
        self.train_function = None
        self.test_function = None
        self.predict_function = None
        if getattr(self, "optimizer", None) is not None:
            self.make_train_function(force=True)
            self.make_test_function(force=True)


__all__ = ["Distiller", "output_is_probabilities"]
