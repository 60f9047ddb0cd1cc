"""Feature taps (`keras_kd.taps`): views, adapters, the feature term, saving."""

import os

import numpy as np
import pytest

import keras_kd as kd
from conftest import keras3_only, legacy_only, np_kl, readme_snippet
from keras_kd import taps
from keras_kd.backend import keras, tf

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class CountCalls(keras.layers.Layer):
    """Identity that counts its executions in a variable."""

    def build(self, input_shape):
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )

    def call(self, x):
        self.count.assign_add(1.0)
        return x


def cnn(width, name, classes=3, counter=False, size=8):
    inputs = keras.Input((size, size, 1))
    h = CountCalls(name=f"{name}_count")(inputs) if counter else inputs
    h = keras.layers.Conv2D(
        width, 3, padding="same", activation="relu", name=f"{name}_c1"
    )(h)
    h = keras.layers.Conv2D(
        width, 3, padding="same", activation="relu", name=f"{name}_c2"
    )(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(h)
    outputs = keras.layers.Dense(classes, name=f"{name}_out")(h)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    x = rng.random((48, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 48)
    return x, y


def _distiller(teacher, student, features, alpha=0.5, **compile_kwargs):
    d = kd.Distiller(teacher, student, features=features)
    d.compile(
        keras.optimizers.SGD(0.05),
        SCE,
        metrics=["accuracy"],
        alpha=alpha,
        **compile_kwargs,
    )
    return d


def _activation(model, name, x):
    return keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0)


# ----------------------------------------------------------------------
# One forward pass per model per step
# ----------------------------------------------------------------------


def test_each_model_runs_once_per_step_with_taps(images):
    x, y = images
    teacher, student = cnn(8, "t", counter=True), cnn(4, "s", counter=True)
    d = _distiller(
        teacher,
        student,
        [
            kd.FeatureMatch("t_c1", "s_c1", loss="attention_transfer"),
            kd.FeatureMatch("t_c2", "s_c2"),
        ],
    )
    d.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 3 steps
    # The teacher: once per step, plus once on the first batch before the
    # first step (fit's check that its outputs are finite).
    assert float(teacher.get_layer("t_count").count.numpy()) == 3.0 + 1.0
    assert float(student.get_layer("s_count").count.numpy()) == 3.0
    d.evaluate(x, y, batch_size=48, verbose=0)  # 1 step, no check
    assert float(teacher.get_layer("t_count").count.numpy()) == 5.0
    assert float(student.get_layer("s_count").count.numpy()) == 4.0


# ----------------------------------------------------------------------
# The feature term against numpy
# ----------------------------------------------------------------------


def test_projected_mse_term_matches_numpy(images):
    x, y = images
    teacher, student = cnn(8, "t"), cnn(4, "s")
    d = _distiller(teacher, student, [kd.FeatureMatch("t_c2", "s_c2", weight=0.5)])
    (adapter,) = d.adapters
    assert isinstance(adapter, keras.layers.Conv2D) and adapter.filters == 8
    logs = d.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)
    kernel, bias = (np.asarray(w, np.float64) for w in adapter.get_weights())
    s = _activation(student, "s_c2", x).astype(np.float64) @ kernel[0, 0] + bias
    t = _activation(teacher, "t_c2", x).astype(np.float64)
    expected = 0.5 * ((s - t) ** 2).mean()
    np.testing.assert_allclose(logs["feature_loss"], expected, rtol=1e-4)
    distill = np_kl(teacher.predict(x, verbose=0), student.predict(x, verbose=0), 1.0)
    np.testing.assert_allclose(
        logs["loss"], 0.5 * distill + 0.5 * logs["hard_loss"] + expected, rtol=1e-4
    )


def test_equal_widths_need_no_adapter_and_teacher_side_projection(images):
    x, _ = images
    teacher, student = cnn(4, "t"), cnn(4, "s")
    assert (
        kd.Distiller(
            teacher, student, features=[kd.FeatureMatch("t_c2", "s_c2")]
        ).adapters
        == []
    )
    teacher, student = cnn(8, "t2"), cnn(4, "s2")
    d = kd.Distiller(
        teacher,
        student,
        features=[kd.FeatureMatch("t2_c2", "s2_c2", projection="teacher")],
    )
    assert d.adapters[0].filters == 4
    at = kd.Distiller(
        teacher,
        student,
        features=[kd.FeatureMatch("t2_c2", "s2_c2", loss="attention_transfer")],
    )
    assert at.adapters == []  # attention maps need no equal widths


