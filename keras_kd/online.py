"""Online distillation: models that learn from each other while training.

`MutualLearning` is Deep Mutual Learning (Zhang et al. 2018): a cohort of
peers trained together, each on the hard labels and on the average of its
peers' softened predictions. For a teacher and a student trained together
see `Distiller(teacher, student, train_teacher=True)`.
"""

from __future__ import annotations

import math

from keras_kd import backend
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.distiller import (
    _CallableLoss,
    _check_alpha,
    _check_model,
    output_is_probabilities,
)
from keras_kd.losses import softened_log_probs, validate_temperature


def _accuracy(y_true, y_pred):
    """Keras's "accuracy": sparse or one-hot labels, told by their shape."""
    one_hot = (
        y_true.shape.rank == y_pred.shape.rank
        and y_true.shape[-1] == y_pred.shape[-1]
        and y_pred.shape[-1] != 1
    )
    if one_hot:
        y_true = tf.argmax(y_true, axis=-1)
    else:
        y_true = tf.reshape(y_true, tf.shape(y_pred)[:-1])
    predicted = tf.argmax(y_pred, axis=-1)
    return tf.cast(tf.equal(tf.cast(y_true, predicted.dtype), predicted), tf.float32)


def _make_metric(identifier):
    if isinstance(identifier, str) and identifier in ("accuracy", "acc"):
        return keras.metrics.MeanMetricWrapper(_accuracy, name="accuracy")
    metric = keras.metrics.get(identifier)
    if isinstance(metric, keras.metrics.Metric):
        return metric.__class__.from_config(metric.get_config())
    return keras.metrics.MeanMetricWrapper(
        metric, name=getattr(metric, "__name__", "metric")
    )


