"""Deep Mutual Learning (Zhang et al. 2018): a cohort of peers that teach each other.

`MutualLearning` trains two or more peers together, each on the hard labels
and on the average of its peers' softened predictions; there is no fixed
teacher. (A teacher and a student trained together, the teacher weighted
towards the labels, is `keras_kd.OnlineDistiller`.)
"""

from __future__ import annotations

import warnings

from keras_kd import _utils, backend
from keras_kd.backend import keras, register_serializable, tf
from keras_kd.distiller import batches
from keras_kd.ensemble import log_mean_probs
from keras_kd.losses import as_loss, softened_log_probs, validate_temperature


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
class MutualLearning(backend.ModelBuildHooks, keras.Model):
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

    Like a plain model, a cohort trains under `tf.distribute` strategies
    (`MirroredStrategy`, `MultiWorkerMirroredStrategy`; built and compiled
    in `strategy.scope()`, with the global batch size of one device), where
    it gives the result of one device, and under mixed precision: with
    `mixed_float16`, each peer's optimizer copy is a `LossScaleOptimizer`
    with its own loss scale, so a step whose gradients overflow in one peer
    is skipped for that peer alone (its scale halves), as Keras skips it for
    a single model.

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
        for key in ("augmentation", "mixup"):
            value = kwargs.pop(key, None)
            if value is not None:
                raise ValueError(
                    f"MutualLearning does not support `{key}` (its peers all "
                    f"learn). Received: {key}={value!r}."
                )
        if not isinstance(peers, (list, tuple)) or len(peers) < 2:
            raise ValueError(
                "Argument `peers` must be a list of at least two Keras models. "
                f"Received: peers={peers!r}."
            )
        for i, peer in enumerate(peers):
            _utils.check_model(peer, f"peers[{i}]", allow_none=False)
        if len({id(p) for p in peers}) != len(peers):
            raise ValueError(
                "Argument `peers` must hold different models; the same model "
                "appears more than once."
            )
        super().__init__(name=name, **kwargs)
        self.peers = list(peers)
        self._probs = [
            (_utils.output_is_probabilities(p) or [False])[0] for p in self.peers
        ]
        self._peer_optimizers = None
        self._peer_metrics = None
        self._compile_arguments = None
        self.total_loss_tracker = keras.metrics.Mean(name="loss")
        self._peer_loss_trackers = [
            keras.metrics.Mean(name=f"peer_{i}_loss") for i in range(len(peers))
        ]
        if backend.LEGACY:
            # The step's logs are metric results, already the same on every
            # replica; tf_keras would otherwise sum them across replicas.
            self.distribute_reduction_method = "first"
        if all(getattr(p, "built", False) for p in peers):
            self.built = True

    def call(self, inputs, training=None):
        return self.peers[0](inputs, training=training)

    def compile(
        self,
        optimizer="adam",
        loss=None,
        metrics=None,
        temperature=1.0,
        alpha=0.5,
        **kwargs,
    ):
        """Configures the cohort.

        Args:
            optimizer: an optimizer (instance or name); each peer gets its own
                copy of it. Under `mixed_float16` (the cohort's policy or a
                peer's) it is wrapped in a `LossScaleOptimizer` first, as
                `keras.Model.compile` wraps it; one given already wrapped (say
                with another `initial_scale`) is copied as it is.
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
        self.alpha = _utils.check_alpha(alpha)
        hard = as_loss(
            loss, "loss", "keras.losses.SparseCategoricalCrossentropy(from_logits=True)"
        )
        backend.allow_batch_mean_under_strategy(hard)  # `_step` divides
        self._hard_loss = hard
        self._compile_arguments = {"loss": loss, "metrics": metrics}
        self._peer_metrics = [
            [_make_metric(m) for m in (metrics or [])] for _ in self.peers
        ]
        super().compile(optimizer=keras.optimizers.get(optimizer), **kwargs)
        # Under mixed_float16 `compile` wraps the optimizer in a loss-scale
        # optimizer (if the cohort was built under that policy); a peer
        # computing in float16 needs one too. Each peer's copy then has its
        # own loss scale, as each peer has its own optimizer state.
        optimizer = self.optimizer
        if not isinstance(optimizer, _LOSS_SCALE_OPTIMIZER) and any(
            _is_mixed_float16(p) for p in self.peers
        ):
            optimizer = self.optimizer = _LOSS_SCALE_OPTIMIZER(optimizer)
        self._peer_optimizers = [optimizer] + [
            optimizer.__class__.from_config(optimizer.get_config())
            for _ in self.peers[1:]
        ]
        if self.built:
            for opt, peer in zip(self._peer_optimizers, self.peers):
                opt.build(peer.trainable_variables)

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config or self._compile_arguments is None:
            return config
        serialize = keras.saving.serialize_keras_object
        config = dict(config)
        config["loss"] = serialize(self._compile_arguments["loss"])
        config["metrics"] = serialize(self._compile_arguments["metrics"])
        config["temperature"] = self.temperature
        config["alpha"] = self.alpha
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        if config.get("loss") is None:
            # Saved by keras-kd 0.1, which kept no compile arguments.
            warnings.warn(
                "This MutualLearning was saved without its compile arguments; "
                "call `compile()` after loading to train or evaluate it.",
                stacklevel=2,
            )
            return
        self.compile(**config)

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

    def _peer_terms(self, outputs, sample_weight):
        """Distillation term of each peer towards the mean of the others."""
        log_probs = [
            softened_log_probs(out, self.temperature, not probs)
            for out, probs in zip(outputs, self._probs)
        ]
        frozen = [tf.stop_gradient(lp) for lp in log_probs]
        terms = []
        for i, own in enumerate(log_probs):
            # log of the others' mean probability (not of their mean logits)
            target = log_mean_probs([lp for j, lp in enumerate(frozen) if j != i])
            per_sample = tf.reduce_sum(tf.exp(target) * (target - own), axis=-1)
            per_sample = per_sample * (self.temperature**2)
            if sample_weight is not None:
                per_sample = per_sample * _broadcast_to_rank(sample_weight, per_sample)
            terms.append(tf.reduce_mean(per_sample) / float(backend.num_replicas()))
        return terms

    def _step(self, data, training):
        batches.refuse_mixed_batch(data, type(self).__name__)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        outputs = [peer(x, training=training) for peer in self.peers]
        # Sequences: padded tokens count for nothing, means over real tokens.
        peer_terms = self._peer_terms(
            outputs, batches.token_weights(sample_weight, outputs[0])
        )
        losses = []
        for i, out in enumerate(outputs):
            hard = self._hard_loss(
                y, out, sample_weight=batches.per_token_mean(sample_weight, out)
            )
            hard = tf.cast(hard, tf.float32)
            if backend.LEGACY:  # Keras 3 losses scale per replica themselves
                hard = hard / float(backend.num_replicas())
            loss = self.alpha * peer_terms[i] + (1.0 - self.alpha) * hard
            losses.append(loss + backend.regularization_loss(self.peers[i]))
        return x, y, sample_weight, outputs, losses

    def train_step(self, data):
        # One tape, one backward pass per peer: a peer's loss reaches only
        # its own weights (the others' predictions are held constant), so
        # each optimizer scales, unscales and applies its own gradients.
        with tf.GradientTape(persistent=True) as tape:
            x, y, sample_weight, outputs, losses = self._step(data, training=True)
            total = tf.add_n(losses)
        for optimizer, peer, loss in zip(self._peer_optimizers, self.peers, losses):
            backend.minimize(optimizer, loss, peer.trainable_variables, tape)
        del tape
        return self._update(x, y, sample_weight, outputs, losses, total)

    def test_step(self, data):
        x, y, sample_weight, outputs, losses = self._step(data, training=False)
        return self._update(x, y, sample_weight, outputs, losses, tf.add_n(losses))

    def _update(self, x, y, sample_weight, outputs, losses, total):
        batch = _utils.batch_size(x)
        replicas = float(backend.num_replicas())
        self.total_loss_tracker.update_state(total * replicas, sample_weight=batch)
        for i, (out, loss) in enumerate(zip(outputs, losses)):
            self._peer_loss_trackers[i].update_state(
                loss * replicas, sample_weight=batch
            )
            for metric in self._peer_metrics[i]:
                metric.update_state(y, out, sample_weight=sample_weight)
        logs = self.get_metrics_result()
        return backend.multi_worker_step_logs(self.distribute_strategy, logs)

    def get_metrics_result(self):
        """The cohort's logs, as each step reports them.

        `loss` (the peers' total), `peer_<i>_loss`, `peer_<i>_<metric>` for
        each compiled metric, and `<metric>`, its mean over the peers. Keras
        3 reads this at the end of an epoch, outside the replicas, where each
        metric holds the whole of every replica's data (inside a step, each
        replica's holds its own share).

        Returns:
            A dict of scalar tensors.
        """
        results = {"loss": self.total_loss_tracker.result()}
        means = {}
        for i, tracker in enumerate(self._peer_loss_trackers):
            results[f"peer_{i}_loss"] = tracker.result()
            for metric in self._peer_metrics[i] if self._peer_metrics else []:
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


# `keras.mixed_precision.LossScaleOptimizer` in both flavours (tf_keras's
# picks the implementation that fits the optimizer it wraps).
_LOSS_SCALE_OPTIMIZER = keras.mixed_precision.LossScaleOptimizer


def _is_mixed_float16(model):
    """Whether `model` runs under the `mixed_float16` policy, the one that
    `compile` pairs with a loss-scale optimizer."""
    policy = getattr(model, "dtype_policy", None)
    return getattr(policy, "name", None) == "mixed_float16"


def _broadcast_to_rank(sample_weight, values):
    """`sample_weight` in float32, with trailing axes of size 1 up to
    `values`' rank (e.g. one weight per sequence for per-token values)."""
    weight = tf.cast(sample_weight, tf.float32)
    extra = tf.ones([tf.rank(values) - tf.rank(weight)], tf.int32)
    return tf.reshape(weight, tf.concat([tf.shape(weight), extra], 0))


__all__ = ["MutualLearning"]
