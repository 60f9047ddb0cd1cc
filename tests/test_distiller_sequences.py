"""Token-level distillation: padded positions contribute exactly nothing.

A toy language model whose outputs at a position depend on that token only
(or on the real tokens only, through masked attention) gives the same
outputs at the real positions of a batch with or without padding, so the
losses of the padded batch must equal those of the unpadded one, whether
the padding comes from a Keras mask (`mask_zero=True`) or from per-token
sample weights; and both equal a numpy mean over the real tokens.
"""

import numpy as np
import pytest

import keras_kd as kd
from conftest import np_log_softmax, readme_snippet
from keras_kd.backend import keras

VOCAB = 9
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _big(seed):
    """Large initial weights: teacher and student distributions far apart."""
    return keras.initializers.RandomNormal(stddev=1.0, seed=seed)


def token_lm(width, name, mask_zero, attention=False):
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(
        VOCAB,
        width,
        mask_zero=mask_zero,
        embeddings_initializer=_big(1),
        name=f"{name}_emb",
    )(inputs)
    h = keras.layers.Dense(width, activation="tanh", name=f"{name}_hidden")(h)
    if attention:
        h, _ = keras.layers.MultiHeadAttention(2, 4, name=f"{name}_mha")(
            h, h, return_attention_scores=True
        )
    outputs = keras.layers.Dense(
        VOCAB, kernel_initializer=_big(2), name=f"{name}_logits"
    )(h)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture
def batches():
    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, (4, 6))
    y = rng.integers(1, VOCAB, (4, 6))
    pad = 3
    x_pad = np.concatenate([x, np.zeros((4, pad), x.dtype)], axis=1)
    y_pad = np.concatenate([y, np.zeros((4, pad), y.dtype)], axis=1)
    weights = (x_pad > 0).astype("float32")
    return x, y, x_pad, y_pad, weights


def _distiller(kind, features=None, attention=False, temperature=2.0):
    mask_zero = kind == "keras_mask"
    teacher = token_lm(8, "t", mask_zero, attention)
    student = token_lm(4, "s", mask_zero, attention)
    d = kd.Distiller(teacher, student, features=features)
    d.compile(
        "sgd",
        SCE,
        distillation_loss=kd.losses.KLDivergence(temperature),
        alpha=0.5,
    )
    return d


def _logs(d, x, y, sample_weight=None):
    return d.evaluate(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=len(x),
        verbose=0,
        return_dict=True,
    )


