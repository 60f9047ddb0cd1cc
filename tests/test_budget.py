"""`kd.tune_for_budget`: a student chosen for a phone's budget, never over it."""

import os
import re

import numpy as np
import pytest

import keras_kd as kd
from keras_kd import _budget_space
from keras_kd.backend import keras

pytest.importorskip("keras_tuner")

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
WIDTHS = [2, 32]


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + 2 * (x[:, 1] > 0).astype("int64")
    return x, y


@pytest.fixture(scope="module")
def task():
    keras.utils.set_random_seed(0)
    train, val = _data(128, 0), _data(64, 1)
    teacher = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(4)]
    )
    teacher.compile(optimizer="adam", loss=LOSS)
    teacher.fit(*train, epochs=3, verbose=0)
    return teacher, train, val


def student_fn(hp):
    width = hp.Choice("width", WIDTHS)
    depth = hp.Int("depth", 1, 2)
    model = keras.Sequential([keras.Input((8,))])
    for _ in range(depth):
        model.add(keras.layers.Dense(width, "relu"))
    model.add(keras.layers.Dense(4))
    return model


def _search(task, **kwargs):
    teacher, train, val = task
    options = dict(
        loss=LOSS, max_epochs=1, seed=0, latency_runs=2, quantization="dynamic"
    )
    options.update(kwargs)
    return kd.tune_for_budget(teacher, student_fn, train, val, **options)


def _file_size(values, quantization, x):
    """The candidate's file size, exported here on its own, weights non-zero
    (as trained weights are)."""
    hp = __import__("keras_tuner").HyperParameters()
    hp.values.update(values)
    model = student_fn(hp)
    rng = np.random.default_rng(0)
    model.set_weights(
        [w + 0.01 * rng.standard_normal(w.shape) for w in model.get_weights()]
    )
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "kd_budget_size.tflite")
    report = kd.export.to_tflite(model, path, quantization, x, verify=False)
    os.remove(path)
    return report.size_bytes


@pytest.fixture(scope="module")
def searched(task):
    _, (x, _), _ = task
    sizes = {
        (w, d): _file_size({"width": w, "depth": d}, "dynamic", x)
        for w in WIDTHS
        for d in (1, 2)
    }
    # A budget half-way between the second and third sizes: two candidates
    # fit, two do not. A file's size varies by a few bytes with the model's
    # name, so the budget stays well clear of every size.
    ordered = sorted(sizes.values())
    assert ordered[2] - ordered[1] > 400
    budget = (ordered[1] + ordered[2]) // 2
    return _search(task, max_bytes=budget), sizes, budget


def test_the_grid_is_every_declared_combination(searched):
    result, sizes, _ = searched
    seen = [
        (r["hyperparameters"]["width"], r["hyperparameters"]["depth"])
        for r in result.candidates
    ]
    assert seen == [(w, d) for w in WIDTHS for d in (1, 2)]
    assert [r["id"] for r in result.candidates] == [f"c{i:02d}" for i in range(4)]


def test_the_budget_is_never_exceeded(searched):
    result, sizes, budget = searched
    for row in result.candidates:
        key = (row["hyperparameters"]["width"], row["hyperparameters"]["depth"])
        # Measured before training, as the exported file's size: the size of
        # a trained file of that architecture (give or take the model's name).
        assert abs(row["untrained_size_bytes"] - sizes[key]) <= 64
        if sizes[key] > budget:
            assert row["status"] == "over max_bytes" and row["recipe"] is None
            assert row["accuracy"] is None and not row["selected"]
        else:
            assert row["status"] == "trained" and row["size_bytes"] <= budget
            assert abs(row["size_bytes"] - sizes[key]) <= 64
    assert [r["status"] for r in result.candidates].count("trained") == 2
    assert len(result.tflite) <= budget
    assert len(result.tflite) == result.candidate["size_bytes"]


def test_the_most_accurate_file_within_budget_is_returned(searched, task):
    result, _, _ = searched
    _, _, val = task
    trained = [r for r in result.candidates if r["status"] == "trained"]
    best = max(r["accuracy"] for r in trained)
    assert result.candidate["accuracy"] == best and result.candidate["selected"]
    assert sum(r["selected"] for r in result.candidates) == 1
    # The accuracy is that of the returned file, recomputed here.
    path = result.save_tflite(
        os.path.join(os.environ.get("TMPDIR", "/tmp"), "kd_b.tflite")
    )
    assert kd.export.evaluate_tflite(path, val) == pytest.approx(best)
    logits = kd.export.predict_tflite(path, val[0])
    keras_logits = result.student.predict(val[0], verbose=0)
    assert np.mean(logits.argmax(-1) == keras_logits.argmax(-1)) >= 0.95
    os.remove(path)


