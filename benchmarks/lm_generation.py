"""`kd.lm.generate` on a KerasHub CausalLM: its cache against the full-buffer loop.

`kd.lm.generate` runs a KerasHub `CausalLM` through the model's own
cache-aware generation (one new position per step, the attention keys and
values of earlier positions kept); any other Keras model through a loop that
runs the model on the whole buffer at each step. This script times both on
the same tiny GPT-2 built from a config (no weights, offline): the CausalLM
itself (cache) and the same network wrapped in a Functional model that maps
ids to logits (full-buffer loop), eagerly (`tf.function` without XLA) and
with `jit_compile=True`, for equal prompt lengths and for prompts of 4 to 16
tokens in one batch. Greedy decoding of both is checked to give the same ids.

The figure is the best of `--rounds` rounds of `--calls` calls after a
warm-up call (tracing and compiling); the ratio of the two paths is the
result to read. Keras 3 only (KerasHub).

    python benchmarks/lm_generation.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import keras_kd as kd
from keras_kd.backend import keras, tf


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 48])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    return parser.parse_args(argv)


def tiny_gpt2(max_length: int):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=max_length,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def full_buffer(causal_lm):
    """The same network as a plain ids -> logits model (no cache)."""
    ids = keras.Input((None,), dtype="int32")
    mask = keras.layers.Lambda(lambda t: tf.ones_like(t, tf.bool))(ids)
    logits = causal_lm({"token_ids": ids, "padding_mask": mask})
    return keras.Model(ids, logits)


def best_ms(fn, rounds: int, calls: int) -> float:
    fn()  # trace and compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return 1e3 * min(times)


def main(argv=None):
    args = parse_args(argv)
    lm = tiny_gpt2(args.prompt + max(args.new_tokens))
    plain = full_buffer(lm)
    rng = np.random.default_rng(0)
    prompts = tf.constant(rng.integers(1, 64, (args.batch, args.prompt)), tf.int32)
    seed = tf.constant([0, 1], tf.int32)
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; tensorflow {tf.__version__}"
    )
    print(
        "| new tokens | prompt lengths | XLA | cache (ms) | full buffer (ms) | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for new in args.new_tokens:
        greedy = [
            kd.lm.generate(m, prompts, new, temperature=0.0).ids.numpy()
            for m in (lm, plain)
        ]
        np.testing.assert_array_equal(greedy[0], greedy[1])
        for label, lengths in (
            ("equal", np.full(args.batch, args.prompt)),
            ("4 to 16", rng.integers(4, args.prompt + 1, args.batch)),
        ):
            lengths = tf.constant(lengths, tf.int32)
            for jit in (False, True):
                cells = []
                for model in (lm, plain):
                    call = tf.function(
                        lambda p, n, s, model=model, new=new: (
                            kd.lm.generate(
                                model, p, new, top_k=10, seed=s, prompt_lengths=n
                            ).ids
                        ),
                        jit_compile=jit,
                    )
                    cells.append(
                        best_ms(
                            lambda c=call, n=lengths: c(prompts, n, seed),
                            args.rounds,
                            args.calls,
                        )
                    )
                print(
                    f"| {new} | {label} | {'yes' if jit else 'no'} | "
                    f"{cells[0]:.1f} | {cells[1]:.1f} | {cells[1] / cells[0]:.1f}x |"
                )


if __name__ == "__main__":
    main()
