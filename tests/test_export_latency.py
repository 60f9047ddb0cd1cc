"""Latency as a phone app sees it: `kd.export.measure_latency` and the
latency fields of `to_tflite`'s report."""

import json

import numpy as np
import pytest

import keras_kd as kd
from keras_kd.backend import keras


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(3)]
    )
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    path = str(tmp_path_factory.mktemp("latency") / "model.tflite")
    report = kd.export.to_tflite(model, path, verify_data=x, latency_runs=7)
    return path, x, report


def test_report_has_median_and_p90_at_one_and_four_threads(exported):
    _, _, report = exported
    assert [f["threads"] for f in report.latency] == [1, 4]
    for figures in report.latency:
        assert 0 < figures["median_ms"] <= figures["p90_ms"]
    assert report.latency_ms == report.latency[0]["median_ms"]
    assert report.latency_p90_ms == report.latency[0]["p90_ms"]
    text = str(report)
    assert "p90 (1 thread)" in text and "p90 (4 threads)" in text
    values = report.to_dict()
    assert json.loads(json.dumps(values)) == values  # plain values


def test_latency_threads_are_the_callers(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x = np.ones((4, 4), "float32")
    path = str(tmp_path / "m.tflite")
    report = kd.export.to_tflite(
        model, path, verify_data=x, latency_runs=3, latency_threads=(2, 2, 1)
    )
    threads = [f["threads"] for f in report.latency]
    assert threads == [2, 1]  # distinct, in the order given
    assert report.latency_ms == report.latency[0]["median_ms"]
    report = kd.export.to_tflite(model, path, verify_data=x, num_threads=3)
    assert [f["threads"] for f in report.latency] == [3, 4]  # num_threads, 4
    report = kd.export.to_tflite(model, path, verify_data=x, latency_runs=0)
    assert report.latency == [] and report.latency_ms is None


def test_measure_latency_on_a_path_bytes_and_random_inputs(exported):
    path, x, _ = exported
    with open(path, "rb") as f:
        content = f.read()
    for source, inputs in ((path, x[:1]), (content, [x]), (path, None)):
        figures = kd.export.measure_latency(
            source, inputs, threads=(1, 4), runs=5, warmup=1
        )
        assert [f["threads"] for f in figures] == [1, 4]
        for f in figures:
            assert 0 < f["median_ms"] <= f["p90_ms"]
    (only,) = kd.export.measure_latency(path, threads=2, runs=1)
    assert only["threads"] == 2


def test_p90_is_numpys_percentile_of_the_timed_runs(exported, monkeypatch):
    from keras_kd.export import _runner

    path, x, _ = exported
    ticks = iter(np.cumsum([0.0] + [0.001 * (i % 7 + 1) for i in range(40)]))
    monkeypatch.setattr(_runner.time, "perf_counter", lambda: float(next(ticks)))
    median, p90 = _runner.Runner(path=path).latency([x], runs=20, warmup=0)
    durations = 1000 * np.diff(
        np.cumsum([0.0] + [0.001 * (i % 7 + 1) for i in range(40)])
    )
    timed = durations[0::2][:20]  # each run reads the clock twice
    assert median == pytest.approx(np.median(timed))
    assert p90 == pytest.approx(np.percentile(timed, 90))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threads": 0}, ValueError, r"`threads`.*at least 1"),
        ({"threads": ()}, ValueError, r"`threads` is empty"),
        ({"threads": "4"}, TypeError, r"`threads`"),
        ({"threads": True}, TypeError, r"`threads`"),
        ({"runs": 0}, ValueError, r"`runs`"),
        ({"warmup": -1}, ValueError, r"`warmup`"),
        ({"inputs": [np.ones((1, 6)), np.ones((1, 6))]}, ValueError, r"`inputs`"),
    ],
)
def test_bad_arguments_name_themselves(exported, kwargs, error, match):
    path, _, _ = exported
    with pytest.raises(error, match=match):
        kd.export.measure_latency(path, **kwargs)


def test_bad_model_file_and_latency_threads(exported, tmp_path):
    path, x, _ = exported
    with pytest.raises(ValueError, match=r"`model_file` is not a file"):
        kd.export.measure_latency(str(tmp_path / "missing.tflite"))
    with pytest.raises(TypeError, match=r"`model_file`"):
        kd.export.measure_latency(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"`latency_threads`"):
        kd.export.to_tflite(model, str(tmp_path / "m.tflite"), latency_threads=[1, 0])