def test_pareto_fronts_match_a_brute_force_reference(searched):
    result, _, _ = searched
    trained = [r for r in result.candidates if r["accuracy"] is not None]
    for by, key in (("size", "size_bytes"), ("latency", "latency_ms")):
        cost = np.array([r[key] for r in trained])
        acc = np.array([r["accuracy"] for r in trained])
        dominated = (
            (cost[None, :] <= cost[:, None])
            & (acc[None, :] >= acc[:, None])
            & ((cost[None, :] < cost[:, None]) | (acc[None, :] > acc[:, None]))
        ).any(axis=1)
        expected = {trained[i]["id"] for i in np.flatnonzero(~dominated)}
        assert {r["id"] for r in result.pareto(by)} == expected
        assert [r[key] for r in result.pareto(by)] == sorted(
            r[key] for r in result.pareto(by)
        )
    # The most accurate file is on both fronts (nothing is more accurate).
    assert result.candidate in result.pareto("size")


def test_pareto_front_on_random_points():
    rng = np.random.default_rng(3)
    points = [tuple(p) for p in rng.integers(0, 6, size=(40, 2)).astype(float)]
    front = set(_budget_space.pareto_front(points))
    for i, (c, a) in enumerate(points):
        beaten = any(c2 <= c and a2 >= a and (c2, a2) != (c, a) for c2, a2 in points)
        assert (i in front) == (not beaten)


