"""Tests of examples/generative_distillation.py on a short slice of text."""

import math

import numpy as np
import pytest

import keras_kd as kd
from conftest import load_example, np_log_softmax
from keras_kd.backend import keras, tf

# 24,000 characters of pydoc_data.topics: 21,600 to train on, 2,400 held out
# (149 windows of 16). Prompts of up to 8 characters, continuations of 8.
_SEQ, _PROMPT, _CHARS, _SAMPLES = 16, 8, 20, 4
_TINY = (
    f"--max-chars 24000 --seq-len {_SEQ} --prompt-length {_PROMPT} --seeds 7 "
    "--teacher-blocks 2 --teacher-width 32 --teacher-heads 4 "
    "--student-blocks 1 --student-width 16 --student-heads 2 "
    "--teacher-epochs 1 --epochs 1 --steps-per-epoch 8 --batch-size 8 "
    f"--sample-chars {_CHARS} --num-samples {_SAMPLES} --draft-tokens 3"
).split()
_MODELS = ("teacher", "scratch", "teacher_forced", "sequence", "gkd", "reverse_kl")
_MODELS += ("gkd_init",)


def np_text(max_chars):
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))[:max_chars]


def np_ids(text, vocab):
    return np.array([vocab.find(c) + 1 for c in text], np.int32)


def np_logits(model, x):
    return np.asarray(model(np.asarray(x, np.int32), training=False), np.float64)


@pytest.fixture(scope="module")
def example():
    return load_example("generative_distillation")


@pytest.fixture(scope="module")
def results(example):
    return example.main(_TINY)


@pytest.fixture(scope="module")
def run(results):
    (run,) = results["per_seed"]
    return run


@pytest.fixture(scope="module")
def held_out_ids(results):
    return np_ids(np_text(24_000)[21_600:], results["vocab"])


