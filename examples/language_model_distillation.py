"""Distil a character-level transformer language model.

A small causal transformer learns to predict the next character of English
text, first on its own, then from a larger transformer trained on the same
text: from its next-character distributions (Hinton et al.'s KD, token by
token), and also from its hidden states and attention maps, layer by layer
(TinyBERT, Jiao et al. 2020; MiniLM, Wang et al. 2020). The distilled
student is then shipped as a `.tflite` file and writes a few lines.

Every student starts from the same initial weights and sees the same
batches, with the same optimizer and number of steps:

1. `scratch`: the student trained on the next characters alone (a plain
   `fit`);
2. `logits`: `kd.Distiller(teacher, student)` with
   `kd.losses.KLDivergence(temperature=T)` over the `(batch, time,
   vocabulary)` logits, `alpha` weighting it against the hard loss;
3. `combined`: the same logits term, plus hidden states and attention maps
   from `kd.taps.layer_map` (student block `i` learns from teacher block
   `2i + 1`, TinyBERT's uniform map):
   `kd.FeatureMatch("t_block{2i+1}", "s_block{i}", loss="mse")` on the
   residual stream after each block (the widths differ, so keras-kd learns a
   `Dense` adapter from the student's width to the teacher's, in
   `Distiller.adapters`, never part of the student), and
   `kd.FeatureMatch(("t_mha{2i+1}", 1), ("s_mha{i}", 1),
   loss="attention_map")` on the causal attention probabilities, each
   model's heads averaged first (the head counts differ), compared row by
   row with a KL divergence.

The loss of the distilled students is `alpha * KL + (1 - alpha) * hard +
sum_i weight_i * feature_i`.

**Data.** The text of `pydoc_data.topics` (Python's own help pages, shipped
with every Python: `from pydoc_data.topics import topics`, the values joined
in sorted key order, about 465,000 characters of English prose and code).
The last 10% is held out and never trained on; perplexity and bits per
character are measured on it, every held-out character predicted once
(non-overlapping windows of `--seq-len` characters, each window's first
character predicted from nothing before it). The vocabulary is the set of
characters of the training part plus one id (0) for any other character.
Training windows of `--seq-len + 1` characters start at random positions of
the training part (a seeded numpy draw, the same for every student).

**Models (defaults).** Pre-LayerNorm transformers built with the Functional
API from Keras layers: a token `Embedding` plus a learned position
embedding, then blocks of `LayerNormalization`, `MultiHeadAttention(...,
use_causal_mask=True)` called with `return_attention_scores=True` (layer
`{prefix}_mha{i}`, whose output 1 a tap reads), a residual sum,
`LayerNormalization` and a GELU feed-forward of 4x the width, and a
residual sum (layer `{prefix}_block{i}`, the hidden state a tap reads);
then a final `LayerNormalization` and a `Dense` layer of logits. Teacher: 4
blocks of width 128 with 4 heads and dropout 0.1 (about 0.8 M parameters);
student: 2 blocks of width 64 with 2 heads (about 0.1 M parameters).
Windows of 64 characters, batches of 32; the teacher trains for 8 epochs of
150 steps, every student for 5 epochs of 150 steps, Adam with a linear
warm-up over the first 5% of the steps to 2e-3 and a cosine decay to 0.
KD at T=1 with alpha=0.5 (the library's default). One seed takes about
3 to 5 minutes on two CPU cores. Larger runs: `--steps-per-epoch`, `--epochs`,
`--teacher-epochs`, the widths and `--seq-len`.

**Choosing the feature weights.** On a validation slice of the training
text, never on the held-out 10%: `--validation` trains on the first 90% of
the training part and measures on its last 10% (characters 81% to 90% of
the text), and `--hidden-weight` / `--attention-weight` take several
values, one combined student per pair (a weight of 0 leaves that term
out), e.g.

```
python examples/language_model_distillation.py --validation --seeds 0 1 \\
    --hidden-weight 0 0.03 0.1 0.3 --attention-weight 0 0.3 1 3
```

then finer grids around the best. Mean validation bits per character over
seeds 0 and 1, every other setting at its default (teacher 2.0150, scratch
2.5656, logits alone 2.4290; a row is a hidden-state weight, a column an
attention weight):

```
hidden \\ attention       0    0.01    0.03     0.1     0.3       1       3
0                   2.4290  2.3284  2.2946  2.3071  2.3376  2.4095  2.5097
0.01                        2.3387  2.3062  2.3124  2.3400
0.03                2.4005                  2.3230  2.3501  2.4157  2.5057
0.1                 2.3915                          2.3581  2.4305  2.5267
0.3                 2.3904                          2.3864  2.4471  2.5508
```

Each term helps on its own (attention maps most, at a small weight: the
student's 2 heads are averaged against the teacher's 4, and a large weight
drowns the next-character objective), but they do not add up: with the
attention term at its best weight, 0.03, any hidden-state term made the
student slightly worse (0.01: +0.012 bits). The defaults are the best pair
with both terms, hidden 0.01 and attention 0.03; `--hidden-weight 0` is
the better recipe on this validation slice. Differences under about 0.01
bits are within the spread between the two seeds.

**Export and sample.** The combined student of the first seed is converted
to a float32 `.tflite` file with a fixed sequence length
(`kd.export.to_tflite(student, path, verify_data=held-out windows)`, which
runs the file in the LiteRT interpreter against the Keras model before
writing it); its report is printed. Then the Keras student continues the
first `--seq-len` characters of the held-out text for `--sample-chars`
characters, sampling each at temperature `--sample-temperature` with a
seeded RNG (0: greedy).

Usage:

```
python examples/language_model_distillation.py               # 3 seeds
python examples/language_model_distillation.py --seeds 0 \\
    --steps-per-epoch 600 --teacher-epochs 10 --epochs 10    # longer
python examples/language_model_distillation.py --validation \\
    --hidden-weight 0.3 1 --attention-weight 0 1             # weights
```
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _common, _charlm

import argparse
import math
import time

import _charlm
import _common
import keras_kd as kd
from keras_kd.backend import keras


def _optimizer(args, epochs: int):
    """Adam: a linear warm-up over 5% of the steps, then a cosine decay to 0."""
    return _charlm.warmup_cosine_adam(args.learning_rate, epochs * args.steps_per_epoch)


def combined_weights(args) -> list:
    """`(hidden weight, attention weight)` of each combined student."""
    return [(h, a) for h in args.hidden_weight for a in args.attention_weight]


def students(args) -> dict:
    """The students after `scratch`: `{key: (header, weights or None)}`.

    `logits` has no feature term (None); one pair of weights gives the
    `combined` student, several give `combined_h{h}_a{a}` (header
    `h{h},a{a}`).
    """
    runs = {"logits": ("logits", None)}
    pairs = combined_weights(args)
    for hidden, attention in pairs:
        if len(pairs) == 1:
            runs["combined"] = ("combined", (hidden, attention))
        else:
            key = f"combined_h{hidden:g}_a{attention:g}"
            runs[key] = (f"h{hidden:g},a{attention:g}", (hidden, attention))
    return runs


def feature_matches(args, hidden: float, attention: float) -> list:
    """The combined student's `FeatureMatch`es (a weight of 0: no term)."""
    teacher_blocks = range(args.teacher_blocks)
    student_blocks = range(args.student_blocks)
    matches = []
    if hidden:
        matches += kd.taps.layer_map(
            [f"t_block{j}" for j in teacher_blocks],
            [f"s_block{i}" for i in student_blocks],
            loss="mse",
            weight=hidden,
        )
    if attention:
        matches += kd.taps.layer_map(
            [(f"t_mha{j}", 1) for j in teacher_blocks],
            [(f"s_mha{i}", 1) for i in student_blocks],
            loss="attention_map",
            weight=attention,
        )
    return matches