def test_spatial_pool_and_resize_match_numpy(images):
    x, y = images
    teacher = cnn(4, "t", size=8)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="s_c1")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    student = keras.Model(inputs, keras.layers.Dense(3)(h), name="s")
    with pytest.raises(ValueError, match="spatial='pool'"):
        kd.Distiller(teacher, student, features=[kd.FeatureMatch("t_c1", "s_c1")])
    d = _distiller(teacher, student, [kd.FeatureMatch("t_c1", "s_c1", spatial="pool")])
    logs = d.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)
    t = _activation(teacher, "t_c1", x).astype(np.float64)
    pooled = t.reshape(48, 4, 2, 4, 2, 4).mean(axis=(2, 4))
    s = _activation(student, "s_c1", x)
    np.testing.assert_allclose(
        logs["feature_loss"], ((s - pooled) ** 2).mean(), rtol=1e-4
    )
    d = _distiller(
        teacher, student, [kd.FeatureMatch("t_c1", "s_c1", spatial="resize")]
    )
    logs = d.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)
    resized = tf.image.resize(s, (8, 8), "bilinear").numpy()
    np.testing.assert_allclose(
        logs["feature_loss"], ((resized - t) ** 2).mean(), rtol=1e-4
    )


def test_feature_term_is_weighted_by_sample_weight(images):
    x, y = images
    teacher, student = cnn(4, "t"), cnn(4, "s")
    d = _distiller(teacher, student, [kd.FeatureMatch("t_c2", "s_c2")])
    w = np.zeros(48, "float32")
    w[:16] = 1.0
    logs = d.evaluate(x, y, sample_weight=w, batch_size=48, verbose=0, return_dict=True)
    diff = (_activation(student, "s_c2", x) - _activation(teacher, "t_c2", x)) ** 2
    per_sample = diff.reshape(48, -1).mean(-1)
    np.testing.assert_allclose(logs["feature_loss"], (w * per_sample).mean(), rtol=1e-4)


def test_training_with_a_hint_lowers_the_feature_loss(images):
    x, y = images
    d = _distiller(cnn(8, "t"), cnn(4, "s"), [kd.FeatureMatch("t_c2", "s_c2")])
    history = d.fit(x, y, batch_size=16, epochs=8, verbose=0)
    losses = history.history["feature_loss"]
    assert losses[-1] < 0.8 * losses[0]


# ----------------------------------------------------------------------
# Finding layers: names, objects, nested models, several outputs
# ----------------------------------------------------------------------


def _nested(outer_kind):
    inner_in = keras.Input((8,))
    h = keras.layers.Dense(6, activation="relu", name="inner_d1")(inner_in)
    inner = keras.Model(
        inner_in, keras.layers.Dense(5, name="inner_d2")(h), name="backbone"
    )
    if outer_kind == "sequential":
        return keras.Sequential(
            [keras.Input((8,)), inner, keras.layers.Dense(3, name="head")], name="outer"
        ), inner
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(3, name="head")(inner(inputs))
    return keras.Model(inputs, outputs, name="outer"), inner


def _check_nested_view(model, inner, data):
    x, _ = data
    view = taps.build_view(
        model, [(("backbone", "inner_d1"), None), (("head",), None)], "student_layer"
    )
    output, (hidden, head) = view(x)
    np.testing.assert_allclose(output, model(x), rtol=1e-5)
    expected = keras.Model(inner.inputs[0], inner.get_layer("inner_d1").output)(x)
    np.testing.assert_allclose(hidden, expected, rtol=1e-5)
    np.testing.assert_allclose(head, model(x), rtol=1e-5)
    assert len(view.trainable_variables) == len(model.trainable_variables)


