"""kd.report.compare and Report on rigged models whose every output is known.

A "fixed" model is a bias-free Dense layer fed the one-hot index of a sample,
so it returns the logits row chosen for that sample: every per-class
accuracy, gap and bias kind below is known in advance.
"""

import json
import os
import sys

import numpy as np
import pytest

import keras_kd as kd
from conftest import readme_snippet
from keras_kd.backend import keras, tf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUM_CLASSES = 4
Y = np.repeat(np.arange(NUM_CLASSES), 4)  # 16 samples, 4 per class
X = np.eye(len(Y), dtype="float32")  # sample i is the one-hot of i

# How many of each class's 4 samples each model gets right.
RIGHT = {
    "teacher": [4, 1, 4, 1],  # 1.0, 0.25, 1.0, 0.25
    "student": [2, 0, 3, 1],  # 0.5, 0.0, 0.75, 0.25
    "baseline": [3, 2, 2, 3],  # 0.75, 0.5, 0.5, 0.75
}


def rigged_logits(right):
    """Logits 3 on the true class for the first `right[c]` samples of class
    c, else 3 on the next class; 0 elsewhere."""
    logits = np.zeros((len(Y), NUM_CLASSES), "float32")
    for i, label in enumerate(Y):
        rank = i - 4 * label
        predicted = label if rank < right[label] else (label + 1) % NUM_CLASSES
        logits[i, predicted] = 3.0
    return logits


def fixed_model(logits, name, activation=None):
    model = keras.Sequential(
        [
            keras.Input((len(logits),)),
            keras.layers.Dense(logits.shape[1], use_bias=False, activation=activation),
        ],
        name=name,
    )
    model.layers[-1].set_weights([np.asarray(logits, "float32")])
    return model


@pytest.fixture
def rigged():
    return {name: fixed_model(rigged_logits(r), name) for name, r in RIGHT.items()}


