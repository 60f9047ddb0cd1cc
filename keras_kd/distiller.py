"""The `Distiller`: a `keras.Model` that trains a student from a teacher."""

from __future__ import annotations

import numbers

from keras_kd import backend
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.losses import KLDivergence

_DEFAULT_TEMPERATURE = 2.0


def _model_kind() -> str:
    return "a tf_keras model" if backend.LEGACY else "a Keras 3 model"


def _check_model(model, argument: str, allow_none: bool):
    if model is None:
        if allow_none:
            return
        raise ValueError(
            f"Argument `{argument}` is required. Received: {argument}=None. "
            f"Expected {_model_kind()} (`keras.Model`)."
        )
    if not isinstance(model, keras.Model):
        hint = ""
        if isinstance(model, tf.Module) and hasattr(model, "fit"):
            hint = (
                " The model seems to come from the other Keras flavour: "
                f"keras-kd uses {backend.FLAVOUR} because TF_USE_LEGACY_KERAS="
                f"{'1' if backend.LEGACY else 'is unset'}; build the models "
                "with the same Keras (`from keras_kd.backend import keras`)."
            )
        raise TypeError(
            f"Argument `{argument}` must be {_model_kind()} (`keras.Model`). "
            f"Received: {argument}={model!r} of type "
            f"{type(model).__module__}.{type(model).__name__}.{hint}"
        )


def _output_shapes(model):
    """Static output shapes of a built Functional/Sequential model, or None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    return [tuple(o.shape) for o in tf.nest.flatten(outputs)]


def _shapes_compatible(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b))


def _output_layers(model):
    """The layers that produce a model's outputs, where they can be known."""
    try:
        outputs = tf.nest.flatten(model.outputs)
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    layers = []
    for output in outputs:
        history = getattr(output, "_keras_history", None)
        if history is None:
            return None
        layer = getattr(history, "operation", None) or getattr(
            history, "layer", None
        )
        if layer is None:
            layer = history[0]
        layers.append(layer)
    return layers


def _applies_softmax(layer) -> bool:
    """Whether `layer` ends with a softmax (its outputs are probabilities).

    Looks through wrappers that hold the real layer in `.layer` (tfmot's
    quantize and prune wrappers, `TimeDistributed`) and through activations
    that hold the real one in `.activation` (tfmot's quantize-aware ones).
    """
    for _ in range(8):
        inner = getattr(layer, "layer", None)
        if not isinstance(inner, keras.layers.Layer):
            break
        layer = inner
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    for _ in range(8):
        inner = getattr(activation, "activation", None)
        if inner is None:
            break
        activation = inner
    if activation is None:
        return False
    name = getattr(activation, "__name__", None) or str(activation)
    return name == "softmax" or activation is keras.activations.softmax


def output_is_probabilities(model):
    """For each output of `model`, whether its last layer applies softmax.

    Returns None where the model's structure cannot be inspected (e.g. an
    unbuilt or subclassed model).
    """
    layers = _output_layers(model)
    if layers is None:
        return None
    return [_applies_softmax(layer) for layer in layers]


def _check_alpha(alpha, argument: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(
            f"Argument `{argument}` must be a number between 0 and 1 (the "
            "weight of the distillation term). Received: "
            f"{argument}={alpha!r} of type {type(alpha).__name__}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"Argument `{argument}` must be between 0 and 1: it weights the "
            "distillation term, loss = alpha * distillation + (1 - alpha) * "
            f"hard. Received: {argument}={alpha}."
        )
    return float(alpha)


def _check_loss_function(value, argument: str):
    """A distillation loss must be a `keras.losses.Loss` or a callable."""
    if isinstance(value, str):
        try:
            return keras.losses.get(value)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"Argument `{argument}` names no Keras loss. Received: "
                f"{argument}={value!r}. Expected a `keras.losses.Loss` such "
                "as `keras_kd.losses.KLDivergence(temperature=4.0)`."
            ) from e
    if isinstance(value, keras.losses.Loss):
        return value
    if callable(value) and not isinstance(value, (type, keras.Model)):
        return _CallableLoss(value)
    raise TypeError(
        f"Argument `{argument}` must be a `keras.losses.Loss` (or a callable "
        f"`fn(teacher_output, student_output)`), e.g. "
        f"`keras_kd.losses.KLDivergence(temperature=4.0)`. Received: "
        f"{argument}={value!r} of type {type(value).__name__}."
    )


