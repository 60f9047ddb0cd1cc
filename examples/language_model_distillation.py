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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import inspect
import math
import time

import numpy as np

import keras_kd as kd
from keras_kd.backend import keras

# The share of the text held out at its end (the test split), and the share
# of the remaining training part held out further by `--validation`.
_HELD_OUT = 0.1
# The id of characters outside the vocabulary.
UNKNOWN = 0


def load_text(max_chars: int | None = None) -> str:
    """The text of `pydoc_data.topics`, its values joined in sorted key order.

    Args:
        max_chars: keep only the first `max_chars` characters (None: all).

    Returns:
        The text, a `str` of about 465,000 characters.
    """
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    return text if max_chars is None else text[:max_chars]


def split_text(text: str, validation: bool = False):
    """The training text, the evaluation text and the vocabulary's source.

    The last `_HELD_OUT` (10%) of `text` is the held-out text. With
    `validation`, the last 10% of the rest is the evaluation text instead,
    and the held-out text is not used at all.

    Returns:
        `(train_text, eval_text, vocab_text)`: `vocab_text` is the whole
        training part (before any validation split), whose characters make
        the vocabulary, so that both splits give models of the same shapes.
    """
    train = text[: int(len(text) * (1.0 - _HELD_OUT))]
    if not validation:
        return train, text[len(train) :], train
    cut = int(len(train) * (1.0 - _HELD_OUT))
    return train[:cut], train[cut:], train


def build_vocab(text: str) -> str:
    """The sorted characters of `text`: character `vocab[i]` has id `i + 1`."""
    return "".join(sorted(set(text)))


def encode(text: str, vocab: str) -> np.ndarray:
    """Character ids (int32); characters outside `vocab` get `UNKNOWN` (0)."""
    ids = {char: i + 1 for i, char in enumerate(vocab)}
    return np.array([ids.get(char, UNKNOWN) for char in text], dtype=np.int32)


def decode(ids, vocab: str) -> str:
    """The inverse of `encode`; `UNKNOWN` becomes U+FFFD."""
    return "".join(vocab[i - 1] if i != UNKNOWN else "\ufffd" for i in ids)


def eval_windows(ids: np.ndarray, length: int):
    """Non-overlapping windows: `x[k] = ids[kL : kL + L]`, `y` shifted by one.

    Every character but the first is a target exactly once (the remainder
    shorter than a window is left out).
    """
    count = (len(ids) - 1) // length
    x = ids[: count * length].reshape(count, length)
    y = ids[1 : count * length + 1].reshape(count, length)
    return x, y


def train_windows(ids: np.ndarray, length: int, count: int, rng):
    """`count` windows starting at random positions: inputs and next ids."""
    starts = rng.integers(0, len(ids) - length, size=count)
    index = starts[:, None] + np.arange(length + 1)[None, :]
    windows = ids[index]
    return windows[:, :-1], windows[:, 1:]