def train_teacher(seed: int, data: dict, args, vocab_size: int):
    """The teacher, on windows of its own (drawn with `seed + 500`)."""
    keras.utils.set_random_seed(seed)
    teacher = _charlm.build(
        args, "teacher", vocab_size, name="teacher", dropout=args.dropout
    )
    teacher.compile(
        optimizer=_optimizer(args, args.teacher_epochs), loss=_common.hard_loss()
    )
    x, y = _charlm.epoch_windows(
        data["train_ids"], args, args.teacher_epochs, seed + 500
    )
    _charlm.fit_epochs(teacher, x, y, args.batch_size, _common.fit_verbosity(args))
    return teacher


def train_students(seed: int, teacher, data: dict, args, times: dict):
    """Every student, from the same initial weights on the same windows.

    Returns:
        `(initial_weights, trained, adapters)`: the students' initial
        weights, `{key: student}` and `{key: its Distiller's adapters}`.
    """
    vocab_size = len(data["vocab"]) + 1
    verbose = _common.fit_verbosity(args)

    def student(name):
        return _charlm.build(args, "student", vocab_size, name=name)

    # Every student starts from these weights and sees these windows.
    keras.utils.set_random_seed(seed + 1000)
    initial_weights = student("student").get_weights()
    x, y = _charlm.epoch_windows(data["train_ids"], args, args.epochs, seed + 2000)

    def train(run, trainer):
        keras.utils.set_random_seed(seed + 3000)
        with _common.timed(times, run):
            _charlm.fit_epochs(trainer, x, y, args.batch_size, verbose)

    scratch = student("scratch_student")
    scratch.set_weights(initial_weights)
    scratch.compile(optimizer=_optimizer(args, args.epochs), loss=_common.hard_loss())
    train("scratch", scratch)
    trained, adapters = {"scratch": scratch}, {}
    for run, (_, weights) in students(args).items():
        model = student(f"{run}_student")
        model.set_weights(initial_weights)
        # Seeded before the Distiller creates its adapters: their initial
        # weights depend on the seed, not on the runs before.
        keras.utils.set_random_seed(seed + 3000)
        distiller = kd.Distiller(
            teacher,
            model,
            features=[] if weights is None else feature_matches(args, *weights),
        )
        distiller.compile(
            optimizer=_optimizer(args, args.epochs),
            loss=_common.hard_loss(),
            distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
            alpha=args.alpha,
        )
        train(run, distiller)
        trained[run] = model
        adapters[run] = list(distiller.adapters)
    return initial_weights, trained, adapters


