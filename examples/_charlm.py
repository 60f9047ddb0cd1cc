"""The character-level language model of the examples: text, windows, models.

Shared by `language_model_distillation.py` and the generative examples that
build on it, so that they train on the same data with the same models:

* **data**: the text of `pydoc_data.topics` (Python's own help pages,
  shipped with every Python), its last 10% held out (`split_text`), a
  character vocabulary with one id (`UNKNOWN`, 0) for any other character,
  non-overlapping evaluation windows and random training windows;
* **models**: `char_lm`, a causal pre-LayerNorm transformer whose blocks and
  attention layers are named for feature taps, and its options
  (`add_model_options`, `check_model_options`, `build`);
* **training and use**: the warm-up and cosine-decay optimizer, one `fit` a
  epoch on that epoch's windows, the log-likelihood of held-out windows,
  sampling, and the `.tflite` export with its options and report.
"""

from __future__ import annotations

import argparse
import inspect
import os

import numpy as np

import _common
import keras_kd as kd
from keras_kd.backend import keras

# The share of the text held out at its end (the test split), and the share
# of the remaining training part held out further by `validation`.
HELD_OUT = 0.1
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

    The last `HELD_OUT` (10%) of `text` is the held-out text. With
    `validation`, the last 10% of the rest is the evaluation text instead,
    and the held-out text is not used at all.

    Returns:
        `(train_text, eval_text, vocab_text)`: `vocab_text` is the whole
        training part (before any validation split), whose characters make
        the vocabulary, so that both splits give models of the same shapes.
    """
    train = text[: int(len(text) * (1.0 - HELD_OUT))]
    if not validation:
        return train, text[len(train) :], train
    cut = int(len(train) * (1.0 - HELD_OUT))
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


def load_data(max_chars: int | None, seq_len: int, validation: bool) -> dict:
    """Text, vocabulary, training ids and evaluation windows.

    Args:
        max_chars: keep only the first characters of the text (None: all).
        seq_len: the windows' length.
        validation: measure on the last 10% of the training part instead of
            the held-out text (`split_text`).

    Returns:
        A dict: `vocab` (character `vocab[i]` has id `i + 1`),
        `n_text_chars`, `n_train_chars`, `n_eval_chars`, `train_ids`,
        `eval_ids` and `eval`, the evaluation windows `(x, y)`.
    """
    text = load_text(max_chars)
    train_text, eval_text, vocab_text = split_text(text, validation)
    vocab = build_vocab(vocab_text)
    eval_ids = encode(eval_text, vocab)
    return {
        "vocab": vocab,
        "n_text_chars": len(text),
        "n_train_chars": len(train_text),
        "n_eval_chars": len(eval_text),
        "train_ids": encode(train_text, vocab),
        "eval_ids": eval_ids,
        "eval": eval_windows(eval_ids, seq_len),
    }


def epoch_windows(train_ids, args, epochs: int, seed: int):
    """The windows of every epoch: arrays `(epochs, steps * batch, length)`,
    drawn with `numpy.random.default_rng(seed)` (`args.seq_len`,
    `args.steps_per_epoch`, `args.batch_size`)."""
    rng = np.random.default_rng(seed)
    count = args.steps_per_epoch * args.batch_size
    pairs = [train_windows(train_ids, args.seq_len, count, rng) for _ in range(epochs)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def fit_epochs(trainer, x, y, batch_size: int, verbose: int) -> None:
    """One `fit` per epoch on that epoch's windows (`x[e]`, `y[e]`), in order."""
    for epoch, (x_epoch, y_epoch) in enumerate(zip(x, y)):
        trainer.fit(
            x_epoch,
            y_epoch,
            batch_size=batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=verbose,
        )


def warmup_cosine_adam(learning_rate: float, steps: int):
    """Adam: a linear warm-up over 5% of `steps`, then a cosine decay to 0."""
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, steps - warmup),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(schedule, clipnorm=1.0)


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


def check_attention_api():
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
    check_attention_api()
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


# Options.


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The text's length, the windows' and the two models' sizes."""
    add, positive = parser.add_argument, _common.positive
    add(
        "--max-chars",
        type=positive(int),
        default=None,
        help="use only the first characters of the text (None: all)",
    )
    add("--seq-len", type=positive(int), default=64)
    for side, sizes in (("teacher", (4, 128, 4)), ("student", (2, 64, 2))):
        for what, default in zip(("blocks", "width", "heads"), sizes):
            add(f"--{side}-{what}", type=positive(int), default=default)
    add("--dropout", type=float, default=0.1, help="the teacher's dropout rate")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Epochs, steps an epoch, batch size and learning rate."""
    add, positive = parser.add_argument, _common.positive
    add("--teacher-epochs", type=positive(int), default=8)
    add("--epochs", type=positive(int), default=5, help="epochs of every student")
    add(
        "--steps-per-epoch",
        type=positive(int),
        default=150,
        help="batches an epoch (windows drawn at random from the training text)",
    )
    add("--batch-size", type=positive(int), default=32)
    add(
        "--learning-rate",
        type=positive(float),
        default=2e-3,
        help="Adam's peak learning rate (warm-up, then cosine decay to 0)",
    )


def add_export_options(parser: argparse.ArgumentParser, out_dir: str) -> None:
    """Where and how the student is exported, and what it writes."""
    add = parser.add_argument
    positive, non_negative = _common.positive, _common.non_negative
    add("--out-dir", default=out_dir, help="where the .tflite file is written")
    add("--no-export", action="store_true", help="skip the .tflite export")
    add(
        "--num-verify",
        type=positive(int),
        default=64,
        help="held-out windows the .tflite file is compared with Keras on",
    )
    add(
        "--latency-runs",
        type=non_negative(int),
        default=20,
        help="single-window invocations timed for the latency (0: skip)",
    )
    add(
        "--sample-chars",
        type=non_negative(int),
        default=200,
        help="characters the student writes after the prompt (0: none)",
    )
    add(
        "--sample-temperature",
        type=non_negative(float),
        default=0.8,
        help="sampling temperature (0: greedy)",
    )


def check_model_options(parser: argparse.ArgumentParser, args) -> None:
    """Exits unless each width is a multiple of its heads, the student has
    at most the teacher's blocks, and the dropout rate is in [0, 1)."""
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
    _common.check_fraction(parser, args, "dropout", closed=False)


# Models from the options, export and report.


def build(args, side: str, vocab_size: int, name: str | None = None, **kwargs):
    """`char_lm` of the `side` (`"teacher"` or `"student"`) the options
    describe, its layers prefixed `t` or `s`; `kwargs`: `dropout`."""
    return char_lm(
        vocab_size,
        args.seq_len,
        getattr(args, f"{side}_blocks"),
        getattr(args, f"{side}_width"),
        getattr(args, f"{side}_heads"),
        prefix=side[0],
        name=name,
        **kwargs,
    )


def model_summary(args, vocab_size: int) -> dict:
    """`{side: {blocks, width, heads, params}}` of the teacher and student."""
    summary = {}
    for side in ("teacher", "student"):
        summary[side] = {
            what: getattr(args, f"{side}_{what}")
            for what in ("blocks", "width", "heads")
        }
        summary[side]["params"] = int(build(args, side, vocab_size).count_params())
    return summary


def export_student(model, data: dict, args) -> dict:
    """Writes `model` as a float32 `.tflite` file in `args.out_dir`, verified
    on held-out windows; returns the `ExportReport` as a dict."""
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


def print_export_and_sample(results: dict) -> None:
    """The export report (`results["export"]`, if any) of the `exported`
    student, and the text it wrote after the prompt (if any)."""
    config = results["config"]
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