def test_nested_tap_in_a_sequential_model(data):
    model, inner = _nested("sequential")
    _check_nested_view(model, inner, data)


@keras3_only
def test_nested_tap_in_a_functional_model(data):
    model, inner = _nested("functional")
    _check_nested_view(model, inner, data)


@legacy_only
def test_nested_tap_in_a_functional_model_is_refused_in_tf_keras():
    model, _ = _nested("functional")
    with pytest.raises(ValueError, match="Sequential"):
        taps.build_view(model, [(("backbone", "inner_d1"), None)], "student_layer")


def test_nested_tap_trains_through_a_distiller(data):
    x, y = data
    teacher, _ = _nested("sequential")
    student, inner = _nested("sequential")
    d = kd.Distiller(
        teacher,
        student,
        features=[kd.FeatureMatch("backbone/inner_d1", inner.get_layer("inner_d1"))],
    )
    d.compile("adam", SCE)
    before = [w.copy() for w in inner.get_weights()]
    history = d.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert history.history["feature_loss"][0] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, inner.get_weights()))
    assert d.get_config()["features"][0]["student_layer"] == "backbone/inner_d1"


def _attention_model(name, heads):
    inputs = keras.Input((5, 8))
    out, scores = keras.layers.MultiHeadAttention(heads, 4, name=f"{name}_mha")(
        inputs, inputs, return_attention_scores=True
    )
    pooled = keras.layers.GlobalAveragePooling1D()(out)
    return keras.Model(inputs, keras.layers.Dense(3)(pooled), name=name)


def test_attention_scores_by_output_index():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5, 8)).astype("float32")
    y = rng.integers(0, 3, 16)
    teacher, student = _attention_model("t", 4), _attention_model("s", 2)
    with pytest.raises(ValueError, match="output_index"):
        kd.Distiller(teacher, student, features=[kd.FeatureMatch("t_mha", "s_mha")])
    d = _distiller(
        teacher,
        student,
        [kd.FeatureMatch(("t_mha", 1), ("s_mha", 1), loss="attention_map")],
    )
    assert d.adapters == []
    logs = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)

    def scores(model, name):
        view = keras.Model(model.inputs, model.get_layer(name).output[1])
        return view.predict(x, verbose=0).astype(np.float64).mean(axis=1)

    pt, ps = scores(teacher, "t_mha"), scores(student, "s_mha")
    eps = 1e-7
    kl = (pt * (np.log(np.clip(pt, eps, 1)) - np.log(np.clip(ps, eps, 1)))).sum(-1)
    np.testing.assert_allclose(logs["feature_loss"], kl.mean(), rtol=1e-4)


# ----------------------------------------------------------------------
# Adapters are never part of the student
# ----------------------------------------------------------------------


def test_adapters_are_not_in_the_student_its_file_or_its_export(images, tmp_path):
    x, y = images
    student = cnn(4, "s")
    params = student.count_params()
    d = _distiller(cnn(8, "t"), student, [kd.FeatureMatch("t_c2", "s_c2")])
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    adapter_ids = {id(v) for a in d.adapters for v in a.weights}
    assert adapter_ids and not adapter_ids & {id(v) for v in student.weights}
    assert adapter_ids <= {id(v) for v in d.trainable_variables}
    assert student.count_params() == params
    path = os.fspath(tmp_path / "student.keras")
    student.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.count_params() == params
    assert not any(
        "adapter" in w.path if hasattr(w, "path") else "adapter" in w.name
        for w in loaded.weights
    )
    # The student's .tflite is the same size as that of an identical model
    # that never met a Distiller.
    twin = cnn(4, "s")  # same names: the files may differ only in content
    twin.set_weights(student.get_weights())
    a = kd.export.to_tflite(
        student, tmp_path / "a.tflite", verify_data=x[:8], latency_runs=0
    )
    b = kd.export.to_tflite(
        twin, tmp_path / "b.tflite", verify_data=x[:8], latency_runs=0
    )
    assert os.path.getsize(tmp_path / "a.tflite") == os.path.getsize(
        tmp_path / "b.tflite"
    )
    assert a.max_abs_diff < 1e-4 and b.max_abs_diff < 1e-4