@keras.saving.register_keras_serializable(package="keras_kd_examples")
class PositionEmbedding(keras.layers.Layer):
    """A learned embedding of each position, added to the token embeddings."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            name="positions",
            shape=(int(input_shape[-2]), int(input_shape[-1])),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        super().build(input_shape)

    def call(self, inputs):
        return inputs + self.positions


def _check_attention_api():
    """`MultiHeadAttention` must take `use_causal_mask` and
    `return_attention_scores` (Keras 3 and tf_keras 2.21 both do)."""
    parameters = inspect.signature(keras.layers.MultiHeadAttention.call).parameters
    missing = [
        p for p in ("use_causal_mask", "return_attention_scores") if p not in parameters
    ]
    if missing:
        raise RuntimeError(
            "This example needs keras.layers.MultiHeadAttention.call to take "
            f"{' and '.join(missing)} (Keras >= 2.10 or Keras 3); upgrade Keras."
        )


def char_lm(
    vocab_size: int,
    length: int,
    blocks: int,
    width: int,
    heads: int,
    dropout: float = 0.0,
    prefix: str = "s",
    name: str | None = None,
):
    """A causal pre-LayerNorm transformer over character ids.

    Args:
        vocab_size: number of ids (the vocabulary plus `UNKNOWN`).
        length: the fixed sequence length.
        blocks: transformer blocks.
        width: the model's width (a multiple of `heads`).
        heads: attention heads per block.
        dropout: dropout rate of the attention probabilities and of each
            block's two residual branches (0: none).
        prefix: prefix of the tapped layers' names: block `i` (from 0) has
            its attention in `f"{prefix}_mha{i}"` (output 1: its scores,
            `(batch, heads, length, length)`) and its output, the residual
            stream, in `f"{prefix}_block{i}"` (`(batch, length, width)`).
        name: the model's name.

    Returns:
        A Functional `keras.Model` mapping `(batch, length)` int32 ids to
        `(batch, length, vocab_size)` next-character logits.
    """
    _check_attention_api()
    tokens = keras.Input((length,), dtype="int32", name=f"{prefix}_tokens")
    h = keras.layers.Embedding(vocab_size, width, name=f"{prefix}_embedding")(tokens)
    h = PositionEmbedding(name=f"{prefix}_positions")(h)
    for i in range(blocks):
        a = keras.layers.LayerNormalization(name=f"{prefix}_ln_attention{i}")(h)
        a, _ = keras.layers.MultiHeadAttention(
            heads, width // heads, dropout=dropout, name=f"{prefix}_mha{i}"
        )(a, a, use_causal_mask=True, return_attention_scores=True)
        if dropout:
            a = keras.layers.Dropout(dropout)(a)
        h = keras.layers.Add(name=f"{prefix}_attention_residual{i}")([h, a])
        f = keras.layers.LayerNormalization(name=f"{prefix}_ln_ff{i}")(h)
        f = keras.layers.Dense(4 * width, activation="gelu", name=f"{prefix}_ff_in{i}")(
            f
        )
        f = keras.layers.Dense(width, name=f"{prefix}_ff_out{i}")(f)
        if dropout:
            f = keras.layers.Dropout(dropout)(f)
        h = keras.layers.Add(name=f"{prefix}_block{i}")([h, f])
    h = keras.layers.LayerNormalization(name=f"{prefix}_ln_final")(h)
    logits = keras.layers.Dense(vocab_size, name=f"{prefix}_logits")(h)
    return keras.Model(tokens, logits, name=name)


def log_likelihood(model, x, y, batch_size: int = 256) -> float:
    """The mean natural-log cross-entropy of `model` on windows `(x, y)`."""
    # Called batch by batch (not `predict`): no predict function traced per model.
    logits = np.concatenate(
        [
            np.asarray(model(x[i : i + batch_size], training=False), np.float64)
            for i in range(0, len(x), batch_size)
        ]
    )
    top = logits.max(axis=-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))
    picked = np.take_along_axis(logits, y[..., None].astype(np.int64), -1)[..., 0]
    return float(np.mean(log_z - picked))


def sample_text(
    model, prompt_ids, vocab: str, num_chars: int, temperature: float, seed: int
) -> str:
    """Continues `prompt_ids` (a full window) for `num_chars` characters.

    Each character is drawn from the model's distribution at the last
    position of the latest window, divided by `temperature` (0: the most
    likely character), with `numpy.random.default_rng(seed)`; `UNKNOWN` is
    never drawn.
    """
    rng = np.random.default_rng(seed)
    window = np.array(prompt_ids, dtype=np.int32)[None, :]
    drawn = []
    for _ in range(num_chars):
        logits = np.asarray(model(window, training=False), np.float64)[0, -1]
        logits[UNKNOWN] = -np.inf
        if temperature == 0:
            char = int(np.argmax(logits))
        else:
            z = logits / temperature
            p = np.exp(z - z.max())
            char = int(rng.choice(len(p), p=p / p.sum()))
        drawn.append(char)
        window = np.concatenate([window[:, 1:], [[char]]], axis=1).astype(np.int32)
    return decode(drawn, vocab)


def _optimizer(args, epochs: int):
    """Adam: a linear warm-up over 5% of the steps, then a cosine decay to 0."""
    steps = epochs * args.steps_per_epoch
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, steps - warmup),
        warmup_target=args.learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(schedule, clipnorm=1.0)


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


def _fit(trainer, x, y, args, verbose):
    """One `fit` per epoch on that epoch's windows, in order."""
    for epoch, (x_epoch, y_epoch) in enumerate(zip(x, y)):
        trainer.fit(
            x_epoch,
            y_epoch,
            batch_size=args.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=verbose,
        )


