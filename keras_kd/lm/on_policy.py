"""On-policy distillation of generative models (GKD, Agarwal et al. 2024).

`OnPolicyDistiller` is a `Distiller` for causal language models in which a
fraction of the training batches (GKD's lambda) has its continuations
sampled from the current student, inside the train step: the student meets
its own mistakes in training, not first at generation (exposure bias). The
teacher then scores the full sampled sequences and the distillation loss
covers the generated positions only.
"""

from __future__ import annotations

from keras_kd import _utils
from keras_kd.backend import register_serializable, tf
from keras_kd.data import MixedBatch, TeacherBatch
from keras_kd.distiller import Distiller, batches
from keras_kd.lm.generation import generate


def _shift_left(values):
    """`values[:, 1:]` followed by zeros: what position `t` predicts."""
    return tf.concat([values[:, 1:], tf.zeros_like(values[:, :1])], axis=1)


def _token_ids(x):
    """The `(batch, time)` ids of a batch's `x`: the tensor itself, or the
    `token_ids` of a KerasHub dict (`{"token_ids", "padding_mask"}`)."""
    if isinstance(x, dict) and set(x) == {"token_ids", "padding_mask"}:
        x = x["token_ids"]
    if not isinstance(x, tf.Tensor) or x.shape.rank != 2:
        raise ValueError(
            "An OnPolicyDistiller takes `x` as one `(batch, time)` tensor of "
            "token ids, or a KerasHub dict of `token_ids` and `padding_mask`. "
            f"Received: x={x!r}."
        )
    return x