class _CallableLoss(keras.losses.Loss):
    """Gives a plain `fn(teacher_output, student_output)` Keras's reduction,
    sample weighting and distribution scaling."""

    def __init__(self, fn):
        name = getattr(fn, "__name__", "")
        if not name.isidentifier() or name == "<lambda>":
            name = "distillation_loss"
        super().__init__(name=name)
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _check_hard_loss(loss):
    """Validates compile's `loss` (string, Loss, callable, list or dict)."""
    if loss is None:
        return
    if isinstance(loss, dict):
        for value in loss.values():
            _check_hard_loss(value)
        return
    if isinstance(loss, (list, tuple)):
        for value in loss:
            _check_hard_loss(value)
        return
    if isinstance(loss, str):
        try:
            keras.losses.get(loss)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "Argument `loss` names no Keras loss. Received: "
                f"loss={loss!r}. Expected a loss for the hard labels, e.g. "
                '"sparse_categorical_crossentropy".'
            ) from e
        return
    if isinstance(loss, keras.losses.Loss) or (
        callable(loss) and not isinstance(loss, (type, keras.Model))
    ):
        return
    raise TypeError(
        "Argument `loss` must be a Keras loss (a `keras.losses.Loss`, its "
        f"name, or a callable). Received: loss={loss!r} of type "
        f"{type(loss).__name__}."
    )


def _serialize(obj):
    return keras.saving.serialize_keras_object(obj)


def _deserialize(config):
    return keras.saving.deserialize_keras_object(config)


