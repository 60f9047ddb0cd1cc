"""Tests of examples/language_model_distillation.py on a short slice of text."""

import math
import os

import numpy as np
import pytest

from conftest import load_example, np_log_softmax, run_litert, with_options

# 24,000 characters of pydoc_data.topics: 21,600 to train on, 2,400 held
# out (99 windows of 24). A 2-block teacher of width 32 (4 heads), a 1-block
# student of width 16 (2 heads): the student's block learns from the
# teacher's second.
_BASE = (
    "--max-chars 24000 --seq-len 24 --seeds 7 "
    "--teacher-blocks 2 --teacher-width 32 --teacher-heads 4 "
    "--student-blocks 1 --student-width 16 --student-heads 2 "
    "--teacher-epochs 2 --epochs 2 --steps-per-epoch 8 --batch-size 16"
).split()
_TINY = [
    *_BASE,
    *("--hidden-weight 0.1 --attention-weight 1 --sample-chars 30").split(),
    *("--num-verify 16 --latency-runs 0").split(),
]
_STUDENTS = ("scratch", "logits", "combined")


def np_text(max_chars):
    """The text, rebuilt here: pydoc_data.topics's values in sorted key order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))[:max_chars]


def np_windows(text, vocab, length):
    """Reference windows: ids (0 for an unknown character), non-overlapping."""
    ids = np.array([vocab.find(c) + 1 for c in text])
    n = (len(ids) - 1) // length
    x = np.stack([ids[k * length : (k + 1) * length] for k in range(n)])
    y = np.stack([ids[k * length + 1 : (k + 1) * length + 1] for k in range(n)])
    return x.astype(np.int32), y


def np_perplexity(logits, y):
    """Reference: exp of the mean cross-entropy of the next characters."""
    log_p = np_log_softmax(logits)
    picked = np.take_along_axis(log_p, y[..., None], axis=-1)
    return math.exp(-picked.mean())


@pytest.fixture(scope="module")
def example():
    return load_example("language_model_distillation")


@pytest.fixture(scope="module")
def charlm(example):
    """examples/_charlm.py (the text, windows and models), as the example
    imported it."""
    return example._charlm


@pytest.fixture(scope="module")
def results(example, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("lm")
    return example.main([*_TINY, "--out-dir", str(out_dir)])


@pytest.fixture(scope="module")
def held_out(results):
    text = np_text(24_000)
    return np_windows(text[21_600:], results["vocab"], 24)


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--validation", "--hidden-weight", "--steps-per-epoch"):
        assert flag in out


def test_results_cover_every_student(results):
    assert results["split"] == "held-out" and results["seeds"] == [7]
    assert results["n_text_chars"] == 24_000
    assert (results["n_train_chars"], results["n_eval_chars"]) == (21_600, 2_400)
    assert results["n_eval_windows"] == 2_399 // 24
    # The vocabulary: the training part's characters, sorted.
    assert results["vocab"] == "".join(sorted(set(np_text(21_600))))
    (run,) = results["per_seed"]
    for key in ("perplexity", "bits_per_char"):
        assert set(run[key]) == {"teacher", *_STUDENTS}
    assert set(run["train_time_s"]) == {"teacher", *_STUDENTS}
    assert sum(run["train_time_s"].values()) <= run["wall_time_s"]
    assert results["headers"] == {"logits": "logits", "combined": "combined"}
    assert results["combined_weights"] == [(0.1, 1.0)]
    assert results["layer_map"] == {0: 1}
    sizes = results["models"]
    assert sizes["teacher"]["params"] > 3 * sizes["student"]["params"]
    assert results["exported"] == "combined"
    assert results["config"]["seq_len"] == 24


def test_perplexity_is_recomputed_from_the_models(results, held_out):
    x, y = held_out
    (run,) = results["per_seed"]
    vocab_size = len(results["vocab"]) + 1
    for name, model in run["models"].items():
        logits = np.asarray(model.predict(x, verbose=0), np.float64)
        assert logits.shape == (len(x), 24, vocab_size)
        expected = np_perplexity(logits, y)
        assert run["perplexity"][name] == pytest.approx(expected, rel=1e-5)
        assert results["mean_perplexity"][name] == run["perplexity"][name]
        # Trained: better than a uniform guess over the vocabulary.
        assert 1.0 < run["perplexity"][name] < vocab_size, name


def test_bits_per_char_is_log2_of_perplexity(results):
    (run,) = results["per_seed"]
    for name, perplexity in run["perplexity"].items():
        assert run["bits_per_char"][name] == pytest.approx(math.log2(perplexity))
        assert results["mean_bits_per_char"][name] == run["bits_per_char"][name]
    scratch = run["bits_per_char"]["scratch"]
    for name in ("logits", "combined"):
        gain = results["gain_over_scratch"][name]
        assert gain == pytest.approx(scratch - run["bits_per_char"][name])
        assert results["wins_over_scratch"][name] == int(gain > 0)


def test_students_share_architecture_and_initial_weights(results):
    (run,) = results["per_seed"]
    initial = run["initial_weights"]
    for name in _STUDENTS:
        weights = run["models"][name].get_weights()
        assert [w.shape for w in weights] == [w.shape for w in initial]
        # Trained: no student still holds the shared initial weights.
        assert any(not np.array_equal(w, i) for w, i in zip(weights, initial))


def test_students_differ_only_by_their_terms(example, tmp_path):
    # With alpha=0 and feature weights of 0 a distiller trains on the next
    # characters alone: from the same initial weights and windows, such
    # students must end bit-identical to the scratch student. A hidden-state
    # weight of 0.5 must change the training.
    args = with_options(_BASE, alpha=0, teacher_epochs=1, epochs=1, out_dir=tmp_path)
    args += ["--hidden-weight", "0", "0.5", "--attention-weight", "0"]
    args += ["--no-export", "--sample-chars", "0"]
    results = example.main(args)
    assert results["export"] is None and results["sample"] is None
    students = results["per_seed"][0]["models"]
    assert set(students) == {
        *("teacher", "scratch", "logits", "combined_h0_a0", "combined_h0.5_a0")
    }

    def weights(name):
        return students[name].get_weights()

    for name in ("logits", "combined_h0_a0"):
        for a, b in zip(weights(name), weights("scratch"), strict=True):
            np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(weights("combined_h0.5_a0"), weights("scratch"))
    )


def test_combined_adapters_are_outside_the_student(results):
    (run,) = results["per_seed"]
    # One hidden-state term (student block 0 <- teacher block 1): a Dense
    # adapter from the student's width 16 to the teacher's 32. The attention
    # term averages heads: no adapter.
    (adapter,) = run["adapters"]["combined"]
    assert adapter.get_weights()[0].shape == (16, 32)
    student = run["models"]["combined"]
    student_variables = {id(v) for v in student.weights}
    assert not any(id(v) in student_variables for v in adapter.weights)
    assert adapter not in student.layers
    assert len(student.get_weights()) == len(run["initial_weights"])
    assert run["adapters"]["logits"] == []


def test_tflite_file_matches_the_keras_student(results, held_out):
    report = results["export"]
    assert report["quantization"] == "float32"
    assert report["num_verify_samples"] == 16
    assert report["max_abs_diff"] < 1e-4
    assert report["top1_agreement"] == 1.0
    assert os.path.getsize(report["path"]) == report["size_bytes"]
    # Independently: the file run on held-out windows against the student.
    x, _ = held_out
    student = results["per_seed"][0]["models"]["combined"]
    expected = np.asarray(student.predict(x, verbose=0), np.float64)
    actual, detail = run_litert(report["path"], x)
    assert detail["dtype"] == np.int32 and tuple(detail["shape"][1:]) == (24,)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_sample_is_drawn_from_the_exported_student(charlm, results):
    vocab, sample = results["vocab"], results["sample"]
    assert len(sample) == 30 and set(sample) <= set(vocab)
    assert results["prompt"] == np_text(24_000)[21_600 : 21_600 + 24]
    student = results["per_seed"][0]["models"]["combined"]
    prompt = [vocab.index(c) + 1 for c in results["prompt"]]
    again = charlm.sample_text(student, prompt, vocab, 30, 0.8, seed=7)
    assert again == sample
    # Greedy: each character the most likely one after the previous window.
    greedy = charlm.sample_text(student, prompt, vocab, 3, 0.0, seed=0)
    window = np.array([prompt], np.int32)
    for char in greedy:
        logits = np.asarray(student.predict(window, verbose=0))[0, -1]
        assert vocab[int(np.argmax(logits[1:]))] == char
        window = np.concatenate([window[:, 1:], [[vocab.index(char) + 1]]], axis=1)


def test_printed_table_shows_the_figures(example, results, capsys):
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("Held-out text: 2,400 characters (99 windows of 24)")
    (run,) = results["per_seed"]
    order = ("teacher", *_STUDENTS)
    headers = [line for line in lines if "scratch" in line and "combined" in line]
    assert [h.split() for h in headers] == [list(order)] * 2
    rows = [line for line in lines if line.startswith("seed 7")]
    assert [row.split()[2:] for row in rows] == [
        [f"{run['perplexity'][k]:.4f}" for k in order],
        [f"{run['bits_per_char'][k]:.4f}" for k in order],
    ]
    gains = results["gain_over_scratch"]
    gain_row = next(line for line in lines if line.startswith("vs scr."))
    assert gain_row.split()[2:] == [f"{gains[k]:+.4f}" for k in ("logits", "combined")]
    assert any(line.startswith("export (combined, seed 7)") for line in lines)
    assert repr(results["sample"]) in lines


def test_text_splits_and_windows(charlm):
    text = "abcdefghij" * 10
    train, evaluation, vocab_text = charlm.split_text(text)
    assert (train, evaluation, vocab_text) == (text[:90], text[90:], text[:90])
    train, evaluation, vocab_text = charlm.split_text(text, validation=True)
    assert (train, evaluation, vocab_text) == (text[:81], text[81:90], text[:90])
    vocab = charlm.build_vocab("cab")
    ids = charlm.encode("abcz", vocab)
    np.testing.assert_array_equal(ids, [1, 2, 3, charlm.UNKNOWN])
    assert charlm.decode(ids, vocab) == "abc\ufffd"
    x, y = charlm.eval_windows(np.arange(11), 3)
    np.testing.assert_array_equal(x, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(y, x + 1)
    x, y = charlm.train_windows(np.arange(50), 5, 20, np.random.default_rng(0))
    assert x.shape == y.shape == (20, 5)
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--student-width", "31"], "must be a multiple of --student-heads (2)"),
        (["--student-blocks", "5"], "at most --teacher-blocks (4), got 5"),
        (["--alpha", "1.5"], "--alpha: must be in [0, 1], got 1.5"),
        (["--hidden-weight", "-1"], "--hidden-weight: must be >= 0, got -1"),
        (["--attention-weight", "1", "1"], "each weight once, got 1 1"),
        (["--steps-per-epoch", "0"], "--steps-per-epoch: must be > 0, got 0"),
    ],
)
def test_bad_arguments_are_rejected(example, capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        example.main(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