def test_table_and_plot(searched, tmp_path):
    result, _, _ = searched
    text = result.table()
    assert "<- returned" in text and "over max_bytes" in text
    assert text.count("\n") == len(result.candidates)
    pytest.importorskip("matplotlib")
    path = result.plot(tmp_path / "pareto.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_budget_nothing_meets_names_the_smallest_candidate(searched, task):
    _, sizes, _ = searched
    smallest = min(sizes.values())
    with pytest.raises(ValueError, match=r"No candidate fits.*max_bytes") as info:
        _search(task, max_bytes=smallest - 200)
    named = re.search(
        r"smallest, c00 \(width=2, depth=1\), is ([\d,]+) bytes", str(info.value)
    )
    assert named, str(info.value)
    assert abs(int(named.group(1).replace(",", "")) - smallest) <= 64
    with pytest.raises(
        ValueError, match=r"No candidate fits.*max_latency_ms=1e-09.*the fastest"
    ):
        _search(task, max_latency_ms=1e-9)


def test_a_file_over_budget_after_training_is_never_returned(task, monkeypatch):
    from keras_kd import _budget_measure

    measure = _budget_measure.Exporter.measure
    calls = []

    def growing(self, model, path):
        figures = measure(self, model, path)
        calls.append(path)
        if len(calls) > 2:  # every trained file: over any budget
            figures["size_bytes"] += 10**6
        return figures

    monkeypatch.setattr(_budget_measure.Exporter, "measure", growing)
    with pytest.raises(ValueError, match="No candidate fits"):
        _search(
            task,
            max_bytes=10**5,
            candidates=[{"width": 2, "depth": 1}, {"width": 8, "depth": 1}],
        )


def test_a_candidate_litert_refuses_is_redrawn_untrained_and_dropped_trained(
    task, monkeypatch
):
    from keras_kd import _budget_measure

    measure = _budget_measure.Exporter.measure
    calls = []

    def refusing(self, model, path):
        calls.append(os.path.basename(path))
        # The first untrained draw of c00 and c00's trained file are refused,
        # as LiteRT refuses an int8 file with a layer that never fires.
        if len(calls) == 1 or (len(calls) > 3 and calls[-1] == "c00.tflite"):
            raise RuntimeError("does not prepare in the LiteRT interpreter")
        return measure(self, model, path)

    monkeypatch.setattr(_budget_measure.Exporter, "measure", refusing)
    result = _search(
        task,
        max_bytes=10**6,
        candidates=[{"width": 2, "depth": 1}, {"width": 8, "depth": 1}],
    )
    assert calls == ["c00.tflite"] * 2 + ["c01.tflite", "c00.tflite", "c01.tflite"]
    refused, kept = result.candidates
    assert refused["status"] == "not exportable after training"
    assert "does not prepare" in refused["error"] and refused["accuracy"] is None
    assert kept["selected"] and result.candidate is kept and kept["error"] is None


def test_candidates_and_a_student_fn_without_hp(task):
    result = _search(task, max_bytes=10**6, candidates=[{"width": 8, "depth": 2}])
    (row,) = result.candidates
    assert row["hyperparameters"] == {"width": 8, "depth": 2}
    assert len(result.student.layers) == 3
    teacher, train, val = task
    plain = kd.tune_for_budget(
        teacher,
        lambda: student_fn(__import__("keras_tuner").HyperParameters()),
        train,
        val,
        loss=LOSS,
        max_bytes=10**6,
        max_epochs=1,
        latency_runs=1,
        quantization=None,
    )
    assert [r["hyperparameters"] for r in plain.candidates] == [{}]
    assert plain.quantization == "float32" and plain.candidate["selected"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_bytes": 0}, ValueError, r"`max_bytes`.*at least 1"),
        ({"max_bytes": -5}, ValueError, r"`max_bytes`"),
        ({"max_bytes": 1.5}, TypeError, r"`max_bytes`"),
        ({"max_latency_ms": 0}, ValueError, r"`max_latency_ms`"),
        ({"max_latency_ms": -1.0}, ValueError, r"`max_latency_ms`"),
        ({}, ValueError, r"No budget given.*`max_bytes`.*`max_latency_ms`"),
        ({"max_bytes": 10, "quantization": "int4"}, ValueError, r"`quantization`"),
        (
            {"max_bytes": 10, "export_options": {"verify_data": 1}},
            ValueError,
            r"`export_options`",
        ),
        ({"max_bytes": 10, "export_options": [1]}, TypeError, r"`export_options`"),
        ({"max_bytes": 10, "candidates": []}, ValueError, r"`candidates`"),
        ({"max_bytes": 10, "candidates": [3]}, TypeError, r"`candidates`"),
        ({"max_bytes": 10, "recipes": 0}, ValueError, r"`recipes`"),
        ({"max_bytes": 10, "num_threads": 0}, ValueError, r"`num_threads`"),
        ({"max_bytes": 10, "validation_data": None}, ValueError, r"`validation_data`"),
    ],
)
def test_bad_arguments_are_refused_before_any_export(
    task, monkeypatch, kwargs, error, match
):
    from keras_kd import _budget_measure

    def no_export(*args, **kw):
        raise AssertionError("exported before the arguments were checked")

    monkeypatch.setattr(_budget_measure, "to_tflite", no_export)
    teacher, train, val = task
    kwargs = dict(kwargs)
    validation = kwargs.pop("validation_data", val)
    with pytest.raises(error, match=match):
        kd.tune_for_budget(teacher, student_fn, train, validation, loss=LOSS, **kwargs)


def test_a_float_without_a_step_is_refused(task):
    teacher, train, val = task

    def float_fn(hp):
        hp.Float("dropout", 0.0, 0.5)
        return student_fn(hp)

    with pytest.raises(ValueError, match=r"`student_fn`.*'dropout'.*step"):
        kd.tune_for_budget(teacher, float_fn, train, val, loss=LOSS, max_bytes=10**6)


def test_redrawn_weights_fire_where_a_dead_draw_did_not(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(4, "relu"),
            keras.layers.Dense(
                4, "relu", kernel_initializer=keras.initializers.Constant(-1.0)
            ),
            keras.layers.Dense(3),
        ]
    )
    path = tmp_path / "m.tflite"
    with pytest.raises(RuntimeError, match="does not prepare"):
        kd.export.to_tflite(model, path, "int8", x, latency_runs=0)
    shapes = [w.shape for w in model.get_weights()]
    _budget_space.redraw_weights(model, 0)
    assert [w.shape for w in model.get_weights()] == shapes
    kernel = model.get_weights()[2]
    # Normal with std 1/sqrt(fan-in), within sampling error.
    assert abs(kernel.std() * np.sqrt(4) - 1) < 0.5
    report = kd.export.to_tflite(model, path, "int8", x, latency_runs=0)
    assert report.top1_agreement >= 0.8