@register_serializable
class Distiller(keras.Model):
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

    History carries `loss` (the total), `hard_loss`, `distillation_loss` and
    the compiled metrics, for training and validation.

    Args:
        teacher: a trained `keras.Model`, or None.
        student: the `keras.Model` to train; its outputs must have the
            teacher's shapes.
        train_teacher: online distillation: train the teacher at the same
            time, on the hard labels (and, with `teacher_alpha`, towards the
            student). The student always learns from the teacher's current
            outputs with the gradient stopped. Both share the optimizer's
            configuration; each weight has its own optimizer state.
        teacher_alpha: with `train_teacher`, the weight of the distillation
            term in the teacher's loss (the student as the teacher's
            teacher, as in Deep Mutual Learning), in [0, 1]; 0 trains the
            teacher on the hard labels alone.
        name: the model's name.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    import keras, keras_kd as kd

    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(temperature=4.0),
        alpha=0.9,  # weight of the distillation term
    )
    distiller.fit(x_train, y_train, validation_split=0.1, epochs=5)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        teacher=None,
        student=None,
        train_teacher: bool = False,
        teacher_alpha: float = 0.0,
        name="distiller",
        **kwargs,
    ):
        backend.check_tensorflow_backend("Distiller")
        if not isinstance(train_teacher, bool):
            raise TypeError(
                "Argument `train_teacher` must be True or False. "
                f"Received: train_teacher={train_teacher!r}."
            )
        if train_teacher and teacher is None:
            raise ValueError(
                "Argument `train_teacher=True` needs a teacher to train. "
                "Received: teacher=None."
            )
        teacher_alpha = _check_alpha(teacher_alpha, "teacher_alpha")
        _check_model(teacher, "teacher", allow_none=True)
        _check_model(student, "student", allow_none=False)
        if teacher is student:
            raise ValueError(
                "Arguments `teacher` and `student` must be different models. "
                f"Received the same model for both: {student.name!r}. For "
                "self-distillation, give the teacher a frozen copy of the "
                "student (see `keras_kd.callbacks.SelfDistillation`)."
            )
        _check_trainable(student)
        if teacher is not None:
            _check_output_shapes(teacher, student)
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        self.train_teacher = train_teacher
        self.teacher_alpha = teacher_alpha
        self._teacher_swapped = False
        if teacher is not None and not train_teacher:
            teacher.trainable = False
        self._alpha = tf.Variable(
            0.5, trainable=False, dtype=tf.float32, name="alpha"
        )
        self._distillation_loss = None
        self._distillation_fns = None
        self._teacher_probs = (
            output_is_probabilities(teacher) if teacher is not None else None
        )
        self._student_probs = output_is_probabilities(student)
        self.total_loss_tracker = keras.metrics.Mean(name="loss")
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self.teacher_loss_tracker = (
            keras.metrics.Mean(name="teacher_loss") if train_teacher else None
        )
        if getattr(student, "built", False):
            self.built = True

    # ------------------------------------------------------------------
    # Keras API
    # ------------------------------------------------------------------

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    @property
    def alpha(self) -> float:
        """Weight of the distillation term, in [0, 1]."""
        return float(self._alpha.numpy())

    @alpha.setter
    def alpha(self, value):
        self._alpha.assign(_check_alpha(value))

    @property
    def alpha_variable(self):
        """The `tf.Variable` holding alpha; assigning it needs no retrace."""
        return self._alpha

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
                `keras_kd.losses.KLDivergence(temperature=2.0)` by default.
                For several outputs: one loss for all, or a list / dict
                (keyed by output name) with a loss, or None to skip, per
                output.
            alpha: weight of the distillation term, in [0, 1]:
                `loss = alpha * distillation + (1 - alpha) * hard`. Ignored
                when there is no teacher.
            **kwargs: passed to `keras.Model.compile` (`loss_weights`,
                `weighted_metrics`, `jit_compile`, `steps_per_execution`...).
        """
        alpha = _check_alpha(alpha)
        _check_hard_loss(loss)
        if loss is None and self.train_teacher:
            raise ValueError(
                "Argument `loss` (the hard-label loss) is required with "
                "`train_teacher=True`: the teacher learns from the labels. "
                "Received: loss=None."
            )
        if loss is None and (self.teacher is None or alpha < 1.0):
            raise ValueError(
                "Argument `loss` (the hard-label loss) is required unless "
                "there is a teacher and alpha=1. Received: loss=None, "
                f"alpha={alpha}, teacher={'None' if self.teacher is None else self.teacher.name!r}."
            )
        if distillation_loss is None:
            distillation_loss = KLDivergence(temperature=_DEFAULT_TEMPERATURE)
        distillation_loss = self._check_distillation_loss(distillation_loss)
        self._distillation_loss = distillation_loss
        self._distillation_fns = None
        self._alpha.assign(alpha)
        self._has_hard_loss = loss is not None
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        config = dict(config)
        config["distillation_loss"] = _serialize(self._distillation_loss)
        config["alpha"] = self.alpha
        return config

    def compile_from_config(self, config):
        config = _deserialize(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        # A teacher swapped in by self-distillation is not part of the saved
        # state (its weights are not saved), so it is not in the config.
        teacher = None if self._teacher_swapped else self.teacher
        return {
            "name": self.name,
            "teacher": None if teacher is None else _serialize(teacher),
            "student": _serialize(self.student),
            "train_teacher": self.train_teacher,
            "teacher_alpha": self.teacher_alpha,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        teacher = config.pop("teacher", None)
        student = config.pop("student")
        return cls(
            teacher=None if teacher is None else _deserialize(teacher),
            student=_deserialize(student),
            **config,
        )

    @property
    def metrics(self):
        own = [
            self.total_loss_tracker,
            self.hard_loss_tracker,
            self.distillation_loss_tracker,
        ]
        if self.teacher_loss_tracker is not None:
            own.append(self.teacher_loss_tracker)
        builtin = self._builtin_loss_trackers()
        rest = [
            m
            for m in super().metrics
            if not any(m is o for o in own) and not any(m is b for b in builtin)
        ]
        return own + rest

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self.train_teacher:
            return self._online_train_step(x, y, sample_weight)
        teacher_output = self._teacher_forward(x)
        with tf.GradientTape() as tape:
            y_pred = self.student(x, training=True)
            total, hard, distill = self._step_losses(
                x, y, y_pred, teacher_output, sample_weight
            )
        self._minimize(total, tape)
        return self._update_metrics(x, y, y_pred, sample_weight, total, hard, distill)

    def _minimize(self, loss, tape):
        """One optimizer step on the trainable weights, with loss scaling
        under mixed precision, in either flavour."""
        variables = self.trainable_variables
        if backend.LEGACY:
            self.optimizer.minimize(loss, variables, tape=tape)
            return
        with tape:
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))

    def _online_train_step(self, x, y, sample_weight):
        """Teacher and student learn together; each is the other's target
        with the gradient stopped."""
        with tf.GradientTape() as tape:
            teacher_output = self.teacher(x, training=True)
            y_pred = self.student(x, training=True)
            frozen_teacher = tf.nest.map_structure(tf.stop_gradient, teacher_output)
            total, hard, distill = self._step_losses(
                x, y, y_pred, frozen_teacher, sample_weight
            )
            teacher_loss = self._hard_loss(y, teacher_output, sample_weight)
            if self.teacher_alpha > 0.0:
                frozen_student = tf.nest.map_structure(tf.stop_gradient, y_pred)
                towards_student = self._distillation_term(
                    frozen_student, teacher_output, sample_weight
                )
                teacher_loss = (
                    self.teacher_alpha * towards_student
                    + (1.0 - self.teacher_alpha) * teacher_loss
                )
            teacher_reg = [tf.cast(tf.reduce_sum(l), tf.float32) for l in self.teacher.losses]
            if teacher_reg:
                teacher_loss = teacher_loss + tf.add_n(teacher_reg)
            both = total + teacher_loss
        self._minimize(both, tape)
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        self.teacher_loss_tracker.update_state(
            teacher_loss * float(backend.num_replicas()), sample_weight=batch
        )
        return self._update_metrics(x, y, y_pred, sample_weight, total, hard, distill)

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
        _check_model(teacher, "teacher", allow_none=True)
        if teacher is self.student:
            raise ValueError(
                "The new teacher must not be the student itself; give it a "
                "frozen copy."
            )
        if teacher is not None:
            _check_output_shapes(teacher, self.student)
            teacher.trainable = False
        object.__setattr__(self, "teacher", teacher)
        self._teacher_swapped = True
        self._teacher_probs = (
            output_is_probabilities(teacher) if teacher is not None else None
        )
        self._distillation_fns = None
        self.train_function = None
        self.test_function = None
        self.predict_function = None
        if getattr(self, "optimizer", None) is not None:
            self.make_train_function(force=True)
            self.make_test_function(force=True)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_output = self._teacher_forward(x)
        y_pred = self.student(x, training=False)
        total, hard, distill = self._step_losses(
            x, y, y_pred, teacher_output, sample_weight
        )
        return self._update_metrics(x, y, y_pred, sample_weight, total, hard, distill)

    # ------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------

    def _builtin_loss_trackers(self):
        """The flavour's own "loss" tracker, replaced here by ours."""
        if backend.LEGACY:
            compiled = getattr(self, "compiled_loss", None)
            tracker = getattr(compiled, "_total_loss_mean", None)
        else:
            tracker = getattr(self, "_loss_tracker", None)
        return [tracker] if tracker is not None else []

    def _check_distillation_loss(self, distillation_loss):
        if isinstance(distillation_loss, dict):
            names = self._output_names()
            for key, value in distillation_loss.items():
                if names is not None and key not in names:
                    raise ValueError(
                        "Argument `distillation_loss` has a key that names no "
                        f"output of the student. Received key {key!r}; the "
                        f"student's outputs are {names}."
                    )
            return {
                k: None if v is None else _check_loss_function(v, "distillation_loss")
                for k, v in distillation_loss.items()
            }
        if isinstance(distillation_loss, (list, tuple)):
            names = self._output_names()
            if names is not None and len(distillation_loss) != len(names):
                raise ValueError(
                    "Argument `distillation_loss` must have one entry per "
                    f"student output ({len(names)}: {names}). Received "
                    f"{len(distillation_loss)} entries."
                )
            return [
                None if v is None else _check_loss_function(v, "distillation_loss")
                for v in distillation_loss
            ]
        return _check_loss_function(distillation_loss, "distillation_loss")

    def _output_names(self):
        names = getattr(self.student, "output_names", None)
        if not names:
            return None
        return list(names)

    def _resolve_distillation_fns(self, y_pred):
        """One distillation loss (or None) per flattened student output."""
        if self._distillation_fns is not None:
            return self._distillation_fns
        flat = tf.nest.flatten(y_pred)
        spec = self._distillation_loss
        if isinstance(spec, dict):
            if isinstance(y_pred, dict):
                keys = sorted(y_pred.keys())
            else:
                keys = self._output_names() or [str(i) for i in range(len(flat))]
            fns = [spec.get(k) for k in keys]
        elif isinstance(spec, list):
            if len(spec) != len(flat):
                raise ValueError(
                    "Argument `distillation_loss` must have one entry per "
                    f"student output ({len(flat)}). Received {len(spec)}."
                )
            fns = list(spec)
        else:
            fns = [spec] * len(flat)
        self._distillation_fns = fns
        return fns

    def _teacher_forward(self, x):
        if self.teacher is None:
            return None
        output = self.teacher(x, training=False)
        return tf.nest.map_structure(tf.stop_gradient, output)

    def _hard_loss(self, y, y_pred, sample_weight):
        if not self._has_hard_loss or y is None:
            return tf.zeros((), tf.float32)
        if backend.LEGACY:
            loss = self.compiled_loss(
                y, y_pred, sample_weight, regularization_losses=None
            )
        else:
            loss = self._compile_loss(y, y_pred, sample_weight)
        return tf.cast(loss, tf.float32)

    def _distillation_term(self, teacher_output, y_pred, sample_weight):
        student_flat = tf.nest.flatten(y_pred)
        teacher_flat = tf.nest.flatten(teacher_output)
        if len(student_flat) != len(teacher_flat):
            raise ValueError(
                f"The teacher has {len(teacher_flat)} outputs and the student "
                f"{len(student_flat)}; distillation pairs them one to one."
            )
        fns = self._resolve_distillation_fns(y_pred)
        weights = tf.nest.flatten(sample_weight) if sample_weight is not None else []
        if len(weights) != len(student_flat):
            weights = [sample_weight] * len(student_flat)
        teacher_probs = self._teacher_probs or [False] * len(teacher_flat)
        student_probs = self._student_probs or [False] * len(student_flat)
        terms = []
        for i, (fn, t, s) in enumerate(zip(fns, teacher_flat, student_flat)):
            if fn is None:
                continue
            _check_pair_shapes(t, s, i)
            t = _as_logits(t, teacher_probs[i], fn, "teacher_from_logits")
            s = _as_logits(s, student_probs[i], fn, "student_from_logits")
            if backend.LEGACY:
                # tf_keras refuses a batch-mean reduction under a strategy
                # unless, as `compile` does, the caller scales per replica.
                fn._allow_sum_over_batch_size = True
            value = tf.cast(fn(t, s, sample_weight=weights[i]), tf.float32)
            if backend.LEGACY:
                value = value / float(backend.num_replicas())
            terms.append(value)
        if not terms:
            return tf.zeros((), tf.float32)
        return tf.add_n(terms)

    def _step_losses(self, x, y, y_pred, teacher_output, sample_weight):
        _check_trainable(self.student)
        hard = self._hard_loss(y, y_pred, sample_weight)
        if teacher_output is None:
            distill = tf.zeros((), tf.float32)
            total = hard
        else:
            distill = self._distillation_term(teacher_output, y_pred, sample_weight)
            alpha = self._alpha
            total = alpha * distill + (1.0 - alpha) * hard
        regularization = [
            tf.cast(tf.reduce_sum(loss), tf.float32) for loss in self.student.losses
        ]
        if regularization:
            regularization = tf.add_n(regularization)
            if backend.LEGACY:  # as tf_keras's compiled loss scales it
                regularization = regularization / float(backend.num_replicas())
            total = total + regularization
        return total, hard, distill

    def _update_metrics(self, x, y, y_pred, sample_weight, total, hard, distill):
        # Losses are scaled by 1 / replicas for the gradient sum across
        # replicas (Keras does the same); the trackers show unscaled values.
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        replicas = backend.num_replicas()
        for tracker, value in (
            (self.total_loss_tracker, total),
            (self.hard_loss_tracker, hard),
            (self.distillation_loss_tracker, distill),
        ):
            if replicas > 1:
                value = value * float(replicas)
            tracker.update_state(value, sample_weight=batch)
        if y is None:
            return {m.name: m.result() for m in self.metrics}
        return self.compute_metrics(x, y, y_pred, sample_weight)