def test_keras_round_trip_with_features(images, tmp_path):
    x, y = images
    features = [
        kd.FeatureMatch("t_c2", "s_c2", weight=0.3),
        kd.FeatureMatch(
            "t_c1", "s_c1", loss=kd.losses.AttentionTransfer(p=2), weight=50.0
        ),
    ]
    d = _distiller(cnn(8, "t"), cnn(4, "s"), features)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = os.fspath(tmp_path / "distiller.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    assert [type(m.loss).__name__ for m in loaded.features] == [
        "FeatureMSE",
        "AttentionTransfer",
    ]
    assert [m.weight for m in loaded.features] == [0.3, 50.0]
    for a, b in zip(d.adapters, loaded.adapters, strict=True):
        for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_array_equal(wa, wb)
    ours = d.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)
    theirs = loaded.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)
    for key in ("loss", "feature_loss", "distillation_loss"):
        np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-5)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)  # it trains on


def test_feature_match_config_round_trip():
    match = kd.FeatureMatch(
        ("a", 1),
        "b",
        loss="cosine",
        weight=2.0,
        projection="teacher",
        spatial="pool",
        teacher=1,
    )
    again = kd.FeatureMatch.from_config(match.get_config())
    assert again.get_config() == match.get_config()
    assert again.teacher_index == 1 and again.teacher == 1


# ----------------------------------------------------------------------
# With self-distillation and schedules, under jit and mixed precision
# ----------------------------------------------------------------------


def test_self_distillation_generations_with_a_feature_tap(images):
    x, y = images
    d = kd.Distiller(None, cnn(4, "s"), features=[kd.FeatureMatch("s_c2", "s_c2")])
    d.compile("adam", SCE)
    history = d.fit(
        x,
        y,
        epochs=4,
        batch_size=16,
        verbose=0,
        callbacks=[
            kd.callbacks.SelfDistillation(
                generations=2, epochs_per_generation=2, verbose=0
            )
        ],
    )
    features = history.history["feature_loss"]
    assert features[:2] == [0.0, 0.0]  # generation 1: no teacher yet
    assert all(v > 0 for v in features[2:])


def test_alpha_schedule_with_features_and_jit(images):
    x, y = images
    d = _distiller(
        cnn(8, "t"), cnn(4, "s"), [kd.FeatureMatch("t_c2", "s_c2")], jit_compile=True
    )
    schedule = kd.callbacks.AlphaSchedule(lambda epoch: 0.2 * (epoch + 1))
    history = d.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[schedule])
    assert np.isfinite(history.history["feature_loss"]).all()
    assert d.alpha == pytest.approx(0.4)


def test_mixed_precision_feature_term_is_float32(images):
    x, y = images
    keras.mixed_precision.set_global_policy("mixed_float16")
    d = _distiller(cnn(8, "t"), cnn(4, "s"), [kd.FeatureMatch("t_c2", "s_c2")])
    history = d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["feature_loss"]).all()


# ----------------------------------------------------------------------
# Errors, before training
# ----------------------------------------------------------------------


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.dense = keras.layers.Dense(3, name="d")

    def call(self, x):
        return self.dense(x)


def test_a_subclassed_model_gets_an_error_saying_what_works(data):
    x, _ = data
    student = Subclassed()
    student(x[:1])
    from conftest import make_mlp

    with pytest.raises(ValueError, match="Functional API"):
        kd.Distiller(make_mlp(8), student, features=[kd.FeatureMatch("dense", "d")])