def _schedule(train_ids, args, epochs: int, seed: int):
    """The windows of every epoch: arrays `(epochs, steps * batch, length)`."""
    rng = np.random.default_rng(seed)
    count = args.steps_per_epoch * args.batch_size
    pairs = [train_windows(train_ids, args.seq_len, count, rng) for _ in range(epochs)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def run_seed(seed: int, data: dict, args) -> dict:
    """Trains the teacher and every student for one seed and evaluates them."""
    vocab_size = len(data["vocab"]) + 1
    x_eval, y_eval = data["eval"]
    hard_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    verbose = 2 if args.verbose else 0
    times = {}
    start = time.perf_counter()

    keras.utils.set_random_seed(seed)
    teacher = char_lm(
        vocab_size,
        args.seq_len,
        args.teacher_blocks,
        args.teacher_width,
        args.teacher_heads,
        dropout=args.dropout,
        prefix="t",
        name="teacher",
    )
    teacher.compile(optimizer=_optimizer(args, args.teacher_epochs), loss=hard_loss)
    _fit(
        teacher,
        *_schedule(data["train_ids"], args, args.teacher_epochs, seed + 500),
        args,
        verbose,
    )
    times["teacher"] = time.perf_counter() - start

    def student(name):
        return char_lm(
            vocab_size,
            args.seq_len,
            args.student_blocks,
            args.student_width,
            args.student_heads,
            prefix="s",
            name=name,
        )

    # Every student starts from these weights and sees these windows.
    keras.utils.set_random_seed(seed + 1000)
    initial_weights = student("student").get_weights()
    x_train, y_train = _schedule(data["train_ids"], args, args.epochs, seed + 2000)

    def train(run, trainer):
        keras.utils.set_random_seed(seed + 3000)
        begin = time.perf_counter()
        _fit(trainer, x_train, y_train, args, verbose)
        times[run] = time.perf_counter() - begin

    scratch = student("scratch_student")
    scratch.set_weights(initial_weights)
    scratch.compile(optimizer=_optimizer(args, args.epochs), loss=hard_loss)
    train("scratch", scratch)
    trained = {"teacher": teacher, "scratch": scratch}
    adapters = {}
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
            loss=hard_loss,
            distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
            alpha=args.alpha,
        )
        train(run, distiller)
        trained[run] = model
        adapters[run] = list(distiller.adapters)

    nll = {name: log_likelihood(m, x_eval, y_eval) for name, m in trained.items()}
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


def load_data(args) -> dict:
    """Text, vocabulary, training ids and evaluation windows for `args`."""
    text = load_text(args.max_chars)
    train_text, eval_text, vocab_text = split_text(text, args.validation)
    vocab = build_vocab(vocab_text)
    eval_ids = encode(eval_text, vocab)
    return {
        "vocab": vocab,
        "n_text_chars": len(text),
        "n_train_chars": len(train_text),
        "n_eval_chars": len(eval_text),
        "train_ids": encode(train_text, vocab),
        "eval_ids": eval_ids,
        "eval": eval_windows(eval_ids, args.seq_len),
    }


def _model_summary(args, vocab_size: int) -> dict:
    summary = {}
    for side, prefix in (("teacher", "t"), ("student", "s")):
        blocks, width, heads = (
            getattr(args, f"{side}_{what}") for what in ("blocks", "width", "heads")
        )
        model = char_lm(vocab_size, args.seq_len, blocks, width, heads, prefix=prefix)
        summary[side] = {
            "blocks": blocks,
            "width": width,
            "heads": heads,
            "params": int(model.count_params()),
        }
    return summary


def export_student(model, data: dict, args) -> dict:
    """Writes `model` as a float32 `.tflite` file, verified; prints the report."""
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "char_lm_student.tflite")
    x_eval, _ = data["eval"]
    report = kd.export.to_tflite(
        model,
        path,
        verify_data=x_eval[: args.num_verify],
        num_verify_samples=args.num_verify,
        latency_runs=args.latency_runs,
    )
    return report.to_dict()


def columns(results) -> list:
    """`(key, header)` of the table's columns, in order."""
    runs = [("teacher", "teacher"), ("scratch", "scratch")]
    return runs + list(results["headers"].items())