def _as_logits(value, is_probabilities, fn, flag):
    """Probabilities of a softmax output become log-probabilities (logits).

    Only when the loss expects logits (its `teacher_from_logits` /
    `student_from_logits` is True or absent); a loss told it gets
    probabilities receives them unchanged.
    """
    if not is_probabilities or not getattr(fn, flag, True):
        return value
    value = tf.cast(value, tf.float32)
    return tf.math.log(tf.clip_by_value(value, 1e-7, 1.0))


def _check_pair_shapes(teacher_output, student_output, index):
    t, s = teacher_output.shape, student_output.shape
    if t.rank is not None and s.rank is not None:
        if not _shapes_compatible(tuple(t), tuple(s)):
            raise ValueError(
                "The teacher's and the student's outputs cannot be compared: "
                f"output {index} has shape {tuple(t)} for the teacher and "
                f"{tuple(s)} for the student. Expected the same shape "
                "(e.g. the same number of classes)."
            )


def _check_output_shapes(teacher, student):
    t, s = _output_shapes(teacher), _output_shapes(student)
    if t is None or s is None:
        return
    if len(t) != len(s):
        raise ValueError(
            "Arguments `teacher` and `student` must have the same number of "
            f"outputs. Received: teacher with {len(t)} ({t}), student with "
            f"{len(s)} ({s})."
        )
    for ts, ss in zip(t, s):
        if not _shapes_compatible(ts, ss):
            raise ValueError(
                "The outputs of `teacher` and `student` cannot be compared: "
                f"teacher output shape {ts}, student output shape {ss}. "
                "Expected the same shape (e.g. the same number of classes)."
            )


def _check_trainable(student):
    if getattr(student, "built", False) and not student.trainable_weights:
        raise ValueError(
            "Argument `student` has no trainable weights: there is nothing to "
            f"distil into. Received: student={student.name!r} with "
            f"trainable={student.trainable} and "
            f"{len(student.weights)} weights. Expected a model with trainable "
            "weights (is `student.trainable` False?)."
        )


__all__ = ["Distiller", "output_is_probabilities"]