def np_softmax(z):
    z = np.asarray(z, np.float64) - np.max(z, axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def np_ece(probs, labels, num_bins=15):
    conf, pred, total = probs.max(1), probs.argmax(1), 0.0
    for k in range(num_bins):
        inside = (conf >= k / num_bins) & (conf < (k + 1) / num_bins)
        if k == num_bins - 1:
            inside |= conf == 1.0
        if inside.any():
            acc = np.mean(pred[inside] == labels[inside])
            total += inside.mean() * abs(acc - conf[inside].mean())
    return total


def test_rigged_per_class_gaps_and_baseline_comparison(rigged):
    report = kd.report.compare(
        rigged["teacher"],
        rigged["student"],
        (X, Y),
        baseline=rigged["baseline"],
        class_names=["cat", "dog", "fox", "owl"],
        latency_runs=0,
        worst=3,
        batch_size=5,
    )
    per_class = {n: report.models[n]["per_class_accuracy"] for n in RIGHT}
    for name, right in RIGHT.items():
        assert per_class[name] == [r / 4 for r in right], name
        assert report.models[name]["accuracy"] == sum(right) / 16
    # Worst classes: gaps 0.5, 0.25, 0.25 (ties keep class order); owl's gap
    # of 0 is not listed.
    assert [(w["name"], w["gap"]) for w in report.worst_classes] == [
        ("cat", 0.5),
        ("dog", 0.25),
        ("fox", 0.25),
    ]
    # Student below baseline in cat (teacher fine: introduced), dog (teacher
    # below, student below teacher: amplified), owl (teacher below, student
    # equal to it: inherited); not in fox (0.75 > 0.5).
    assert [(b["name"], b["drop"], b["kind"]) for b in report.bias] == [
        ("dog", 0.5, "amplified"),
        ("owl", 0.5, "inherited"),
        ("cat", 0.25, "introduced"),
    ]
    assert [b["teacher_below_baseline"] for b in report.bias] == [True, True, False]
    # Agreement with the teacher, ECE and NLL against numpy references.
    logits = {name: rigged_logits(r) for name, r in RIGHT.items()}
    for name in RIGHT:
        p = np_softmax(logits[name])
        row = report.models[name]
        expected = np.mean(logits[name].argmax(1) == logits["teacher"].argmax(1))
        assert row["agreement"] == pytest.approx(expected)
        assert row["ece"] == pytest.approx(np_ece(p, Y), abs=1e-6)
        nll = np.mean(-np.log(p[np.arange(16), Y]))
        assert row["nll"] == pytest.approx(nll, rel=1e-5)
        assert row["latency_ms"] is None
    assert report.models["teacher"]["agreement"] == 1.0
    assert report.num_samples == 16 and "tflite" not in report.models


def test_without_baseline_bias_is_none_and_text_shows_the_table(rigged):
    report = kd.report.compare(
        rigged["teacher"], rigged["student"], (X, Y), latency_runs=0
    )
    assert report.bias is None and "baseline" not in report.models
    # worst=5, but only the 3 classes where the student is behind (owl: 0).
    assert [w["class"] for w in report.worst_classes] == [0, 1, 2]
    text = str(report)
    for expected in ("teacher", "student", "62.50%", "37.50%", "agreement", "ECE"):
        assert expected in text


def test_probability_outputs_are_detected_not_softmaxed_twice(rigged):
    logits = rigged_logits(RIGHT["teacher"])
    softmax_teacher = fixed_model(logits, "soft_teacher", activation="softmax")
    with_logits = kd.report.compare(
        rigged["teacher"], rigged["student"], (X, Y), latency_runs=0
    )
    with_probs = kd.report.compare(
        softmax_teacher, rigged["student"], (X, Y), latency_runs=0
    )
    for key in ("accuracy", "ece", "nll"):
        assert with_probs.models["teacher"][key] == pytest.approx(
            with_logits.models["teacher"][key], abs=1e-6
        )


def test_tf_data_and_one_hot_labels_match_numpy(rigged):
    arrays = kd.report.compare(
        rigged["teacher"], rigged["student"], (X, Y), latency_runs=0
    )
    dataset = tf.data.Dataset.from_tensor_slices((X, np.eye(4)[Y])).batch(3)
    streamed = kd.report.compare(
        rigged["teacher"], rigged["student"], dataset, latency_runs=0
    )
    for name in ("teacher", "student"):
        for key in ("accuracy", "agreement", "ece", "nll", "per_class_accuracy"):
            assert streamed.models[name][key] == pytest.approx(
                arrays.models[name][key], abs=1e-6
            )


def test_params_size_and_latency_are_measured(rigged, tmp_path):
    report = kd.report.compare(
        rigged["teacher"], rigged["student"], (X, Y), latency_runs=3
    )
    row = report.models["student"]
    assert row["params"] == rigged["student"].count_params() == 16 * 4
    path = str(tmp_path / "student.keras")
    rigged["student"].save(path)
    assert row["size_bytes"] == pytest.approx(os.path.getsize(path), rel=0.05)
    assert row["latency_ms"] > 0


def test_size_leaves_the_optimizer_state_out(tmp_path):
    # The same model compiled and trained with Adam (two slots a weight) has
    # the size of its uncompiled twin: the model as it ships.
    def mlp():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(32), keras.layers.Dense(3)]
        )

    trained, plain = mlp(), mlp()
    trained.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = np.ones((8, 4), "float32"), np.zeros(8, "int32")
    trained.fit(x, y, epochs=1, verbose=0)
    plain.set_weights(trained.get_weights())
    report = kd.report.compare(plain, trained, (x, y), latency_runs=0)
    sizes = [report.models[name]["size_bytes"] for name in ("teacher", "student")]
    assert sizes[1] == pytest.approx(sizes[0], rel=0.02)
    with_state = str(tmp_path / "trained.keras")
    trained.save(with_state)
    assert os.path.getsize(with_state) > 1.5 * sizes[1]
    assert report.notes == []


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(data=(X[:0], Y[:0])), ValueError, "`data` yielded no samples"),
        (dict(data=(X,)), ValueError, "`data` must hold labels"),
        (dict(data="digits"), TypeError, "`data`"),
        (dict(data=(X, Y + 1)), ValueError, "outside the 4 classes"),
        (dict(tflite="missing.tflite"), ValueError, "`tflite`"),
        (dict(tflite=3), TypeError, "`tflite`"),
        (dict(class_names=["a", "b"]), ValueError, "`class_names`"),
        (dict(class_names="abcd"), TypeError, "`class_names`"),
        (dict(batch_size=0), ValueError, "`batch_size`"),
        (dict(latency_runs=-1), ValueError, "`latency_runs`"),
        (dict(history=42), TypeError, "`history`"),
        (dict(teacher="teacher.keras"), TypeError, "`teacher`"),
        (dict(baseline=np.zeros(3)), TypeError, "`baseline`"),
    ],
)
def test_bad_arguments_are_named(rigged, kwargs, error, words):
    arguments = dict(teacher=rigged["teacher"], student=rigged["student"])
    arguments["data"] = (X, Y)
    arguments.update(kwargs)
    with pytest.raises(error, match=words):
        kd.report.compare(
            latency_runs=kwargs.get("latency_runs", 0),
            **{k: v for k, v in arguments.items() if k != "latency_runs"},
        )


def test_class_counts_that_differ_are_refused(rigged):
    three = fixed_model(rigged_logits(RIGHT["student"])[:, :3], "three")
    with pytest.raises(ValueError, match="`student` predicts 3 classes"):
        kd.report.compare(rigged["teacher"], three, (X, Y), latency_runs=0)


