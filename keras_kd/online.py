"""Online distillation: a teacher and a student that learn together.

`OnlineDistiller` is a `Distiller` whose teacher trains too, each model
learning from the labels and (with `teacher_alpha > 0` for the teacher) from
the other's current predictions. Deep Mutual Learning, a cohort of peers
without a teacher, is `keras_kd.mutual.MutualLearning`, importable from here
as well.
"""

from __future__ import annotations

from keras_kd import _utils, backend
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.distiller import Distiller, batches
from keras_kd.mutual import MutualLearning  # still importable from here


@register_serializable
class OnlineDistiller(Distiller):
    """A teacher and a student trained together (online distillation).

    Like a `Distiller`, but the teacher learns too. In each step both run
    once in training mode, and

        student: alpha * distillation(teacher(x), student(x))
                 + (1 - alpha) * loss(y, student(x))
        teacher: teacher_alpha * distillation(student(x), teacher(x))
                 + (1 - teacher_alpha) * loss(y, teacher(x))

    where the model in the first argument of `distillation` is each time
    the target, its gradient stopped. Both are minimised with the one
    optimizer given to `compile` (each weight has its own optimizer state).
    With `teacher_alpha=0` the teacher learns from the labels alone, as in a
    plain `fit`; with `teacher_alpha > 0` the student is the teacher's
    teacher too, as in Deep Mutual Learning.

    History carries what a Distiller's does, plus `teacher_loss`. It trains
    under `tf.distribute` strategies (`MirroredStrategy`,
    `MultiWorkerMirroredStrategy`) with the result of one device, and
    under mixed precision. Online distillation is this class alone:
    `Distiller(..., train_teacher=True)` raises an error naming it, and a
    Distiller saved by keras-kd 0.1 with `train_teacher=True` loads as one.

    Args:
        teacher: the `keras.Model` to train alongside the student.
        student: a `keras.Model` whose outputs have the teacher's shapes.
        train_teacher: must be True. It is accepted so that the configs of
            keras-kd 0.1, which kept `train_teacher=True` for online
            training, load as this class.
        teacher_alpha: weight of the distillation term in the teacher's
            loss, in [0, 1].
        name: the model's name.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    online = kd.OnlineDistiller(teacher=big_model, student=small_model,
                                teacher_alpha=0.5)
    online.compile(optimizer="adam",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"], alpha=0.5)
    online.fit(x, y, epochs=5)
    online.student.save("student.keras")
    ```
    """

    train_teacher = True

    def __init__(
        self,
        teacher=None,
        student=None,
        train_teacher: bool = True,
        teacher_alpha: float = 0.0,
        name="distiller",
        **kwargs,
    ):
        if not _utils.check_bool(train_teacher, "train_teacher"):
            raise ValueError(
                "An OnlineDistiller always trains its teacher. Received: "
                "train_teacher=False. Use `keras_kd.Distiller` for a frozen "
                "teacher."
            )
        if teacher is None:
            raise ValueError(
                "An OnlineDistiller (`train_teacher=True`) needs a teacher to "
                "train. Received: teacher=None."
            )
        teacher_alpha = _utils.check_alpha(teacher_alpha, "teacher_alpha")
        super().__init__(
            teacher=teacher, student=student, train_teacher=True, name=name, **kwargs
        )
        self.teacher_alpha = teacher_alpha
        self.teacher_loss_tracker = keras.metrics.Mean(name="teacher_loss")

    def compile(self, optimizer="rmsprop", loss=None, *args, **kwargs):
        """Configures the training of both models: see `Distiller.compile`.

        `loss` is required: the teacher learns from the labels.
        """
        if loss is None:
            raise ValueError(
                "Argument `loss` (the hard-label loss) is required with "
                "`train_teacher=True`: the teacher learns from the labels. "
                "Received: loss=None."
            )
        super().compile(optimizer, loss, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["teacher_alpha"] = self.teacher_alpha
        return config

    @property
    def loss_trackers(self):
        return super().loss_trackers + [self.teacher_loss_tracker]

    def train_step(self, data):
        batches.refuse_mixed_batch(data, type(self).__name__)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            teacher_output = self.teacher(x, training=True)
            y_pred = self.student(x, training=True)
            frozen_teacher = tf.nest.map_structure(tf.stop_gradient, teacher_output)
            # Sequences: padded tokens count for nothing, means over real tokens.
            hard = self.compute_hard_loss(
                y, y_pred, batches.per_token_mean(sample_weight, y_pred)
            )
            student_loss = self.compute_total_loss(
                x,
                y,
                y_pred,
                frozen_teacher,
                batches.token_weights(sample_weight, y_pred),
                hard_loss=hard,
            )
            teacher_loss = self.compute_teacher_loss(
                x, y, teacher_output, y_pred, sample_weight
            )
            both = student_loss + teacher_loss  # on the tape
        backend.minimize(self.optimizer, both, self.trainable_variables, tape)
        logs = self.compute_metrics(x, y, y_pred, sample_weight)
        return backend.multi_worker_step_logs(self.distribute_strategy, logs)

    def compute_teacher_loss(self, x, y, teacher_output, y_pred, sample_weight=None):
        """The teacher's loss; updates the `teacher_loss` tracker.

        Args:
            x: the inputs (their batch size weights the tracker).
            y: the labels.
            teacher_output: the teacher's outputs, with their gradient.
            y_pred: the student's outputs (their gradient is stopped here).
            sample_weight: optional sample weights.

        Returns:
            A float32 scalar, scaled per replica under `tf.distribute`.
        """
        loss = self.compute_hard_loss(
            y,
            teacher_output,
            batches.per_token_mean(sample_weight, teacher_output),
        )
        if self.teacher_alpha > 0.0:
            frozen_student = tf.nest.map_structure(tf.stop_gradient, y_pred)
            towards_student = self.compute_distillation_loss(
                teacher_output,
                frozen_student,
                batches.token_weights(sample_weight, teacher_output),
                reverse=True,
                labels=y,
            )
            loss = (
                self.teacher_alpha * towards_student + (1.0 - self.teacher_alpha) * loss
            )
        loss = loss + backend.regularization_loss(self.teacher)
        batch = _utils.batch_size(x)
        self.teacher_loss_tracker.update_state(
            loss * float(backend.num_replicas()), sample_weight=batch
        )
        return loss


__all__ = ["MutualLearning", "OnlineDistiller"]