@pytest.mark.parametrize("kind", ["keras_mask", "sample_weight"])
def test_padding_contributes_nothing_to_the_response_losses(batches, kind):
    x, y, x_pad, y_pad, weights = batches
    d = _distiller(kind)
    plain = _logs(d, x, y)
    padded = _logs(d, x_pad, y_pad, weights if kind == "sample_weight" else None)
    for key in ("distillation_loss", "hard_loss", "loss"):
        np.testing.assert_allclose(
            padded[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    # numpy: the mean over real tokens of T^2 KL(teacher || student)
    zt = d.teacher.predict(x_pad, verbose=0).astype(np.float64)
    zs = d.student.predict(x_pad, verbose=0).astype(np.float64)
    lt, ls = np_log_softmax(zt / 2.0), np_log_softmax(zs / 2.0)
    per_token = (np.exp(lt) * (lt - ls)).sum(-1) * 4.0
    real = weights > 0
    np.testing.assert_allclose(
        padded["distillation_loss"], per_token[real].mean(), rtol=1e-5
    )
    assert not np.isclose(per_token[real].mean(), per_token.mean(), rtol=1e-4)


def test_ragged_lengths_against_numpy():
    rng = np.random.default_rng(3)
    x = rng.integers(1, VOCAB, (3, 7))
    x[0, 3:] = 0
    x[1, 6:] = 0
    weights = (x > 0).astype("float32")
    d = _distiller("sample_weight")
    logs = _logs(d, x, x, weights)
    zt = d.teacher.predict(x, verbose=0).astype(np.float64)
    zs = d.student.predict(x, verbose=0).astype(np.float64)
    lt, ls = np_log_softmax(zt / 2.0), np_log_softmax(zs / 2.0)
    per_token = (np.exp(lt) * (lt - ls)).sum(-1) * 4.0
    expected = (per_token * weights).sum() / weights.sum()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["keras_mask", "sample_weight"])
def test_hidden_state_taps_ignore_padding(batches, kind):
    x, y, x_pad, y_pad, weights = batches
    d = _distiller(kind, features=[kd.FeatureMatch("t_hidden", "s_hidden")])
    assert len(d.adapters) == 1  # widths 8 and 4
    plain = _logs(d, x, y)
    padded = _logs(d, x_pad, y_pad, weights if kind == "sample_weight" else None)
    np.testing.assert_allclose(padded["feature_loss"], plain["feature_loss"], rtol=1e-5)
    # numpy: mean over real tokens of the squared error after the adapter
    kernel, bias = (np.asarray(w, np.float64) for w in d.adapters[0].get_weights())

    def hidden(model, name):
        return keras.Model(model.inputs, model.get_layer(name).output).predict(
            x, verbose=0
        )

    s = hidden(d.student, "s_hidden").astype(np.float64) @ kernel + bias
    t = hidden(d.teacher, "t_hidden").astype(np.float64)
    np.testing.assert_allclose(plain["feature_loss"], ((s - t) ** 2).mean(), rtol=1e-5)


def test_attention_maps_are_distilled_with_the_mask(batches):
    x, y, x_pad, y_pad, _ = batches
    match = kd.FeatureMatch(("t_mha", 1), ("s_mha", 1), loss="attention_map")
    d = _distiller("keras_mask", features=[match], attention=True)
    plain = _logs(d, x, y)
    padded = _logs(d, x_pad, y_pad)
    for key in ("feature_loss", "distillation_loss"):
        np.testing.assert_allclose(
            padded[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    assert plain["feature_loss"] > 0


def test_per_token_weights_with_a_per_example_loss_are_refused(batches):
    _, _, x_pad, y_pad, weights = batches
    d = _distiller(
        "sample_weight",
        features=[kd.FeatureMatch("t_hidden", "s_hidden", loss="relational")],
    )
    with pytest.raises(ValueError, match="per-token sample weights"):
        _logs(d, x_pad, y_pad, weights)


def test_training_on_padded_batches_equals_unpadded(batches):
    x, y, x_pad, y_pad, weights = batches
    results = []
    for inputs, labels, w in ((x, y, None), (x_pad, y_pad, weights)):
        keras.utils.set_random_seed(0)
        d = _distiller(
            "sample_weight", features=[kd.FeatureMatch("t_hidden", "s_hidden")]
        )
        d.fit(inputs, labels, sample_weight=w, batch_size=4, epochs=3, verbose=0)
        results.append(d.student.get_weights() + d.adapters[0].get_weights())
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["keras_mask", "sample_weight"])
def test_mlm_restricts_distillation_to_the_masked_positions(kind):
    rng = np.random.default_rng(5)
    mask_id = 1
    x = rng.integers(2, VOCAB, (4, 8))
    x[:, [1, 4]] = mask_id
    x[0, 6] = mask_id
    x[2, 6:] = 0  # padding
    y = rng.integers(2, VOCAB, (4, 8))
    masked = x == mask_id
    mask_zero = kind == "keras_mask"
    teacher, student = token_lm(8, "t", mask_zero), token_lm(4, "s", mask_zero)
    d = kd.Distiller(
        teacher,
        student,
        mask_token_id=mask_id,
        features=[kd.FeatureMatch("t_hidden", "s_hidden")],
    )
    d.compile("sgd", SCE, distillation_loss=kd.losses.KLDivergence(2.0), alpha=0.5)
    weights = (x > 0).astype("float32")  # the hard loss: every real token
    logs = _logs(d, x, y, None if mask_zero else weights)
    zt = teacher.predict(x, verbose=0).astype(np.float64)
    zs = student.predict(x, verbose=0).astype(np.float64)
    lt, ls = np_log_softmax(zt / 2.0), np_log_softmax(zs / 2.0)
    per_token = (np.exp(lt) * (lt - ls)).sum(-1) * 4.0
    np.testing.assert_allclose(
        logs["distillation_loss"], per_token[masked].mean(), rtol=1e-5
    )
    kernel, bias = (np.asarray(w, np.float64) for w in d.adapters[0].get_weights())

    def hidden(model, name):
        return keras.Model(model.inputs, model.get_layer(name).output).predict(
            x, verbose=0
        )

    s = hidden(student, "s_hidden").astype(np.float64) @ kernel + bias
    t = hidden(teacher, "t_hidden").astype(np.float64)
    np.testing.assert_allclose(
        logs["feature_loss"], ((s - t) ** 2).mean(-1)[masked].mean(), rtol=1e-4
    )
    ce = -np_log_softmax(zs)[np.arange(4)[:, None], np.arange(8)[None], y]
    np.testing.assert_allclose(logs["hard_loss"], ce[x > 0].mean(), rtol=1e-4)


def test_mask_token_id_errors(data):
    from conftest import make_mlp

    with pytest.raises(ValueError, match="mask_token_id"):
        kd.Distiller(make_mlp(8), make_mlp(4), mask_token_id=-1)
    d = kd.Distiller(make_mlp(8), make_mlp(4), mask_token_id=3)
    d.compile("sgd", SCE)
    x, y = data
    with pytest.raises(ValueError, match="integer token ids"):
        d.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="Online distillation"):
        kd.OnlineDistiller(make_mlp(8), make_mlp(4), mask_token_id=3)


@pytest.mark.parametrize(
    "loss",
    [
        kd.losses.KLDivergence(2.0),
        kd.losses.KLDivergence(2.0, standardize=True),
        kd.losses.SoftTargetCrossEntropy(2.0),
        kd.losses.DIST(),
        kd.losses.DecoupledKD(temperature=2.0),
    ],
    ids=["kl", "standardized", "soft_ce", "dist", "dkd"],
)
@pytest.mark.parametrize("kind", ["keras_mask", "sample_weight"])
def test_every_response_loss_ignores_padding(batches, kind, loss):
    x, y, x_pad, y_pad, weights = batches
    mask_zero = kind == "keras_mask"
    d = kd.Distiller(token_lm(8, "t", mask_zero), token_lm(4, "s", mask_zero))
    d.compile("sgd", SCE, distillation_loss=loss, alpha=0.5)
    plain = _logs(d, x, y)
    padded = _logs(d, x_pad, y_pad, None if mask_zero else weights)
    np.testing.assert_allclose(
        padded["distillation_loss"], plain["distillation_loss"], rtol=1e-5, atol=1e-6
    )


def _build_online(kind, mask_zero):
    keras.utils.set_random_seed(0)
    t, s = token_lm(8, "t", mask_zero), token_lm(4, "s", mask_zero)
    if kind == "mutual":
        model = kd.MutualLearning([t, s])
        model.compile("sgd", SCE, temperature=2.0, alpha=0.5)
    else:
        model = kd.OnlineDistiller(teacher=t, student=s, teacher_alpha=0.3)
        model.compile("sgd", SCE, alpha=0.5)
    return model


@pytest.mark.parametrize("kind", ["online", "mutual"])
@pytest.mark.parametrize("padding", ["keras_mask", "sample_weight"])
def test_online_and_mutual_learning_ignore_padding(batches, kind, padding):
    x, y, x_pad, y_pad, weights = batches
    mask_zero = padding == "keras_mask"
    w = None if mask_zero else weights
    plain = _logs(_build_online(kind, mask_zero), x, y)
    padded = _logs(_build_online(kind, mask_zero), x_pad, y_pad, w)
    assert set(plain) == set(padded)
    for key in plain:
        np.testing.assert_allclose(
            padded[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key
        )


def test_self_distillation_generations_on_padded_sequences(batches):
    x, y, x_pad, y_pad, weights = batches
    results = []
    for inputs, labels, w in ((x, y, None), (x_pad, y_pad, weights)):
        keras.utils.set_random_seed(0)
        d = kd.Distiller(None, token_lm(4, "s", False))
        d.compile("sgd", SCE)
        history = d.fit(
            inputs,
            labels,
            sample_weight=w,
            epochs=4,
            batch_size=4,
            verbose=0,
            callbacks=[
                kd.callbacks.SelfDistillation(
                    generations=2, epochs_per_generation=2, seed=0, verbose=0
                )
            ],
        )
        results.append((history.history, d.student.get_weights()))
    (h_plain, w_plain), (h_pad, w_pad) = results
    assert h_pad["distillation_loss"][2] > 0  # generation 2 learns from 1
    for key in ("loss", "hard_loss", "distillation_loss"):
        np.testing.assert_allclose(h_pad[key], h_plain[key], rtol=1e-4, atol=1e-6)
    for a, b in zip(w_plain, w_pad, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_the_readme_language_model_snippet_runs():
    namespace = readme_snippet("### Language models")
    distiller = namespace["distiller"]
    assert len(distiller.features) == 4 and len(distiller.adapters) == 2
    rng = np.random.default_rng(0)
    x = rng.integers(1, 64, (8, 32))
    mask = np.ones((8, 32), "float32")
    mask[:2, 20:] = 0
    history = distiller.fit(
        x * mask.astype(int), x, sample_weight=mask, epochs=1, verbose=0
    )
    assert history.history["feature_loss"][0] > 0