def run_seed(seed: int, data: dict, args) -> dict:
    """Trains the teacher and every student for one seed and evaluates them."""
    x_eval, y_eval = data["eval"]
    times = {}
    start = time.perf_counter()
    with _common.timed(times, "teacher"):
        teacher = train_teacher(seed, data, args, len(data["vocab"]) + 1)
    initial_weights, students_, adapters = train_students(
        seed, teacher, data, args, times
    )
    trained = {"teacher": teacher, **students_}
    nll = {
        name: _charlm.log_likelihood(m, x_eval, y_eval) for name, m in trained.items()
    }
    return {
        "seed": seed,
        "perplexity": {name: math.exp(v) for name, v in nll.items()},
        "bits_per_char": {name: v / math.log(2) for name, v in nll.items()},
        "train_time_s": times,
        "wall_time_s": time.perf_counter() - start,
        "initial_weights": initial_weights,
        "models": trained,
        "adapters": adapters,
    }


def columns(results) -> list:
    """`(key, header)` of the table's columns, in order."""
    runs = [("teacher", "teacher"), ("scratch", "scratch")]
    return runs + list(results["headers"].items())


def _print_setup(results: dict) -> None:
    config, models = results["config"], results["models"]
    t, s = models["teacher"], models["student"]
    print(
        f"{results['split'].capitalize()} text: {results['n_eval_chars']:,} characters "
        f"({results['n_eval_windows']:,} windows of {config['seq_len']}) after "
        f"training on {results['n_train_chars']:,} (pydoc_data.topics, "
        f"vocabulary {len(results['vocab'])} + unknown); seeds "
        f"{_common.seeds_text(results['seeds'])}"
    )
    print(
        f"teacher: {t['blocks']} blocks, width {t['width']}, {t['heads']} heads, "
        f"{t['params']:,} parameters, {config['teacher_epochs']} epochs; student: "
        f"{s['blocks']} blocks, width {s['width']}, {s['heads']} heads, "
        f"{s['params']:,} parameters, {config['epochs']} epochs; "
        f"{config['steps_per_epoch']} steps of {config['batch_size']} windows an epoch"
    )


