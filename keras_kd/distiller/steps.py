"""The steps of a `Distiller`: train, test and predict, and their losses.

A mixin of `keras_kd.Distiller` (kept apart so that each file holds one
concept): how each model runs once per step and how the student's loss is
put together from the hard labels, the soft targets and the feature taps
(hard, distillation, features, total).
"""

from __future__ import annotations

import threading

from keras_kd import _precision, _utils, augment, backend
from keras_kd.backend import tf
from keras_kd.distiller import arguments, batches, pairing, teacher_side


class DistillerSteps:
    """The per-step computations of `keras_kd.Distiller` (a mixin)."""

    @property
    def _stored_targets(self):
        """True while a step that distils from stored teacher outputs
        (`keras_kd.data.TeacherBatch`, always logits) is traced in this
        thread (a thread-local flag: `MirroredStrategy` traces each replica's
        step in its own thread)."""
        return getattr(_TRACING, "stored", False)

    def make_train_function(self, force=False):
        self._teacher_runners.sync()  # a lower-precision teacher's copy
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        self._teacher_runners.sync()
        return super().make_test_function(force=force)

    def train_step(self, data):
        stored = self._stored_teaching(data, training=True)
        x, y, sample_weight, labelled = batches.unpack_batch(data)
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
        rows = batches.labelled_rows(y_pred, labelled)
        logs = self.compute_metrics(x, y, rows, sample_weight)
        return backend.multi_worker_step_logs(self.distribute_strategy, logs)

    def test_step(self, data):
        stored = self._stored_teaching(data, training=False)
        x, y, sample_weight, labelled = batches.unpack_batch(data)
        teaching = self._teacher_forward(x) if stored is None else stored
        y_pred, features = self._student_forward(x, training=False)
        self._step_loss(x, y, y_pred, teaching, sample_weight, labelled, None, features)
        rows = batches.labelled_rows(y_pred, labelled)
        logs = self.compute_metrics(x, y, rows, sample_weight)
        return backend.multi_worker_step_logs(self.distribute_strategy, logs)

    def predict_step(self, data):
        # A `TeacherBatch` (stored teacher outputs) predicts from its inputs.
        x = batches.unpack_batch(data)[0]
        return self(x, training=False)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics (when there are labels); returns logs."""
        if y is None:  # distillation alone: nothing to score the student on
            return {m.name: m.result() for m in self.loss_trackers}
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def compute_hard_loss(self, y, y_pred, sample_weight=None):
        """The loss given to `compile` between the labels and `y_pred`.

        Args:
            y: the labels, or None.
            y_pred: outputs of the student (or of a model shaped like it).
            sample_weight: optional sample weights.

        Returns:
            A float32 scalar; 0 without labels or without a hard loss.
        """
        if not self._has_hard_loss or y is None:
            return tf.zeros((), tf.float32)
        compiled = backend.compiled_loss(self)
        if backend.LEGACY:
            loss = compiled(y, y_pred, sample_weight, regularization_losses=None)
        else:
            loss = compiled(y, y_pred, sample_weight)
        return tf.cast(loss, tf.float32)

    def compute_distillation_loss(
        self,
        teacher_output,
        student_output,
        sample_weight=None,
        reverse=False,
        labels=None,
    ):
        """The compiled distillation loss between teacher and student outputs.

        Summed over the outputs that have a distillation loss. Outputs of a
        final softmax are turned into log-probabilities where the loss
        expects logits.

        Args:
            teacher_output: the teacher's outputs (targets).
            student_output: the student's outputs (predictions).
            sample_weight: optional sample weights.
            reverse: swap the roles: the teacher learns towards the student's
                outputs (the teacher's term of online distillation). Each
                output keeps its own model's softmax detection.
            labels: the batch's labels (`y`), or None; given to the losses
                that declare `requires_labels = True`.

        Returns:
            A float32 scalar.
        """
        fns = self._resolve_distillation_fns(student_output)
        probs = None if self._stored_targets else self._teacher_probs
        teacher = (tf.nest.flatten(teacher_output), probs)
        student = teacher_side.student_subset(
            tf.nest.flatten(student_output), self._teacher_classes
        )
        student = (student, self._student_probs)
        if self._teacher_classes is not None and pairing.needs_labels(fns):
            raise ValueError(
                "Argument `teacher_classes` does not support a distillation "
                "loss that reads the labels (e.g. DecoupledKD): the labels "
                "name the student's classes, not the teacher's. Use "
                "KLDivergence (Learning without Forgetting's term) or DIST."
            )
        if reverse:
            teacher, student = student, teacher
        per_output = None
        if pairing.needs_labels(fns):
            per_output = pairing.labels_per_output(
                labels, student_output, self._output_names()
            )
        return pairing.distillation_term(
            fns,
            teacher[0],
            student[0],
            teacher[1],
            student[1],
            sample_weight,
            labels=per_output,
        )

    def compute_total_loss(
        self,
        x,
        y,
        y_pred,
        teacher_output,
        sample_weight=None,
        hard_loss=None,
        feature_loss=None,
    ):
        """The student's loss; updates the `loss_trackers`.

        `alpha * distillation + (1 - alpha) * hard` plus the student's
        regularization losses; the hard loss alone without a teacher.

        Args:
            x: the inputs (their batch size weights the trackers).
            y: the labels, or None: for the hard loss (unless `hard_loss` is
                given) and for the distillation losses that require labels.
            y_pred: the student's outputs.
            teacher_output: the teacher's outputs (gradient stopped), or None.
            sample_weight: optional sample weights.
            hard_loss: the hard-label term, where the step computed it
                (mixup, labelled rows of a mixed batch); None: from `y`.
            feature_loss: the weighted sum of the feature terms (added to
                the total), or None.

        Returns:
            A float32 scalar, scaled per replica under `tf.distribute` as
            Keras scales losses.
        """
        arguments.check_trainable(self.student)
        hard = hard_loss
        if hard is None:
            hard = self.compute_hard_loss(y, y_pred, sample_weight)
        if teacher_output is None:
            distill = tf.zeros((), tf.float32)
            total = hard
        else:
            distill = self.compute_distillation_loss(
                teacher_output, y_pred, sample_weight, labels=y
            )
            total = self._alpha * distill + (1.0 - self._alpha) * hard
        if feature_loss is not None:
            total = total + feature_loss
        total = total + backend.regularization_loss(self.student)
        # Losses are scaled by 1 / replicas for the gradient sum across
        # replicas (Keras does the same); the trackers show unscaled values.
        batch = _utils.batch_size(x)
        replicas = float(backend.num_replicas())
        values = [total, hard, distill]
        if self._features is not None:
            values.append(tf.zeros(()) if feature_loss is None else feature_loss)
        for tracker, value in zip(self.loss_trackers, values):
            tracker.update_state(value * replicas, sample_weight=batch)
        return total

    # ------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------

    def _output_names(self):
        names = getattr(self.student, "output_names", None)
        return list(names) if names else None

    def _resolve_distillation_fns(self, y_pred):
        if self._distillation_fns is None:
            self._distillation_fns = pairing.losses_per_output(
                self._distillation_loss, y_pred, self._output_names()
            )
        return self._distillation_fns

    def _step_loss(
        self, x, y, y_pred, teaching, sample_weight, labelled, mix, features
    ):
        """The total loss of a step, with mixup, labelled rows and taps handled.

        Per-token sample weights (a padding mask) are rescaled so that every
        term is the weighted mean over the real tokens (`batches.
        per_token_mean`), not over the padded length. `teaching` from
        `_stored_teaching` holds stored outputs, which are logits.
        """
        previous = getattr(_TRACING, "stored", False)
        _TRACING.stored = isinstance(teaching, _Stored)
        try:
            return self._step_total(
                x, y, y_pred, teaching, sample_weight, labelled, mix, features
            )
        finally:
            _TRACING.stored = previous

    def _step_total(
        self, x, y, y_pred, teaching, sample_weight, labelled, mix, features
    ):
        teacher_output, feature_loss = None, None
        taught = sample_weight  # the weights of the distillation and feature terms
        if self._mask_token_id is not None:  # MLM: the masked positions only
            tokens = teacher_side.route(x, self._student_inputs, "student_inputs")
            taught = batches.masked_positions(
                tokens, self._mask_token_id, sample_weight
            )
        taught = _utils.with_token_mask(taught, batches.keras_mask(y_pred))
        if teaching is not None:
            outputs, teacher_features = teaching
            teacher_output = self._soft_targets(outputs, y_pred)
            if self._features is not None:
                feature_loss = self._features.term(teacher_features, features, taught)
        sample_weight = batches.per_token_mean(sample_weight, y_pred)
        taught = batches.per_token_mean(taught)
        rows = batches.labelled_rows(y_pred, labelled)
        if mix is None or y is None:
            hard = self.compute_hard_loss(y, rows, sample_weight)
        else:  # labelled rows are mixed among themselves: perm's first rows
            lam, perm = mix
            perm = perm if labelled is None else perm[:labelled]
            hard = augment.mixed_loss(
                self.compute_hard_loss, y, rows, lam, perm, sample_weight
            )
        labels = y
        if labelled is not None:  # labels for the losses that require them
            labels = pairing.mixed_batch_labels(
                self._resolve_distillation_fns(y_pred),
                y,
                teacher_output,
                labelled,
                y_pred,
                self._output_names(),
            )
        return self.compute_total_loss(
            x, labels, y_pred, teacher_output, taught, hard, feature_loss
        )

    def _stored_teaching(self, data, training):
        """The `teaching` of a batch with stored teacher outputs (skipping the
        teacher), or None for any other batch; refused where unusable."""
        outputs = batches.cached_outputs(data)
        if outputs is None:
            return None
        batches.refuse_cached_teaching(
            type(self).__name__,
            self._teachers,
            self._features,
            self.augmentation,
            self._mixup,
            self.train_teacher,
            training,
        )
        return _Stored([outputs], None)

    def _teacher_forward(self, x):
        """Each teacher once: `(outputs per teacher, tapped features)`, or None."""
        if not self._teachers:
            return None
        x = teacher_side.route(x, self._teacher_inputs, "teacher_inputs")
        views = self._features.teacher_views if self._features is not None else {}
        outputs, features = teacher_side.forward(
            self._teacher_runners.models, views, x, len(self.features)
        )
        if self._teacher_dtype is None:
            return outputs, features
        # A lower-precision teacher: every loss sees float32.
        return _precision.to_float32(outputs), _precision.to_float32(features)

    def _student_forward(self, x, training):
        """The student once: `(outputs, tapped features or None)`."""
        x = teacher_side.route(x, self._student_inputs, "student_inputs")
        if self._features is None:
            return self.student(x, training=training), None
        output, features = self._features.student_view(x, training=training)
        return output, features

    def _soft_targets(self, outputs, y_pred):
        """What the student's outputs learn from: one teacher's outputs as
        they are, or several teachers' average / a class subset as logits."""
        if len(outputs) == 1 and self._class_indices is None:
            return outputs[0]
        fns = self._resolve_distillation_fns(y_pred)
        probs = [_utils.output_is_probabilities(t) for t in self._teachers]
        if self._stored_targets:  # stored outputs are logits
            probs = [None]
        probs = [p or [False] * len(tf.nest.flatten(o)) for p, o in zip(probs, outputs)]
        flat = [tf.nest.flatten(o) for o in outputs]
        targets = teacher_side.combine(
            flat, probs, self._teacher_weights, self._class_indices, fns
        )
        return targets[0] if len(targets) == 1 else targets


_TRACING = threading.local()


class _Stored(tuple):
    """`(outputs per teacher, None)`: teaching from stored outputs (logits)."""

    def __new__(cls, outputs, features):
        return super().__new__(cls, (outputs, features))


__all__ = ["DistillerSteps"]