def test_help_exits_cleanly(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--on-policy-fraction", "--prompt-length", "--validation"):
        assert flag in out


def test_results_cover_every_student_and_seed(results, run):
    assert results["seeds"] == [7] and run["seed"] == 7
    assert results["split"] == "held-out"
    assert (results["n_train_chars"], results["n_eval_chars"]) == (21_600, 2_400)
    for key in ("bits_per_char", "sample_bits_per_char", "distinct_4grams"):
        assert set(run[key]) == set(_MODELS)
        assert all(np.isfinite(v) for v in run[key].values())
    for key in ("acceptance_rate", "target_calls_per_token", "train_time_s"):
        assert set(run[key]) == set(_MODELS)
        assert set(results["mean"][key]) == set(_MODELS)
    assert set(run["models"]) == set(run["samples"]) == set(_MODELS)
    for key, values in results["mean"].items():  # one seed: its own figures
        for name, value in values.items():
            same = value == run[key][name]
            assert same or (math.isnan(value) and math.isnan(run[key][name]))
    assert set(results["bar"]) == {"gkd", "reverse_kl", "gkd_init"}
    assert set(run["sampled_steps"]) == {"gkd", "reverse_kl", "gkd_init"}
    assert sum(run["train_time_s"].values()) <= run["wall_time_s"]


def test_held_out_bpc_is_recomputed_from_the_models(results, run, held_out_ids):
    count = (len(held_out_ids) - 1) // _SEQ
    x = held_out_ids[: count * _SEQ].reshape(count, _SEQ)
    y = held_out_ids[1 : count * _SEQ + 1].reshape(count, _SEQ)
    for name, model in run["models"].items():
        log_p = np_log_softmax(np_logits(model, x))
        nats = -np.take_along_axis(log_p, y[..., None], -1).mean()
        assert run["bits_per_char"][name] == pytest.approx(nats / math.log(2), rel=1e-5)


def test_distinct_4grams_are_recomputed_from_the_samples(results, run):
    vocab = results["vocab"]
    for name, samples in run["samples"].items():
        assert samples.shape == (_SAMPLES, _CHARS)
        texts = [
            "".join("\ufffd" if i == 0 else vocab[i - 1] for i in row)
            for row in samples
        ]
        shares = [
            len({t[i : i + 4] for i in range(len(t) - 3)}) / (len(t) - 3) for t in texts
        ]
        assert run["distinct_4grams"][name] == pytest.approx(np.mean(shares))


def test_samples_continue_held_out_prompts_in_chunks(run, held_out_ids):
    starts = run["prompt_starts"]
    assert len(starts) == _SAMPLES and starts[0] == 0
    assert starts[-1] == len(held_out_ids) - _PROMPT - _CHARS
    prompts = held_out_ids[starts[:, None] + np.arange(_PROMPT)]
    new = _SEQ - _PROMPT
    # Each chunk: `new` characters after the last `_PROMPT` ones (seed 7 + 5000).
    model, samples = run["models"]["gkd"], run["samples"]["gkd"]
    text = prompts
    for k in range(2):
        out = kd.lm.generate(model, text[:, -_PROMPT:], new, seed=5007 + k, length=_SEQ)
        np.testing.assert_array_equal(
            out.ids.numpy()[:, _PROMPT:], samples[:, k * new : (k + 1) * new]
        )
        text = np.concatenate([text, samples[:, k * new : (k + 1) * new]], axis=1)


def test_teacher_bits_are_recomputed_character_by_character(run, held_out_ids):
    # Each written character, from the context it was written in: the prompt
    # of its chunk and the characters before it in the chunk (zero-padded
    # after: the teacher is causal).
    starts, new = run["prompt_starts"], _SEQ - _PROMPT
    prompts = held_out_ids[starts[:, None] + np.arange(_PROMPT)]
    teacher = run["models"]["teacher"]
    for name in ("teacher", "teacher_forced", "gkd"):
        text = np.concatenate([prompts, run["samples"][name]], axis=1)
        windows, targets, ends = [], [], []
        for row in text:
            for a in range(_PROMPT, _PROMPT + _CHARS):
                context = row[(a - _PROMPT) // new * new : a]
                windows.append(np.pad(context, (0, _SEQ - len(context))))
                targets.append(row[a])
                ends.append(len(context) - 1)
        log_p = np_log_softmax(np_logits(teacher, np.stack(windows)))
        picked = log_p[np.arange(len(targets)), ends, targets]
        expected = -picked.mean() / math.log(2)
        assert run["sample_bits_per_char"][name] == pytest.approx(expected, rel=1e-5)


def test_acceptance_rate_is_the_drafting_measurement(run, held_out_ids):
    from keras_kd.lm.drafting import speculative_generate

    assert math.isnan(run["acceptance_rate"]["teacher"])
    starts = run["prompt_starts"]
    prompts = held_out_ids[starts[:, None] + np.arange(_PROMPT)]
    for name in ("scratch", "gkd_init"):
        out = speculative_generate(
            run["models"][name],
            run["models"]["teacher"],
            prompts,
            max_new_tokens=_SEQ - _PROMPT,
            num_draft_tokens=3,
            seed=6007,
        )
        assert run["acceptance_rate"][name] == out.acceptance_rate
        assert 0.0 <= out.acceptance_rate <= 1.0
        assert 1 / 4 <= run["target_calls_per_token"][name] <= 1.0


def test_generation_share_and_sampled_steps(example, run):
    share = run["generation_share"]
    assert math.isnan(share["teacher"])
    assert share["scratch"] == share["teacher_forced"] == 0.0
    assert 0.0 < share["sequence"] < 1.0
    steps = example.sampled_steps(7, 0.5, 8)
    for name in ("gkd", "reverse_kl", "gkd_init"):
        assert run["sampled_steps"][name] == steps.sum()
        assert 0.0 <= share[name] < 1.0


def test_generation_seconds_compares_the_medians(example):
    sampled = np.array([True, False, True, False, False, True])
    times = [5.0, 1.0, 3.0, 1.5, 1.0, 3.0]  # medians 3 and 1
    assert example.generation_seconds(times, sampled) == pytest.approx(3 * 2.0)
    assert example.generation_seconds(times, np.zeros(6, bool)) == 0.0
    assert math.isnan(example.generation_seconds(times, np.ones(6, bool)))


def test_sampled_steps_are_those_the_distiller_samples(example):
    # A metric sees the labels of the batch a step trains on: the dataset's
    # (all 11 here) on teacher-forced steps; on sampling steps the student's
    # sequence shifted by one, whose last label is the padding id 0.
    charlm = example._charlm
    teacher = charlm.char_lm(12, 8, 1, 8, 2, prefix="t")
    student = charlm.char_lm(12, 8, 1, 8, 2, prefix="s")
    distiller = kd.lm.OnPolicyDistiller(
        teacher, student, on_policy_fraction=0.5, max_new_tokens=4, seed=3
    )

    def from_data(y_true, y_pred):
        return tf.reduce_mean(tf.cast(tf.equal(y_true, 11), "float32"))

    distiller.compile(
        optimizer="adam",
        distillation_loss=kd.losses.GeneralizedJSD(),
        metrics=[from_data],
        jit_compile=False,
    )
    means = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: means.append(float(logs["from_data"]))
    )
    x = np.random.default_rng(0).integers(1, 11, (40, 8)).astype("int32")
    weights = np.ones((40, 8), "float32")
    weights[:, :3] = 0.0  # prompts of 4
    distiller.fit(
        x,
        np.full((40, 8), 11, "int32"),
        sample_weight=weights,
        batch_size=4,
        shuffle=False,
        verbose=0,
        callbacks=[record],
    )
    k = np.arange(1, 11)
    per_step = k * np.array(means) - (k - 1) * np.concatenate([[0.0], means[:-1]])
    observed = per_step < 0.95  # 1 on the dataset's labels, <= 7/8 on samples
    np.testing.assert_array_equal(observed, example.sampled_steps(3, 0.5, 10))
    assert 0 < observed.sum() < 10


def test_sequence_level_data_keeps_prompts_and_weights_continuations(
    example, run, held_out_ids
):
    args = example.parse_args(_TINY)
    x = held_out_ids[: 6 * _SEQ].reshape(6, _SEQ)
    lengths = np.array([1, 3, 8, 8, 2, 5])
    ids, next_ids, weights = example.sequence_level_data(
        run["models"]["teacher"], x, lengths, args, seed=1
    )
    new = _SEQ - _PROMPT
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(ids[row, :length], x[row, :length])
        assert np.all(ids[row, length + new :] == 0)
        expected = np.zeros(_SEQ)
        expected[length - 1 : length - 1 + new] = 1.0
        np.testing.assert_array_equal(weights[row], expected)
    np.testing.assert_array_equal(next_ids[:, :-1], ids[:, 1:])


def test_students_share_architecture_and_initial_weights(results, run):
    initial = run["initial_weights"]
    for name in ("scratch", "teacher_forced", "sequence", "gkd", "reverse_kl"):
        weights = run["models"][name].get_weights()
        assert [w.shape for w in weights] == [w.shape for w in initial]
        assert any(not np.array_equal(w, i) for w, i in zip(weights, initial))
    init = run["models"]["gkd_init"]
    assert init.get_layer("s_embedding").get_weights()[0].shape[1] == 32
    assert run["init_block_map"] == {0: 0}
    sizes = results["models"]["GKD-init"]
    assert (sizes["blocks"], sizes["width"], sizes["heads"]) == (1, 32, 4)
    assert sizes["params"] == init.count_params()


def test_bar_counts_every_seed(example):
    def seed_run(tf_bits, gkd_bits):
        bits = {
            "teacher_forced": tf_bits,
            "gkd": gkd_bits,
            "reverse_kl": 9.0,
            "gkd_init": gkd_bits,
        }
        return {"sample_bits_per_char": bits}

    per_seed = [seed_run(2.0, 1.9), seed_run(2.0, 1.8), seed_run(2.0, 1.95)]
    held_out = {"teacher_forced": 2.5, "gkd": 2.55, "reverse_kl": 2.4, "gkd_init": 2.56}
    found = example.bar(per_seed, {"bits_per_char": held_out})
    assert found["gkd"] == {"wins": 3, "extra_bits": pytest.approx(0.05), "met": True}
    assert found["gkd_init"]["met"] is False  # 0.06 bits worse
    assert found["reverse_kl"]["wins"] == 0 and not found["reverse_kl"]["met"]
    per_seed[2]["sample_bits_per_char"]["gkd"] = 2.0  # a tie is no win
    assert example.bar(per_seed, {"bits_per_char": held_out})["gkd"]["wins"] == 2


def test_printed_table_matches_the_results(example, results, run, capsys):
    example.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    headers = {"teacher": "teacher", **example.STUDENTS}
    for label, figures in (("seed 7", run), ("mean", results["mean"])):
        for name, header in headers.items():
            prefix = f"{label} {header} "
            (row,) = [line for line in lines if line.startswith(prefix)]
            cells = row[len(prefix) :].split()
            expected = [
                "-"
                if math.isnan(figures[key][name])
                else form.format(figures[key][name])
                for key, _, form in example.FIGURES
            ]
            assert cells == expected, name
    for key, found in results["bar"].items():
        line = next(line for line in lines if line.startswith(f"bar, {headers[key]}:"))
        assert f"in {found['wins']}/1 seeds" in line
        assert f"{found['extra_bits']:+.4f}" in line
        assert line.endswith("not met") != found["met"]
    assert any(line.startswith("the bar is ") for line in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--prompt-length", "32"],
            "--prompt-length: must be less than --seq-len (32), got 32",
        ),
        (
            ["--on-policy-fraction", "1.5"],
            "--on-policy-fraction: must be in [0, 1], got 1.5",
        ),
        (["--beta", "-0.5"], "--beta: must be in [0, 1], got -0.5"),
        (["--sample-chars", "3"], "--sample-chars: must be >= 4"),
        (["--num-samples", "0"], "--num-samples: must be > 0, got 0"),
        (["--student-width", "31"], "must be a multiple of --student-heads (2)"),
    ],
)
def test_bad_arguments_are_rejected(example, capsys, args, message):
    with pytest.raises(SystemExit) as excinfo:
        example.main(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