def print_results(results: dict) -> None:
    """Prints perplexity and bits per character per seed, their means and
    the gains over scratch, then the export report and the sample."""
    cols = columns(results)
    keys = [key for key, _ in cols]
    table = _common.Table([header for _, header in cols], 9, 10, 2)
    config, per_seed = results["config"], results["per_seed"]
    print()
    _print_setup(results)
    number = "{:.4f}".format
    for title, key in (
        ("perplexity", "perplexity"),
        ("bits per character", "bits_per_char"),
    ):
        print(f"{title} (lower is better)")
        mean = results[f"mean_{key}"]
        _common.print_seed_rows(table, keys, per_seed, key, mean, number)
    gains, wins = results["gain_over_scratch"], results["wins_over_scratch"]
    _common.print_vs_scratch(table, keys, gains, wins, len(per_seed), "{:+.4f}".format)
    print(
        "vs scr.: mean bits per character saved over the scratch student "
        "(positive: better); wins: seeds where the student beat it."
    )
    pairs = ", ".join(
        f"hidden {h:g} / attention {a:g}" for h, a in results["combined_weights"]
    )
    layer_pairs = ", ".join(f"{i}<-{j}" for i, j in results["layer_map"].items())
    print(
        f"logits: KLDivergence(T={config['temperature']:g}), alpha="
        f"{config['alpha']:g}; combined: logits + weight * MSE(Dense adapter("
        "s_block{i}), t_block{j}) + weight * AttentionMapLoss(s_mha{i}, t_mha{j}, "
        f"KL, heads averaged), student block i <- teacher block j: {layer_pairs}; "
        f"weights: {pairs}."
    )
    _charlm.print_export_and_sample(results)
    _common.print_wall_time(results)


