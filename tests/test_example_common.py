"""Tests of examples/_common.py, what the examples share, and of the way the
examples find it (and examples/_charlm.py, examples/_deploy.py)."""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLES_DIR, load_example
from keras_kd import data


@pytest.fixture(scope="module")
def common():
    # Loading an example puts examples/ on sys.path and imports `_common`.
    load_example("self_distillation")
    return sys.modules["_common"]


def _runs(values):
    """Per-seed results `{"seed", "accuracy"}` from `{name: [per seed]}`."""
    seeds = range(len(next(iter(values.values()))))
    return [
        {"seed": s, "accuracy": {name: v[s] for name, v in values.items()}}
        for s in seeds
    ]


def test_mean_and_wins_over_seeds_match_numpy(common):
    values = {"scratch": [0.90, 0.80, 0.70], "kd": [0.95, 0.80, 0.60]}
    runs = _runs(values)
    mean = common.mean_over_seeds(runs, "accuracy")
    assert mean == {k: pytest.approx(np.mean(v)) for k, v in values.items()}
    kd, scratch = np.array(values["kd"]), np.array(values["scratch"])
    assert common.wins_over(runs, "accuracy", ["kd"]) == {"kd": np.sum(kd > scratch)}
    # Lower is better (bits per character): a tie is no win either way.
    lower = common.wins_over(runs, "accuracy", ["kd"], lower_is_better=True)
    assert lower == {"kd": np.sum(kd < scratch)} == {"kd": 1}


def test_table_rows_align_every_column(common):
    table = common.Table(
        ["teacher", "a-long-header"], label_width=8, min_width=9, pad=2
    )
    assert table.widths == [9, 15]
    row = table.row("seed 1", ["97.10", "+0.25"])
    assert row == "seed 1  " + "97.10".rjust(9) + "+0.25".rjust(15)
    assert len(table.row("", table.headers)) == len(row)


def test_seed_rows_and_vs_scratch_rows(common, capsys):
    runs = _runs({"teacher": [0.98, 0.96], "scratch": [0.90, 0.92]})
    table = common.Table(["teacher", "scratch"], 8, 9, 2)
    mean = common.mean_over_seeds(runs, "accuracy")
    number = "{:.2f}".format
    common.print_seed_rows(
        table, ["teacher", "scratch"], runs, "accuracy", mean, number
    )
    common.print_vs_scratch(table, ["teacher", "scratch"], {}, {}, 2, number)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["teacher", "scratch"],
        ["seed", "0", "0.98", "0.90"],
        ["seed", "1", "0.96", "0.92"],
        ["mean", "0.97", "0.91"],
        ["vs", "scr."],
        ["wins"],
    ]


@pytest.mark.parametrize(
    "kind, text, message",
    [
        ("positive", "0", "must be > 0, got 0"),
        ("non_negative", "-1", "must be >= 0, got -1"),
    ],
)
def test_argument_types_refuse_out_of_range_values(common, kind, text, message):
    parse = getattr(common, kind)(int)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)
    assert parse("3") == 3 and parse.__name__ == "int"


def test_checks_name_the_option(common, capsys):
    parser = common.parser("test")
    args = argparse.Namespace(alpha=1.5, dropout=1.0, hint_weight=[1.0, 1.0])
    for check, message in (
        (lambda: common.check_fraction(parser, args, "alpha"), "--alpha: must be in "),
        (
            lambda: common.check_fraction(parser, args, "dropout", closed=False),
            "--dropout: must be in [0, 1), got 1",
        ),
        (
            lambda: common.check_distinct(parser, args, "hint_weight"),
            "--hint-weight: each weight once, got 1 1",
        ),
    ):
        with pytest.raises(SystemExit):
            check()
        assert message in capsys.readouterr().err


def test_validation_images_come_after_max_train(common):
    pytest.importorskip("sklearn")
    (x_train, y_train), _ = data.load_digits()
    (x_fit, _), (x_val, y_val) = common.image_splits(
        "digits", None, 100, validation=True, max_train=500
    )
    # 500 images to train on, then the next 100 held out.
    np.testing.assert_array_equal(x_fit, x_train[:500])
    np.testing.assert_array_equal(x_val, x_train[500:600])
    np.testing.assert_array_equal(y_val, y_train[500:600])


def test_an_example_runs_as_a_script_from_another_folder(tmp_path):
    # Run as a script, the example finds its sibling modules (_common,
    # _charlm) wherever it is started from.
    script = EXAMPLES_DIR / "language_model_distillation.py"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--seq-len" in done.stdout and "--hidden-weight" in done.stdout