def test_errors_name_the_argument():
    t, s = cnn(8, "t"), cnn(4, "s")
    with pytest.raises(ValueError, match="no layer 'nope'.*s_c1"):
        kd.Distiller(t, s, features=[kd.FeatureMatch("t_c1", "nope")])
    with pytest.raises(ValueError, match="projection=None"):
        kd.Distiller(t, s, features=[kd.FeatureMatch("t_c1", "s_c1", projection=None)])
    with pytest.raises(ValueError, match="reads teacher 1"):
        kd.Distiller(t, s, features=[kd.FeatureMatch("t_c1", "s_c1", teacher=1)])
    with pytest.raises(TypeError, match="features"):
        kd.Distiller(t, s, features=["t_c1"])
    with pytest.raises(ValueError, match="projection"):
        kd.FeatureMatch("a", "b", projection="both")
    with pytest.raises(ValueError, match="spatial"):
        kd.FeatureMatch("a", "b", spatial="crop")
    with pytest.raises(TypeError, match="teacher_layer"):
        kd.FeatureMatch(3, "b")
    with pytest.raises(ValueError, match="weight"):
        kd.FeatureMatch("a", "b", weight=-1.0)
    with pytest.raises(ValueError, match="rank"):
        kd.Distiller(t, s, features=[kd.FeatureMatch("t_c1", "s_gap")])
    with pytest.raises(ValueError, match="Online distillation"):
        kd.OnlineDistiller(t, s, features=[kd.FeatureMatch("t_c1", "s_c1")])


def test_a_new_teacher_whose_widths_need_another_adapter_is_refused():
    d = kd.Distiller(
        cnn(8, "t"), cnn(4, "s"), features=[kd.FeatureMatch("t_c2", "s_c2")]
    )
    with pytest.raises(ValueError, match="adapter"):
        d.replace_teacher(cnn(6, "t"))
    d.replace_teacher(cnn(8, "t"))  # same widths: the adapter fits


def test_the_readme_feature_snippet_runs():
    namespace = readme_snippet("### Feature distillation")
    distiller = namespace["distiller"]
    assert [type(a).__name__ for a in distiller.adapters] == ["Conv2D"]
    rng = np.random.default_rng(0)
    x = rng.random((16, 28, 28, 1)).astype("float32")
    history = distiller.fit(x, rng.integers(0, 10, 16), epochs=1, verbose=0)
    assert history.history["feature_loss"][0] > 0


# ----------------------------------------------------------------------
# layer_map: which teacher layer each student layer learns from
# ----------------------------------------------------------------------


def _blocks(count, name):
    """Block j outputs the constant j + 1 (zero kernel, bias j + 1)."""
    inputs = keras.Input((4,))
    h = inputs
    for j in range(count):
        h = keras.layers.Dense(
            3,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(j + 1.0),
            name=f"{name}_block{j}",
        )(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h), name=name)


@pytest.mark.parametrize(
    "mapping, expected",
    [
        ("uniform", {0: 1, 1: 3, 2: 5, 3: 7}),
        (lambda i: 2 * i, {0: 0, 1: 2, 2: 4, 3: 6}),
        ({0: 7, 2: 0}, {0: 7, 2: 0}),
    ],
)
def test_layer_map_pairs_the_right_layers(mapping, expected):
    teacher, student = _blocks(8, "t"), _blocks(4, "s")
    matches = taps.layer_map(
        [f"t_block{j}" for j in range(8)],
        [f"s_block{i}" for i in range(4)],
        mapping=mapping,
        loss=lambda t, s: tf.reduce_mean(t, -1) * 100.0 + tf.reduce_mean(s, -1),
        projection=None,
    )
    x = np.zeros((2, 4), "float32")
    seen = {}
    for match in matches:  # record, through a Distiller, what each term read
        d = kd.Distiller(teacher, student, features=[match])
        d.compile("sgd", SCE, alpha=0.0)
        value = d.evaluate(x, np.zeros(2), verbose=0, return_dict=True)["feature_loss"]
        teacher_block, student_block = divmod(round(value), 100)
        seen[student_block - 1] = teacher_block - 1
    assert seen == expected


def test_layer_map_errors():
    names = ["a", "b"]
    with pytest.raises(ValueError, match="pairs teacher layer 5"):
        taps.layer_map(names, names, mapping={0: 5})
    with pytest.raises(ValueError, match="mapping"):
        taps.layer_map(names, names, mapping="skip")
    with pytest.raises(TypeError, match="teacher_layers"):
        taps.layer_map("a", names)
    with pytest.raises(TypeError, match="mapping"):
        taps.layer_map(names, names, mapping=3)
    assert taps.uniform_map(3, 12) == {0: 3, 1: 7, 2: 11}