@register_serializable
class OnPolicyDistiller(Distiller):
    """Distils a causal LM partly on sequences the student samples itself.

    The dataset gives token windows `x`, `(batch, time)` ids whose first
    tokens are a prompt and the rest its reference continuation, as for
    teacher-forced token-level distillation; the models map them to
    `(batch, time, vocab)` next-token logits (the logits at position `t`
    predict token `t + 1`). In each training step, with probability
    `on_policy_fraction` (drawn per batch from a seeded stream):

    - **on-policy batch:** each row's continuation is replaced by one the
      student samples after the row's prompt (`keras_kd.lm.generate`, with
      the current weights: the samples are never stale), the teacher and
      the student run once on the sampled sequences, and the distillation
      loss covers the positions that predict a generated token;
    - **supervised batch** (otherwise): the dataset's continuation, the
      loss on the positions that predict it.

    `on_policy_fraction=0` is teacher-forced distillation on the
    continuations; 1 is pure on-policy. GKD pairs it with
    `keras_kd.losses.GeneralizedJSD` (their best settings: lambda 0.5 to 1,
    beta 0.5 to 0.9) or `ReverseKL`.

    **Prompts** come from the dataset, in one of two ways:

    - `prompt_length=p`: the first `p` tokens of every row are its prompt,
      and `max_new_tokens` defaults to the rest of the window;
    - `prompt_length=None`: per row, from the sample weights the dataset
      gives (`(x, y, sample_weight)`, `y` the next tokens, read by metrics
      only): the prompt ends where the weights start, as labels of
      -100 mark the prompt in Hugging Face's trainers. A row whose first
      positive weight is at position `t` has a prompt of `t + 1` tokens (the
      logits at `t` predict the first continuation token).
      `max_new_tokens` is then required; prompts are read from the first
      `time - max_new_tokens` positions.

    The sample weights (padding, per-token weights) multiply the
    supervised batches' positions as in any `Distiller`; on-policy batches
    weight each generated position 1.

    Distillation only: `compile` takes `alpha=1` (the default here) and no
    hard loss, as GKD does. Metrics, if any, compare the student's outputs
    with the tokens that follow in the batch it trained on (on on-policy
    batches, its own samples). Evaluation (`evaluate`, `validation_data`)
    is teacher-forced on the dataset's continuations.

    KerasHub `CausalLM`s (with `preprocessor=None`) take `x` as their dict
    `{"token_ids", "padding_mask"}`: the student then samples through its
    own cache-aware generation, and a sampled row's padding mask covers its
    prompt and its samples.

    Works with causal LMs without a Keras mask (`mask_token_id=None`), the
    feature taps (`features=`: hidden states or attention on the sampled
    sequence), `tf.distribute.MirroredStrategy` (each replica samples its
    share of the batch), the schedules and `BackupAndRestore`. Stored
    teacher outputs (`keras_kd.data.TeacherBatch`) are refused: the teacher
    must score the new samples.

    Args:
        teacher: the teacher LM, frozen.
        student: the student LM (same vocabulary, or use a
            vocabulary-agnostic loss).
        on_policy_fraction: the probability that a batch is on-policy, in
            [0, 1] (GKD's lambda).
        prompt_length: the prompt length of every row, or None to read it
            from the sample weights (see above).
        max_new_tokens: tokens sampled per row; by default the window's
            length minus `prompt_length`.
        sampling_temperature: the student's sampling temperature (>= 0;
            0 is greedy). Not the distillation loss's temperature.
        top_k: sample from the `top_k` most likely tokens only, or None.
        top_p: nucleus sampling, in (0, 1], or None.
        pad_token_id: the id written after a row's last generated token.
        seed: an int for a reproducible stream of batch draws and samples,
            or None (0 is used: the stream still moves with the step).
        name: the model's name.
        **kwargs: passed to `keras_kd.Distiller` (`features`,
            `teacher_dtype`, ...).

    Example:

    ```python
    distiller = kd.lm.OnPolicyDistiller(teacher, student, on_policy_fraction=0.5,
                                        prompt_length=32)
    distiller.compile(optimizer="adam",
                      distillation_loss=kd.losses.GeneralizedJSD(beta=0.5))
    distiller.fit(windows, epochs=3)  # (batch, time) token ids
    ```
    """

    def __init__(
        self,
        teacher=None,
        student=None,
        on_policy_fraction: float = 0.5,
        prompt_length: int | None = None,
        max_new_tokens: int | None = None,
        sampling_temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        pad_token_id: int = 0,
        seed: int | None = None,
        name: str = "distiller",
        **kwargs,
    ):
        if teacher is None:
            raise ValueError(
                "An OnPolicyDistiller needs a teacher to score the student's "
                "samples. Received: teacher=None."
            )
        super().__init__(teacher=teacher, student=student, name=name, **kwargs)
        self.on_policy_fraction = _utils.check_number(
            on_policy_fraction,
            "on_policy_fraction",
            low=0.0,
            high=1.0,
            what="the probability that a batch is sampled by the student",
        )
        if prompt_length is not None:
            prompt_length = _utils.check_int(prompt_length, "prompt_length", 1)
        if max_new_tokens is not None:
            max_new_tokens = _utils.check_int(max_new_tokens, "max_new_tokens", 1)
        elif prompt_length is None:
            raise ValueError(
                "Argument `max_new_tokens` is required when the prompts come "
                "from the sample weights (prompt_length=None). Received: "
                "max_new_tokens=None."
            )
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.sampling_temperature = _utils.check_number(
            sampling_temperature, "sampling_temperature", low=0.0
        )
        if top_k is not None:
            top_k = _utils.check_int(top_k, "top_k", 1, what="tokens kept, or None")
        if top_p is not None:
            top_p = _utils.check_number(
                top_p, "top_p", low=0.0, high=1.0, low_open=True, what="or None"
            )
        self.top_k = top_k
        self.top_p = top_p
        self.pad_token_id = _utils.check_int(pad_token_id, "pad_token_id", 0)
        self.seed = 0 if seed is None else _utils.check_int(seed, "seed", 0)
        self._seed_given = seed is not None

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training: see `Distiller.compile`.

        `alpha` must be 1 (its default here) and `loss` None: the
        student learns from the teacher's distributions alone.
        """
        alpha = kwargs.pop("alpha", 1.0)
        if _utils.check_alpha(alpha) != 1.0 or loss is not None:
            raise ValueError(
                "An OnPolicyDistiller distils only: on the student's own samples "
                "there are no labels. Expected alpha=1 and loss=None. Received: "
                f"alpha={alpha}, loss={loss!r}. Use `keras_kd.Distiller` to mix a "
                "hard-label loss with teacher-forced distillation."
            )
        super().compile(
            optimizer=optimizer, loss=None, metrics=metrics, alpha=1.0, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "on_policy_fraction": self.on_policy_fraction,
                "prompt_length": self.prompt_length,
                "max_new_tokens": self.max_new_tokens,
                "sampling_temperature": self.sampling_temperature,
                "top_k": self.top_k,
                "top_p": self.top_p,
                "pad_token_id": self.pad_token_id,
                "seed": self.seed if self._seed_given else None,
            }
        )
        return config

    # --- the steps --------------------------------------------------------------------

    def train_step(self, data):
        x, y, weights = self._prepare(data, training=True)
        return super().train_step((x, y, weights))

    def test_step(self, data):
        x, y, weights = self._prepare(data, training=False)
        return super().test_step((x, y, weights))

    def _prepare(self, data, training):
        """The batch a step trains on: `(ids, next ids or None, weights)`."""
        if isinstance(data, (TeacherBatch, MixedBatch)):
            raise ValueError(
                "An OnPolicyDistiller cannot train on stored teacher outputs or "
                f"mixed batches (received a {type(data).__name__}): the teacher "
                "scores the student's new samples in each step. Give it token "
                "windows."
            )
        x, y, sample_weight, _ = batches.unpack_batch(data)
        ids = _token_ids(x)
        lengths = self._prompt_lengths(ids, sample_weight)
        supervised = self._continuation_weights(ids, lengths, sample_weight)
        if isinstance(x, dict):  # no loss on a KerasHub batch's padding
            supervised = supervised * tf.cast(x["padding_mask"], tf.float32)
        if not training or self.on_policy_fraction == 0.0:
            return x, y, supervised
        if self.on_policy_fraction == 1.0:
            return self._sampled(x, y, lengths)
        step = tf.cast(self.optimizer.iterations, tf.int32)
        draw = tf.random.stateless_uniform([], seed=tf.stack([self.seed, step]))
        return tf.cond(
            draw < self.on_policy_fraction,
            lambda: self._sampled(x, y, lengths),
            lambda: (x, y, supervised),
        )

    def _prompt_lengths(self, x, sample_weight):
        """Each row's prompt length, `(batch,)` int32."""
        rows = tf.shape(x)[0]
        if self.prompt_length is not None:
            return tf.fill([rows], tf.constant(self.prompt_length, tf.int32))
        if sample_weight is None:
            raise ValueError(
                "With prompt_length=None the prompts come from the sample "
                "weights, but the dataset gives none. Give `(x, y, "
                "sample_weight)` with weight 0 on the prompt's positions, or "
                "set `prompt_length`."
            )
        weights = tf.reshape(tf.cast(sample_weight, tf.float32), tf.shape(x))
        first = tf.argmax(tf.cast(weights > 0, tf.int32), axis=1, output_type=tf.int32)
        return first + 1

    def _continuation_weights(self, x, lengths, sample_weight):
        """Weights of a supervised batch: the positions that predict the
        continuation (from `length - 1` on), times the dataset's weights."""
        width = tf.shape(x)[1]
        positions = tf.range(width)[None, :]
        weights = tf.cast(positions >= lengths[:, None] - 1, tf.float32)
        # The last position predicts past the window: no target.
        weights = weights * tf.cast(positions < width - 1, tf.float32)
        if sample_weight is not None:
            given = tf.cast(sample_weight, tf.float32)
            weights = weights * tf.reshape(given, tf.shape(x))
        return weights

    def _sampled(self, x, y, lengths):
        """The student's continuations of the batch's prompts, their next
        ids and the weights of the positions that predict a sampled token."""
        tokens = x
        x = _token_ids(x)
        width = x.shape[1]
        new = self.max_new_tokens
        if new is None:
            if width is None:
                raise ValueError(
                    "The windows' length is not known when the step is traced; "
                    "set `max_new_tokens`."
                )
            new = width - self.prompt_length
        if width is not None and new >= width:
            raise ValueError(
                f"Argument `max_new_tokens` ({new}) leaves no room for a prompt "
                f"in windows of {width} tokens."
            )
        prompt_width = self.prompt_length or (width - new)
        step = tf.cast(self.optimizer.iterations, tf.int32)
        generation = generate(
            self.student,
            x[:, :prompt_width],
            max_new_tokens=new,
            temperature=self.sampling_temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=tf.stack([self.seed + 1, step]),
            prompt_lengths=tf.minimum(lengths, prompt_width),
            pad_token_id=self.pad_token_id,
            length=width,
        )
        ids = tf.stop_gradient(tf.cast(generation.ids, x.dtype))
        weights = _shift_left(tf.cast(generation.mask, tf.float32))
        next_ids = None if y is None else tf.cast(_shift_left(ids), y.dtype)
        if isinstance(tokens, dict):  # KerasHub: token ids and a padding mask
            prompt = (
                tf.range(width)[None, :] < tf.minimum(lengths, prompt_width)[:, None]
            )
            real = tf.logical_or(prompt, tf.cast(generation.mask, tf.bool))
            mask = tokens["padding_mask"]
            ids = {"token_ids": ids, "padding_mask": tf.cast(real, mask.dtype)}
        return ids, next_ids, weights


__all__ = ["OnPolicyDistiller"]