def test_save_writes_json_markdown_html_and_pngs(rigged, tmp_path):
    history = [
        {"loss": [1.2, 0.9], "val_loss": [1.3, 1.0], "distillation_loss": [0.5, 0.4]},
        {"loss": [0.8, 0.6], "val_loss": [0.9, 0.8], "distillation_loss": [0.3, 0.2]},
    ]
    report = kd.report.compare(
        rigged["teacher"],
        rigged["student"],
        (X, Y),
        baseline=rigged["baseline"],
        history=history,
        latency_runs=0,
    )
    directory = tmp_path / "out"
    written = report.save(directory)
    assert sorted(os.listdir(directory)) == [
        "history.png",
        "per_class.png",
        "reliability.png",
        "report.html",
        "report.json",
        "report.md",
    ]  # and no temporary file left behind
    with open(written["json"]) as f:
        assert json.load(f) == json.loads(json.dumps(report.to_dict()))
    for path in written["png"]:
        with open(path, "rb") as f:
            content = f.read()
        assert len(content) > 1000 and content.startswith(PNG_SIGNATURE)
    with open(written["html"]) as f:
        page = f.read()
    assert page.count("data:image/png;base64,") == 3
    with open(written["md"]) as f:
        markdown = f.read()
    for text in (page, markdown):
        # accuracies 62.50 / 37.50 / 62.50%, the gap and the bias kinds
        for expected in ("62.50%", "37.50%", "amplified", "inherited", "introduced"):
            assert expected in text
        assert f"{report.models['student']['ece']:.4f}" in text
    assert report.history[1]["loss"] == [0.8, 0.6]


def test_plot_without_history_and_directory_checks(rigged, tmp_path):
    report = kd.report.compare(
        rigged["teacher"], rigged["student"], (X, Y), latency_runs=0
    )
    paths = report.plot(tmp_path)
    assert [os.path.basename(p) for p in paths] == ["reliability.png", "per_class.png"]
    with pytest.raises(ValueError, match="`directory`"):
        report.save(tmp_path / "missing" / "deeper")
    with pytest.raises(ValueError, match="`formats`"):
        report.save(tmp_path, formats=("pdf",))
    assert report.save(tmp_path / "md", formats="md")["md"].endswith("report.md")


def test_without_matplotlib_tables_still_work(rigged, tmp_path, monkeypatch):
    report = kd.report.compare(
        rigged["teacher"], rigged["student"], (X, Y), latency_runs=0
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"keras-kd\[report\]"):
        report.plot(tmp_path)
    with pytest.raises(ImportError, match=r"keras-kd\[report\]"):
        report.save(tmp_path / "all")
    assert not (tmp_path / "all").exists()
    written = report.save(tmp_path / "tables", formats=("json", "md", "html"))
    with open(written["html"]) as f:
        page = f.read()
    assert "data:image/png" not in page and "No plots" in page


def test_tflite_row_matches_the_keras_student(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    teacher = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(3)]
    )
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    path = str(tmp_path / "student.tflite")
    kd.export.to_tflite(student, path)
    report = kd.report.compare(teacher, student, (x, y), tflite=path, latency_runs=2)
    row, keras_row = report.models["tflite"], report.models["student"]
    assert row["accuracy"] == pytest.approx(keras_row["accuracy"], abs=1 / 40)
    assert row["agreement"] == pytest.approx(keras_row["agreement"], abs=1 / 40)
    assert row["ece"] == pytest.approx(keras_row["ece"], abs=1e-3)
    assert row["size_bytes"] == os.path.getsize(path)
    assert row["params"] == student.count_params()
    assert row["latency_ms"] > 0
    # The file's latency at 1 and 4 threads, the 1-thread median in the row.
    assert [f["threads"] for f in report.tflite_latency] == [1, 4]
    for figures in report.tflite_latency:
        assert 0 < figures["median_ms"] <= figures["p90_ms"]
    assert row["latency_ms"] == report.tflite_latency[0]["median_ms"]
    for text in (str(report), report.to_markdown(), report.to_html()):
        assert "LiteRT file, batch 1 (XNNPACK), after warm-up" in text


def test_readme_snippet_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = readme_snippet("## Teacher vs student: `kd.report`")
    report = namespace["report"]
    assert set(report.models) == {"teacher", "student", "baseline"}
    # A trained teacher on this easy 3-class rule: far above chance (1/3).
    assert report.models["teacher"]["accuracy"] > 0.8
    assert report.bias is not None and len(report.history) == 1
    names = sorted(os.listdir(tmp_path / "student_report"))
    assert names == sorted(
        ["report.json", "report.md", "report.html", "reliability.png"]
        + ["per_class.png", "history.png"]
    )