def print_results(results: dict) -> None:
    """Prints perplexity and bits per character per seed, their means and
    the gains over scratch, then the export report and the sample."""
    cols = columns(results)
    widths = [max(10, len(header) + 2) for _, header in cols]
    config, models = results["config"], results["models"]
    t, s = models["teacher"], models["student"]
    print()
    print(
        f"{results['split'].capitalize()} text: {results['n_eval_chars']:,} characters "
        f"({results['n_eval_windows']:,} windows of {config['seq_len']}) after "
        f"training on {results['n_train_chars']:,} (pydoc_data.topics, "
        f"vocabulary {len(results['vocab'])} + unknown); seeds "
        f"{' '.join(map(str, results['seeds']))}"
    )
    print(
        f"teacher: {t['blocks']} blocks, width {t['width']}, {t['heads']} heads, "
        f"{t['params']:,} parameters, {config['teacher_epochs']} epochs; student: "
        f"{s['blocks']} blocks, width {s['width']}, {s['heads']} heads, "
        f"{s['params']:,} parameters, {config['epochs']} epochs; "
        f"{config['steps_per_epoch']} steps of {config['batch_size']} windows an epoch"
    )

    def row(label, values):
        cells = "".join(f"{v:>{w}}" for v, w in zip(values, widths))
        return f"{label:<9}{cells}"

    for title, key, mean_key in (
        ("perplexity", "perplexity", "mean_perplexity"),
        ("bits per character", "bits_per_char", "mean_bits_per_char"),
    ):
        print(f"{title} (lower is better)")
        print(row("", [header for _, header in cols]))
        for run in results["per_seed"]:
            print(row(f"seed {run['seed']}", [f"{run[key][k]:.4f}" for k, _ in cols]))
        print(row("mean", [f"{results[mean_key][k]:.4f}" for k, _ in cols]))
    gains, wins = results["gain_over_scratch"], results["wins_over_scratch"]
    n = len(results["per_seed"])
    print(row("vs scr.", [f"{gains[k]:+.4f}" if k in gains else "" for k, _ in cols]))
    print(row("wins", [f"{wins[k]}/{n}" if k in wins else "" for k, _ in cols]))
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
    if results["export"] is not None:
        e = results["export"]
        print(
            f"export ({results['exported']}, seed {results['seeds'][0]}): "
            f"{e['path']}: {e['quantization']}, {e['size_bytes']:,} bytes, "
            f"max |diff| {e['max_abs_diff']:.2e} over {e['num_verify_samples']} "
            f"windows, next-character agreement {100 * e['top1_agreement']:.2f}%"
            + (
                f", latency {e['latency_ms']:.2f} ms a window"
                if e["latency_ms"] is not None
                else ""
            )
        )
        for note in e["notes"]:
            print(f"  note: {note}")
    if results["sample"] is not None:
        print(
            f"sample ({results['exported']} student, temperature "
            f"{config['sample_temperature']:g}); prompt: the first "
            f"{config['seq_len']} held-out characters:"
        )
        print(f"{results['prompt']!r} ->")
        print(f"{results['sample']!r}")
    print(f"wall time: {results['wall_time_s']:.0f} s")


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _non_negative(kind):
    def parse(text):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Character-level language-model distillation on the text of "
        "pydoc_data.topics: a small causal transformer from scratch, with KD on "
        "its (batch, time, vocabulary) logits, and with hidden states and "
        "attention maps too; the distilled student exported to .tflite.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="one full run (teacher and every student) per seed",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="measure on the last 10%% of the training part instead of the "
        "held-out text; use this to choose the feature weights",
    )
    parser.add_argument(
        "--max-chars",
        type=_positive(int),
        default=None,
        help="use only the first characters of the text (None: all)",
    )
    parser.add_argument("--seq-len", type=_positive(int), default=64)
    parser.add_argument("--teacher-blocks", type=_positive(int), default=4)
    parser.add_argument("--teacher-width", type=_positive(int), default=128)
    parser.add_argument("--teacher-heads", type=_positive(int), default=4)
    parser.add_argument("--student-blocks", type=_positive(int), default=2)
    parser.add_argument("--student-width", type=_positive(int), default=64)
    parser.add_argument("--student-heads", type=_positive(int), default=2)
    parser.add_argument(
        "--dropout", type=float, default=0.1, help="the teacher's dropout rate"
    )
    parser.add_argument("--teacher-epochs", type=_positive(int), default=8)
    parser.add_argument(
        "--epochs", type=_positive(int), default=5, help="epochs of every student"
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=_positive(int),
        default=150,
        help="batches an epoch (windows drawn at random from the training text)",
    )
    parser.add_argument("--batch-size", type=_positive(int), default=32)
    parser.add_argument(
        "--learning-rate",
        type=_positive(float),
        default=2e-3,
        help="Adam's peak learning rate (warm-up, then cosine decay to 0)",
    )
    parser.add_argument(
        "--temperature",
        type=_positive(float),
        default=1.0,
        help="temperature of the KL term of every distilled student",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the KL term (1 - alpha weights the next characters)",
    )
    parser.add_argument(
        "--hidden-weight",
        type=_non_negative(float),
        nargs="+",
        default=[0.01],
        help="weight of the hidden-state MSE terms of the combined student; "
        "several values: one combined student per (hidden, attention) pair",
    )
    parser.add_argument(
        "--attention-weight",
        type=_non_negative(float),
        nargs="+",
        default=[0.03],
        help="weight of the attention-map terms of the combined student",
    )
    parser.add_argument(
        "--out-dir",
        default=os.path.join("runs", "language_model_distillation"),
        help="where the .tflite file is written",
    )
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="skip the .tflite export",
    )
    parser.add_argument(
        "--num-verify",
        type=_positive(int),
        default=64,
        help="held-out windows the .tflite file is compared with Keras on",
    )
    parser.add_argument(
        "--latency-runs",
        type=_non_negative(int),
        default=20,
        help="single-window invocations timed for the latency (0: skip)",
    )
    parser.add_argument(
        "--sample-chars",
        type=_non_negative(int),
        default=200,
        help="characters the student writes after the prompt (0: none)",
    )
    parser.add_argument(
        "--sample-temperature",
        type=_non_negative(float),
        default=0.8,
        help="sampling temperature (0: greedy)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Keras's per-epoch logs"
    )
    args = parser.parse_args(argv)
    for side in ("teacher", "student"):
        width, heads = getattr(args, f"{side}_width"), getattr(args, f"{side}_heads")
        if width % heads:
            parser.error(
                f"argument --{side}-width: must be a multiple of --{side}-heads "
                f"({heads}), got {width}"
            )
    if args.student_blocks > args.teacher_blocks:
        parser.error(
            "argument --student-blocks: at most --teacher-blocks "
            f"({args.teacher_blocks}), got {args.student_blocks}"
        )
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"argument --dropout: must be in [0, 1), got {args.dropout:g}")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"argument --alpha: must be in [0, 1], got {args.alpha:g}")
    for option in ("hidden_weight", "attention_weight"):
        weights = getattr(args, option)
        if len(set(weights)) != len(weights):
            parser.error(
                f"argument --{option.replace('_', '-')}: each weight once, got "
                f"{' '.join(f'{w:g}' for w in weights)}"
            )
    return args


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
    data = load_data(args)
    x_eval, _ = data["eval"]
    if len(x_eval) == 0:
        raise ValueError(
            f"The evaluation text ({data['n_eval_chars']} characters) is shorter "
            f"than one window of --seq-len {args.seq_len} + 1; use more text "
            "(--max-chars) or shorter windows."
        )
    per_seed = []
    for seed in args.seeds:
        run = run_seed(seed, data, args)
        per_seed.append(run)
        if args.verbose:
            print(f"seed {seed}: {run['bits_per_char']} ({run['wall_time_s']:.0f} s)")
    names = list(per_seed[0]["perplexity"])
    mean_bpc = {
        name: float(np.mean([run["bits_per_char"][name] for run in per_seed]))
        for name in names
    }
    distilled = [name for name in names if name not in ("teacher", "scratch")]
    exported = "combined" if "combined" in names else distilled[-1]
    first = per_seed[0]["models"][exported]
    export = None if args.no_export else export_student(first, data, args)
    prompt_ids = data["eval_ids"][: args.seq_len]
    sample = None
    if args.sample_chars:
        sample = sample_text(
            first,
            prompt_ids,
            data["vocab"],
            args.sample_chars,
            args.sample_temperature,
            seed=args.seeds[0],
        )
    results = {
        "split": "validation" if args.validation else "held-out",
        "vocab": data["vocab"],
        "n_text_chars": data["n_text_chars"],
        "n_train_chars": data["n_train_chars"],
        "n_eval_chars": data["n_eval_chars"],
        "n_eval_windows": int(len(x_eval)),
        "seeds": list(args.seeds),
        "per_seed": per_seed,
        "mean_perplexity": {
            name: float(np.mean([run["perplexity"][name] for run in per_seed]))
            for name in names
        },
        "mean_bits_per_char": mean_bpc,
        "gain_over_scratch": {
            name: mean_bpc["scratch"] - mean_bpc[name] for name in distilled
        },
        "wins_over_scratch": {
            name: sum(
                run["bits_per_char"][name] < run["bits_per_char"]["scratch"]
                for run in per_seed
            )
            for name in distilled
        },
        "headers": {name: header for name, (header, _) in students(args).items()},
        "combined_weights": combined_weights(args),
        "layer_map": kd.taps.uniform_map(args.student_blocks, args.teacher_blocks),
        "models": _model_summary(args, len(data["vocab"]) + 1),
        "exported": exported,
        "export": export,
        "prompt": decode(prompt_ids, data["vocab"]),
        "sample": sample,
        "wall_time_s": time.perf_counter() - start,
        "config": {k: v for k, v in vars(args).items() if k != "verbose"},
    }
    print_results(results)
    return results


if __name__ == "__main__":
    main()
