"""Distilling KerasHub models (Keras 3 flavour), built from a config: no
weights are downloaded."""

import os

import numpy as np
import pytest

from keras_kd import backend

if backend.LEGACY:
    pytest.skip("KerasHub is Keras 3 only", allow_module_level=True)

keras_hub = pytest.importorskip("keras_hub")

import keras_kd as kd  # noqa: E402
from keras_kd.backend import keras  # noqa: E402

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
VOCAB, LENGTH = 40, 12


def backbone(layers, width, name):
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=layers,
        num_heads=2,
        hidden_dim=width,
        intermediate_dim=2 * width,
        max_sequence_length=LENGTH,
        name=name,
    )


def causal_lm(layers, width, name):
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone(layers, width, f"{name}_backbone"),
        preprocessor=None,
        name=name,
    )


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, (8, LENGTH))
    padding = np.ones((8, LENGTH), "int32")
    padding[:3, 8:] = 0
    tokens = tokens * padding
    labels = np.roll(tokens, -1, axis=1)
    return (
        {"token_ids": tokens, "padding_mask": padding},
        labels,
        padding.astype("float32"),
    )


def test_causal_lm_distils_logits_and_a_hidden_state_by_layer_name(batch, tmp_path):
    x, y, weights = batch
    teacher, student = causal_lm(4, 16, "t"), causal_lm(2, 8, "s")
    d = kd.Distiller(
        teacher,
        student,
        features=kd.taps.layer_map(
            [f"t_backbone/transformer_layer_{j}" for j in range(4)],
            [f"s_backbone/transformer_layer_{i}" for i in range(2)],
            loss="mse",
        ),
    )
    assert [a.units for a in d.adapters] == [16, 16]  # widths 8 -> 16
    d.compile("adam", SCE, distillation_loss=kd.losses.KLDivergence(2.0))
    logs = d.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    assert logs["distillation_loss"] > 0 and logs["feature_loss"] > 0
    before = [w.copy() for w in student.get_weights()]
    history = d.fit(x, y, sample_weight=weights, epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    # The student saves and reloads as a KerasHub model, adapters left out.
    path = os.fspath(tmp_path / "student.keras")
    student.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(student)
    assert loaded.count_params() == student.count_params()
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), student.predict(x, verbose=0), atol=1e-5
    )


def test_padding_of_a_keras_hub_batch_contributes_nothing(batch):
    x, y, weights = batch
    teacher, student = causal_lm(2, 16, "t"), causal_lm(1, 8, "s")
    d = kd.Distiller(teacher, student)
    d.compile("sgd", SCE, distillation_loss=kd.losses.KLDivergence(1.0), alpha=1.0)
    logs = d.evaluate(
        x, y, sample_weight=weights, batch_size=8, verbose=0, return_dict=True
    )
    zt = teacher.predict(x, verbose=0).astype(np.float64)
    zs = student.predict(x, verbose=0).astype(np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lt, ls = log_softmax(zt), log_softmax(zs)
    per_token = (np.exp(lt) * (lt - ls)).sum(-1)
    np.testing.assert_allclose(
        logs["distillation_loss"], per_token[weights > 0].mean(), rtol=1e-4
    )


def test_attention_inside_a_keras_hub_layer_is_refused_with_the_way_that_works():
    teacher, student = causal_lm(2, 16, "t"), causal_lm(1, 8, "s")
    with pytest.raises(ValueError, match="return_attention_scores"):
        kd.Distiller(
            teacher,
            student,
            features=[
                kd.FeatureMatch(
                    "t_backbone/transformer_layer_1/self_attention",
                    "s_backbone/transformer_layer_0/self_attention",
                    loss="attention_map",
                )
            ],
        )


def test_backbones_of_different_widths_distil_their_sequence_output():
    teacher, student = backbone(3, 16, "t"), backbone(1, 8, "s")
    rng = np.random.default_rng(1)
    x = {
        "token_ids": rng.integers(1, VOCAB, (8, LENGTH)),
        "padding_mask": np.ones((8, LENGTH), "int32"),
    }
    d = kd.Distiller(
        teacher, student, features=[kd.FeatureMatch("layer_norm", "layer_norm")]
    )
    d.compile("adam", loss=None, alpha=1.0)
    with pytest.raises(ValueError, match=r"distillation_loss=\[None\]"):
        d.fit(x, epochs=1, verbose=0)  # the outputs' widths differ: 16 and 8
    d.compile("adam", loss=None, alpha=1.0, distillation_loss=[None])
    history = d.fit(x, epochs=3, batch_size=4, verbose=0)
    losses = history.history["feature_loss"]
    assert history.history["distillation_loss"] == [0.0] * 3
    assert losses[-1] < losses[0]
