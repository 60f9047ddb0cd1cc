"""OnPolicyDistiller: batches sampled by the student reach the teacher, and
only the generated positions carry loss.

The teacher records the ids it is given (a layer that stores its input in a
variable), so a test can compare them with the student's own continuation
sampled independently by `kd.lm.generate` with the same seed; the step's
distillation loss is recomputed in numpy from the two models' logits on
those ids, averaged over the positions that predict a generated token.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_kd as kd
from conftest import np_log_softmax
from keras_kd.backend import keras, tf

VOCAB, LENGTH, BATCH = 11, 8, 4


class Recorder(keras.layers.Layer):
    """Passes its input through and keeps a copy of the last batch."""

    def build(self, input_shape):
        self.seen = self.add_weight(
            name="seen",
            shape=(BATCH, LENGTH),
            initializer="zeros",
            trainable=False,
        )
        super().build(input_shape)

    def call(self, ids):
        self.seen.assign(tf.cast(ids, self.seen.dtype))
        return ids


def causal_lm(width, name, record=False, seed=0):
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = Recorder(name="recorder")(inputs) if record else inputs
    init = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    h = keras.layers.Embedding(VOCAB, width, embeddings_initializer=init)(h)
    h = keras.layers.Conv1D(width, 3, padding="causal", activation="tanh")(h)
    outputs = keras.layers.Dense(VOCAB, kernel_initializer=init)(h)
    return keras.Model(inputs, outputs, name=name)


def windows(seed=0, count=BATCH):
    return (
        np.random.default_rng(seed).integers(1, VOCAB, (count, LENGTH)).astype("int32")
    )


def np_per_token_kl(teacher_logits, student_logits):
    lt = np_log_softmax(np.asarray(teacher_logits, np.float64))
    ls = np_log_softmax(np.asarray(student_logits, np.float64))
    return (np.exp(lt) * (lt - ls)).sum(-1)


def build(fraction, seed=3, **kwargs):
    teacher = causal_lm(8, "teacher", record=True, seed=1)
    student = causal_lm(6, "student", seed=2)
    d = kd.lm.OnPolicyDistiller(
        teacher, student, on_policy_fraction=fraction, seed=seed, **kwargs
    )
    d.compile(keras.optimizers.SGD(0.1), distillation_loss=kd.losses.KLDivergence(1.0))
    return d


def test_on_policy_batch_is_the_students_sample_and_loss_covers_it_only():
    d = build(1.0, prompt_length=3)
    x = windows()
    before = keras.models.clone_model(d.student)
    before.set_weights(d.student.get_weights())
    history = d.fit(x, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    seen = d.teacher.get_layer("recorder").seen.numpy().astype("int32")
    # The student's continuation, sampled apart with the step's seed (3 + 1,
    # step 0) and the weights it had then.
    expected = kd.lm.generate(
        before,
        x[:, :3],
        max_new_tokens=LENGTH - 3,
        seed=tf.constant([4, 0], tf.int32),
        length=LENGTH,
    )
    np.testing.assert_array_equal(seen, expected.ids.numpy())
    np.testing.assert_array_equal(seen[:, :3], x[:, :3])  # prompts kept
    assert (seen[:, 3:] != x[:, 3:]).any()  # the continuations were sampled
    # The loss: mean over positions 2..6, those that predict a sampled token.
    per_token = np_per_token_kl(d.teacher.predict(seen, verbose=0), before(seen))
    weights = np.zeros((BATCH, LENGTH))
    weights[:, 2 : LENGTH - 1] = 1.0
    np.testing.assert_array_equal(
        weights, np.roll(expected.mask.numpy(), -1, axis=1) * 1.0
    )
    expected_loss = (per_token * weights).sum() / weights.sum()
    assert history.history["distillation_loss"][0] == pytest.approx(
        expected_loss, rel=1e-4
    )
    assert not np.isclose(expected_loss, per_token.mean(), rtol=1e-3)


def test_fraction_zero_distils_the_datasets_continuations_only():
    d = build(0.0, prompt_length=5)
    x = windows(1)
    before = keras.models.clone_model(d.student)
    before.set_weights(d.student.get_weights())
    history = d.fit(x, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_array_equal(
        d.teacher.get_layer("recorder").seen.numpy().astype("int32"), x
    )
    per_token = np_per_token_kl(d.teacher.predict(x, verbose=0), before(x))
    expected = per_token[:, 4 : LENGTH - 1].mean()
    assert history.history["distillation_loss"][0] == pytest.approx(expected, rel=1e-4)


def test_prompts_from_the_sample_weights_differ_per_row():
    d = build(1.0, max_new_tokens=3)
    x = windows(2)
    # Row r's prompt ends where its weights start: prompts of 2, 3, 4, 5.
    weights = np.zeros((BATCH, LENGTH), "float32")
    for row, first in enumerate([1, 2, 3, 4]):
        weights[row, first : LENGTH - 1] = 1.0
    before = keras.models.clone_model(d.student)
    before.set_weights(d.student.get_weights())
    d.fit(
        x,
        np.roll(x, -1, axis=1),  # the next tokens: read by metrics only
        sample_weight=weights,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        shuffle=False,
    )
    seen = d.teacher.get_layer("recorder").seen.numpy().astype("int32")
    expected = kd.lm.generate(
        before,
        x[:, : LENGTH - 3],
        max_new_tokens=3,
        seed=tf.constant([4, 0], tf.int32),
        prompt_lengths=np.array([2, 3, 4, 5]),
        length=LENGTH,
    )
    np.testing.assert_array_equal(seen, expected.ids.numpy())
    for row, length in enumerate([2, 3, 4, 5]):
        np.testing.assert_array_equal(seen[row, :length], x[row, :length])
        assert (seen[row, length + 3 :] == 0).all()  # padding after the samples


def test_half_of_the_batches_are_sampled_as_the_seeded_stream_draws():
    d = build(0.5, prompt_length=2)
    x = windows(3, count=8 * BATCH)
    sampled = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen = d.teacher.get_layer("recorder").seen.numpy().astype("int32")
            sampled.append(
                not np.array_equal(seen, x[batch * BATCH : (batch + 1) * BATCH])
            )

    d.fit(x, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[Watch()])
    draws = [
        float(tf.random.stateless_uniform([], seed=tf.constant([3, k], tf.int32))) < 0.5
        for k in range(8)
    ]
    assert sampled == draws
    assert 0 < sum(sampled) < 8


def test_evaluation_is_teacher_forced_on_the_continuations():
    d = build(1.0, prompt_length=4)
    x = windows(4)
    logs = d.evaluate(x, batch_size=BATCH, verbose=0, return_dict=True)
    np.testing.assert_array_equal(
        d.teacher.get_layer("recorder").seen.numpy().astype("int32"), x
    )
    per_token = np_per_token_kl(d.teacher.predict(x, verbose=0), d.student(x))
    assert logs["distillation_loss"] == pytest.approx(
        per_token[:, 3 : LENGTH - 1].mean(), rel=1e-4
    )


def test_a_generative_objective_lowers_the_loss_on_the_students_own_samples():
    teacher = causal_lm(16, "teacher", seed=1)
    student = causal_lm(8, "student", seed=2)
    d = kd.lm.OnPolicyDistiller(
        teacher, student, on_policy_fraction=1.0, prompt_length=2, seed=0
    )
    d.compile(
        keras.optimizers.Adam(0.03),
        distillation_loss=kd.losses.GeneralizedJSD(beta=0.5),
    )
    x = windows(5, count=32)
    history = d.fit(x, batch_size=8, epochs=6, verbose=0)
    losses = history.history["distillation_loss"]
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])


def test_saves_and_loads_with_its_settings(tmp_path):
    d = build(0.25, prompt_length=3, sampling_temperature=0.7, top_k=5)
    d.fit(windows(6), batch_size=BATCH, epochs=1, verbose=0)
    path = tmp_path / "on_policy.keras"
    d.save(path)
    restored = keras.models.load_model(path, custom_objects={"Recorder": Recorder})
    assert isinstance(restored, kd.lm.OnPolicyDistiller)
    for key in (
        "on_policy_fraction",
        "prompt_length",
        "sampling_temperature",
        "top_k",
        "seed",
    ):
        assert getattr(restored, key) == getattr(d, key), key
    for a, b in zip(restored.student.get_weights(), d.student.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: build(1.5, prompt_length=2), ValueError, "on_policy_fraction"),
        (lambda: build(0.5), ValueError, "`max_new_tokens` is required"),
        (lambda: build(0.5, prompt_length=0), ValueError, "prompt_length"),
        (
            lambda: build(0.5, prompt_length=2, max_new_tokens=0),
            ValueError,
            "max_new_tokens",
        ),
        (
            lambda: build(0.5, prompt_length=2, sampling_temperature=-1),
            ValueError,
            "sampling_temperature",
        ),
        (lambda: build(0.5, prompt_length=2, top_k=0), ValueError, "top_k"),
        (lambda: build(0.5, prompt_length=2, top_p=1.5), ValueError, "top_p"),
        (
            lambda: kd.lm.OnPolicyDistiller(None, causal_lm(4, "s"), prompt_length=2),
            ValueError,
            "needs a teacher",
        ),
    ],
)
def test_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_hard_loss_or_alpha_below_one_is_refused():
    d = build(0.5, prompt_length=2)
    with pytest.raises(ValueError, match="Expected alpha=1 and loss=None"):
        d.compile("sgd", alpha=0.5)
    with pytest.raises(ValueError, match="Expected alpha=1 and loss=None"):
        d.compile("sgd", loss="sparse_categorical_crossentropy")


def test_prompts_from_weights_need_weights():
    d = build(1.0, max_new_tokens=2)
    with pytest.raises(ValueError, match="from the sample weights"):
        d.fit(windows(), batch_size=BATCH, epochs=1, verbose=0)


MIRRORED = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras_kd as kd
    from keras_kd.backend import keras

    def lm(width, seed):
        inputs = keras.Input((8,), dtype="int32")
        h = keras.layers.Embedding(11, width)(inputs)
        h = keras.layers.Conv1D(width, 3, padding="causal", activation="tanh")(h)
        return keras.Model(inputs, keras.layers.Dense(11)(h))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        teacher, student = lm(8, 1), lm(4, 2)
        d = kd.lm.OnPolicyDistiller(teacher, student, on_policy_fraction=1.0,
                                    prompt_length=3, seed=0)
        d.compile(keras.optimizers.SGD(0.1),
                  distillation_loss=kd.losses.ReverseKL())
    start = [w.copy() for w in student.get_weights()]
    x = np.random.default_rng(0).integers(1, 11, (16, 8)).astype("int32")
    history = d.fit(x, batch_size=8, epochs=2, verbose=0)
    losses = history.history["distillation_loss"]
    assert all(np.isfinite(losses)) and losses[0] > 0, losses
    assert any(not np.allclose(a, b) for a, b in zip(start, student.get_weights()))
    print("OK", strategy.num_replicas_in_sync, losses)
    """
)