def _build_parser() -> argparse.ArgumentParser:
    parser = _common.parser(
        "Character-level language-model distillation on the text of "
        "pydoc_data.topics: a small causal transformer from scratch, with KD on "
        "its (batch, time, vocabulary) logits, and with hidden states and "
        "attention maps too; the distilled student exported to .tflite."
    )
    _common.add_seeds(parser)
    _common.add_validation(
        parser,
        "measure on the last 10%% of the training part instead of the "
        "held-out text; use this to choose the feature weights",
    )
    _charlm.add_model_options(parser)
    _charlm.add_training_options(parser)
    add = parser.add_argument
    add(
        "--temperature",
        type=_common.positive(float),
        default=1.0,
        help="temperature of the KL term of every distilled student",
    )
    _common.add_alpha(
        parser, 0.5, "weight of the KL term (1 - alpha weights the next characters)"
    )
    weight = _common.non_negative(float)
    add(
        "--hidden-weight",
        type=weight,
        nargs="+",
        default=[0.01],
        help="weight of the hidden-state MSE terms of the combined student; "
        "several values: one combined student per (hidden, attention) pair",
    )
    add(
        "--attention-weight",
        type=weight,
        nargs="+",
        default=[0.03],
        help="weight of the attention-map terms of the combined student",
    )
    _charlm.add_export_options(
        parser, os.path.join("runs", "language_model_distillation")
    )
    _common.add_verbose(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = _build_parser()
    args = parser.parse_args(argv)
    _charlm.check_model_options(parser, args)
    _common.check_fraction(parser, args, "alpha")
    _common.check_distinct(parser, args, "hidden_weight", "attention_weight")
    return args


def _export_and_sample(per_seed: list, data: dict, args) -> dict:
    """The exported student's key, its export report and its sample."""
    names = list(per_seed[0]["perplexity"])
    distilled = [name for name in names if name not in ("teacher", "scratch")]
    exported = "combined" if "combined" in names else distilled[-1]
    first = per_seed[0]["models"][exported]
    export = None if args.no_export else _charlm.export_student(first, data, args)
    prompt_ids = data["eval_ids"][: args.seq_len]
    sample = None
    if args.sample_chars:
        sample = _charlm.sample_text(
            first,
            prompt_ids,
            data["vocab"],
            args.sample_chars,
            args.sample_temperature,
            seed=args.seeds[0],
        )
    return {
        "exported": exported,
        "export": export,
        "prompt": _charlm.decode(prompt_ids, data["vocab"]),
        "sample": sample,
    }


def main(argv=None) -> dict:
    """Runs the experiment and returns its results.

    Args:
        argv: command-line arguments (None: `sys.argv[1:]`).

    Returns:
        A dict with `per_seed` (one entry per seed: `perplexity` and
        `bits_per_char` of the `teacher`, `scratch`, `logits` and
        `combined` students (or `combined_h{h}_a{a}` for several weights),
        on the evaluation text; timings; the students' `initial_weights`;
        the trained `models`; and `adapters`, each distilled student's
        `Distiller.adapters`), `mean_perplexity`, `mean_bits_per_char`,
        `gain_over_scratch` (mean bits per character saved) and
        `wins_over_scratch` per distilled student, `headers`,
        `combined_weights`, `layer_map` (`{student block: teacher block}`),
        `models` (sizes), `vocab` (the characters; id
        `i + 1` is `vocab[i]`, 0 is unknown), `n_text_chars`,
        `n_train_chars`, `n_eval_chars`, `n_eval_windows`, `split`,
        `exported` (the exported student's key), `export` (the
        `ExportReport` as a dict, None with `--no-export`), `prompt` and
        `sample` (None with `--sample-chars 0`), `wall_time_s` and `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    data = _charlm.load_data(args.max_chars, args.seq_len, args.validation)
    x_eval, _ = data["eval"]
    if len(x_eval) == 0:
        raise ValueError(
            f"The evaluation text ({data['n_eval_chars']} characters) is shorter "
            f"than one window of --seq-len {args.seq_len} + 1; use more text "
            "(--max-chars) or shorter windows."
        )
    per_seed = _common.run_seeds(
        args, lambda s: run_seed(s, data, args), "bits_per_char"
    )
    mean_bpc = _common.mean_over_seeds(per_seed, "bits_per_char")
    distilled = [name for name in mean_bpc if name not in ("teacher", "scratch")]
    exported = _export_and_sample(per_seed, data, args)
    results = {
        "split": "validation" if args.validation else "held-out",
        "vocab": data["vocab"],
        **{key: data[key] for key in ("n_text_chars", "n_train_chars", "n_eval_chars")},
        "n_eval_windows": int(len(x_eval)),
        "seeds": list(args.seeds),
        "per_seed": per_seed,
        "mean_perplexity": _common.mean_over_seeds(per_seed, "perplexity"),
        "mean_bits_per_char": mean_bpc,
        "gain_over_scratch": {
            name: mean_bpc["scratch"] - mean_bpc[name] for name in distilled
        },
        "wins_over_scratch": _common.wins_over(
            per_seed, "bits_per_char", distilled, lower_is_better=True
        ),
        "headers": {name: header for name, (header, _) in students(args).items()},
        "combined_weights": combined_weights(args),
        "layer_map": kd.taps.uniform_map(args.student_blocks, args.teacher_blocks),
        "models": _charlm.model_summary(args, len(data["vocab"]) + 1),
        **exported,
        "wall_time_s": time.perf_counter() - start,
        "config": _common.config(args),
    }
    print_results(results)
    return results


if __name__ == "__main__":
    main()