@register_serializable
class MutualLearning(keras.Model):
    """Deep Mutual Learning: a cohort of peers that teach each other.

    Each peer minimises

        alpha * T**2 * KL(mean_j softmax(z_j / T) || softmax(z_i / T))
        + (1 - alpha) * loss(y, z_i)

    where the mean runs over the other peers, whose predictions are held
    constant (gradient stopped). **`alpha` weights the distillation term**,
    as everywhere in keras-kd; Zhang et al. weight both terms equally,
    which is `alpha=0.5` up to a factor of 2. Each peer has its own
    optimizer (a copy of the one given to `compile`) and so its own state;
    metrics are reported per peer (`peer_0_accuracy`, ...) with their mean
    (`accuracy`). `predict` and `__call__` return the first peer's output;
    any peer can be taken out (`cohort.peers[i]`) and saved as a plain
    Keras model.

    Args:
        peers: a list of two or more `keras.Model`s with the same output
            shape (logits, or probabilities from a final softmax).
        name: the model's name.

    Example:

    ```python
    cohort = kd.MutualLearning([make_model(), make_model()])
    cohort.compile(optimizer="adam",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"], temperature=1.0, alpha=0.5)
    cohort.fit(x, y, epochs=5, validation_data=(xv, yv))
    cohort.peers[1].save("peer1.keras")
    ```
    """

    def __init__(self, peers=None, name="mutual_learning", **kwargs):
        backend.check_tensorflow_backend("MutualLearning")
        if not isinstance(peers, (list, tuple)) or len(peers) < 2:
            raise ValueError(
                "Argument `peers` must be a list of at least two Keras models. "
                f"Received: peers={peers!r}."
            )
        for i, peer in enumerate(peers):
            _check_model(peer, f"peers[{i}]", allow_none=False)
        if len({id(p) for p in peers}) != len(peers):
            raise ValueError(
                "Argument `peers` must hold different models; the same model "
                "appears more than once."
            )
        super().__init__(name=name, **kwargs)
        self.peers = list(peers)
        self._probs = [
            (output_is_probabilities(p) or [False])[0] for p in self.peers
        ]
        self._peer_optimizers = None
        self._peer_metrics = None
        self.total_loss_tracker = keras.metrics.Mean(name="loss")
        self._peer_loss_trackers = [
            keras.metrics.Mean(name=f"peer_{i}_loss") for i in range(len(peers))
        ]
        if all(getattr(p, "built", False) for p in peers):
            self.built = True

    def call(self, inputs, training=None):
        return self.peers[0](inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=None, temperature=1.0,
                alpha=0.5, **kwargs):
        """Configures the cohort.

        Args:
            optimizer: an optimizer (instance or name); each peer gets its own
                copy of it.
            loss: the hard-label loss, applied to every peer.
            metrics: metrics, computed for every peer.
            temperature: softmax temperature of the peers' predictions.
            alpha: weight of the distillation (peer) term, in [0, 1].
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...).
        """
        if loss is None:
            raise ValueError(
                "Argument `loss` (the hard-label loss) is required. "
                "Received: loss=None."
            )
        self.temperature = validate_temperature(temperature)
        self.alpha = _check_alpha(alpha)
        hard = keras.losses.get(loss) if isinstance(loss, str) else loss
        if not isinstance(hard, keras.losses.Loss):
            if not callable(hard):
                raise TypeError(
                    "Argument `loss` must be a Keras loss (a `keras.losses.Loss`, "
                    f"its name, or a callable). Received: loss={loss!r}."
                )
            hard = _CallableLoss(hard)
        if backend.LEGACY:
            # tf_keras refuses batch means under a strategy unless told that
            # the caller scales per replica, as `_step` does.
            hard._allow_sum_over_batch_size = True
        self._hard_loss = hard
        optimizer = keras.optimizers.get(optimizer)
        self._peer_optimizers = [optimizer] + [
            optimizer.__class__.from_config(optimizer.get_config())
            for _ in self.peers[1:]
        ]
        self._peer_metrics = [
            [_make_metric(m) for m in (metrics or [])] for _ in self.peers
        ]
        super().compile(optimizer=optimizer, **kwargs)
        if self.built:
            for opt, peer in zip(self._peer_optimizers, self.peers):
                opt.build(peer.trainable_variables)

    @property
    def peer_optimizers(self):
        """One optimizer per peer."""
        return list(self._peer_optimizers or [])

    @property
    def metrics(self):
        own = [self.total_loss_tracker] + list(self._peer_loss_trackers)
        for peer_metrics in self._peer_metrics or []:
            own.extend(peer_metrics)
        return own

    def _hard(self, y, pred, sample_weight):
        return tf.cast(self._hard_loss(y, pred, sample_weight=sample_weight), tf.float32)

    def _peer_terms(self, outputs, sample_weight):
        """Distillation term of each peer towards the mean of the others."""
        log_probs = []
        for out, probs in zip(outputs, self._probs):
            log_probs.append(softened_log_probs(out, self.temperature, not probs))
        n = len(outputs)
        terms = []
        for i in range(n):
            others = tf.stack(
                [tf.stop_gradient(log_probs[j]) for j in range(n) if j != i], axis=0
            )
            target = tf.reduce_logsumexp(others, axis=0) - math.log(n - 1)
            per_sample = tf.reduce_sum(
                tf.exp(target) * (target - log_probs[i]), axis=-1
            ) * (self.temperature**2)
            if sample_weight is not None:
                weight = tf.cast(sample_weight, tf.float32)
                weight = tf.reshape(weight, tf.concat(
                    [tf.shape(weight), tf.ones(tf.rank(per_sample) - tf.rank(weight), tf.int32)], 0))
                per_sample = per_sample * weight
            terms.append(tf.reduce_mean(per_sample) / float(backend.num_replicas()))
        return terms

    def _step(self, data, training):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        outputs = [peer(x, training=training) for peer in self.peers]
        peer_terms = self._peer_terms(outputs, sample_weight)
        losses = []
        for i, out in enumerate(outputs):
            hard = self._hard(y, out, sample_weight)
            if backend.LEGACY:  # Keras 3 losses scale per replica themselves
                hard = hard / float(backend.num_replicas())
            loss = self.alpha * peer_terms[i] + (1.0 - self.alpha) * hard
            reg = [tf.cast(tf.reduce_sum(l), tf.float32) for l in self.peers[i].losses]
            if reg:
                loss = loss + tf.add_n(reg)
            losses.append(loss)
        return x, y, sample_weight, outputs, losses

    def train_step(self, data):
        with tf.GradientTape() as tape:
            x, y, sample_weight, outputs, losses = self._step(data, training=True)
            total = tf.add_n(losses)
        variables = [p.trainable_variables for p in self.peers]
        gradients = tape.gradient(total, [v for vs in variables for v in vs])
        start = 0
        for optimizer, vs in zip(self._peer_optimizers, variables):
            optimizer.apply_gradients(zip(gradients[start:start + len(vs)], vs))
            start += len(vs)
        return self._update(x, y, sample_weight, outputs, losses, total)

    def test_step(self, data):
        x, y, sample_weight, outputs, losses = self._step(data, training=False)
        return self._update(x, y, sample_weight, outputs, losses, tf.add_n(losses))

    def _update(self, x, y, sample_weight, outputs, losses, total):
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        replicas = float(backend.num_replicas())
        self.total_loss_tracker.update_state(total * replicas, sample_weight=batch)
        results = {"loss": self.total_loss_tracker.result()}
        means = {}
        for i, (out, loss) in enumerate(zip(outputs, losses)):
            self._peer_loss_trackers[i].update_state(loss * replicas, sample_weight=batch)
            results[f"peer_{i}_loss"] = self._peer_loss_trackers[i].result()
            for metric in self._peer_metrics[i]:
                metric.update_state(y, out, sample_weight=sample_weight)
                value = metric.result()
                results[f"peer_{i}_{metric.name}"] = value
                means.setdefault(metric.name, []).append(value)
        for name, values in means.items():
            results[name] = tf.add_n(values) / float(len(values))
        return results

    def get_config(self):
        return {
            "name": self.name,
            "peers": [keras.saving.serialize_keras_object(p) for p in self.peers],
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        peers = [keras.saving.deserialize_keras_object(p) for p in config.pop("peers")]
        return cls(peers=peers, **config)


__all__ = ["MutualLearning"]