def test_trains_under_a_mirrored_strategy(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK 2" in done.stdout


def tapped_lm(width, prefix, seed):
    inputs = keras.Input((LENGTH,), dtype="int32")
    init = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    h = keras.layers.Embedding(VOCAB, width, embeddings_initializer=init)(inputs)
    h = keras.layers.Conv1D(
        width, 3, padding="causal", activation="tanh", name=f"{prefix}_hidden"
    )(h)
    return keras.Model(inputs, keras.layers.Dense(VOCAB)(h), name=prefix)


def test_hidden_state_taps_a_temperature_schedule_and_backup_run_on_policy(tmp_path):
    def make():
        keras.utils.set_random_seed(0)
        d = kd.lm.OnPolicyDistiller(
            tapped_lm(8, "t", 1),
            tapped_lm(8, "s", 2),
            on_policy_fraction=0.5,
            prompt_length=3,
            seed=1,
            features=[kd.FeatureMatch("t_hidden", "s_hidden", weight=0.5)],
        )
        d.compile(
            keras.optimizers.SGD(0.1),
            distillation_loss=kd.losses.GeneralizedJSD(0.5, temperature=2.0),
        )
        return d

    x = windows(7, count=4 * BATCH)
    schedule = kd.callbacks.TemperatureSchedule(lambda epoch: 2.0 / (epoch + 1))
    uninterrupted = make()
    history = uninterrupted.fit(
        x, batch_size=BATCH, epochs=2, verbose=0, shuffle=False, callbacks=[schedule]
    )
    assert history.history["temperature"] == [2.0, 1.0]
    assert all(v > 0 for v in history.history["feature_loss"])

    # Interrupted after the first epoch, resumed from the backup: the same
    # weights (the batch draws and the samples follow the step counter).
    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt

    backup = str(tmp_path / "backup")
    first = make()
    with pytest.raises(KeyboardInterrupt):
        first.fit(
            x,
            batch_size=BATCH,
            epochs=2,
            verbose=0,
            shuffle=False,
            callbacks=[kd.callbacks.BackupAndRestore(backup), schedule, Stop()],
        )
    resumed = make()
    resumed.fit(
        x,
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[kd.callbacks.BackupAndRestore(backup), schedule],
    )
    for a, b in zip(resumed.student.get_weights(), uninterrupted.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(kd.backend.LEGACY, reason="KerasHub: Keras 3 flavour only")
def test_a_keras_hub_gpt2_distils_on_policy_into_a_narrower_one_and_both_generate():
    keras_hub = pytest.importorskip("keras_hub")

    def gpt2(layers, width, seed):
        keras.utils.set_random_seed(seed)
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=32,
            num_layers=layers,
            num_heads=2,
            hidden_dim=width,
            intermediate_dim=2 * width,
            max_sequence_length=16,
        )
        return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)

    teacher, student = gpt2(2, 32, 0), gpt2(1, 16, 1)
    ids = np.random.default_rng(0).integers(1, 32, (8, 12)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    d = kd.lm.OnPolicyDistiller(
        teacher, student, on_policy_fraction=1.0, prompt_length=4, seed=0
    )
    d.compile(
        keras.optimizers.Adam(0.01), distillation_loss=kd.losses.GeneralizedJSD(0.5)
    )
    history = d.fit(x, batch_size=4, epochs=2, verbose=0)
    losses = history.history["distillation_loss"]
    assert all(np.isfinite(losses)) and losses[0] > 0
    for a, b in zip(teacher.get_weights(), teacher_before):
        np.testing.assert_array_equal(a, b)  # frozen
    assert any(
        not np.allclose(a, b) for a, b in zip(student.get_weights(), student_before)
    )
    # Without a preprocessor, generate() fills the positions the padding
    # mask leaves free: 4 prompt tokens, 6 generated.
    tokens = np.zeros((2, 10), "int32")
    tokens[:, :4] = ids[:2, :4]
    prompt = {"token_ids": tokens, "padding_mask": tokens > 0}
    for model in (teacher, student):
        out = model.generate(prompt, stop_token_ids=None)
        assert out["token_ids"].shape == (2, 10)
        np.testing.assert_array_equal(out["token_ids"][:, :4], ids[:2, :4])
        assert out["padding_mask"].all()  # every free position was generated


def test_the_readme_generative_snippet_runs():
    from conftest import readme_snippet

    namespace = readme_snippet("### Generative language models")
    samples = namespace["samples"]
    assert samples.ids.shape == (2, 16)
    np.testing.assert_array_equal(
        samples.ids.numpy()[:, :4], namespace["token_windows"][:2, :4]
    )
    assert samples.mask.numpy()[:, 4:].all() and not samples.mask.numpy()[:, :4].any()
    assert isinstance(namespace["distiller"], kd.lm.OnPolicyDistiller)
