"""A student built from the teacher's blocks against a random start (DistilBERT).

A 4-block character-level transformer teacher (`examples/_charlm.py`, width
64) is trained on Python's help text (`pydoc_data.topics`, offline); then
2-block students of the same width train with plain cross-entropy for the
same steps from four starts: random weights, and `kd.init_from_teacher` with
the default map (teacher blocks 0 and 2, every other block as DistilBERT),
with blocks 1 and 3 (the last-aligned map), and with blocks 0 and 3 (both
ends). Each start's held-out bits per character are printed before and
after training, per seed and in the mean.

    python benchmarks/lm_init_from_teacher.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import numpy as np

import _charlm
import keras_kd as kd
from keras_kd.backend import keras

STARTS = {
    "random": "random",
    "teacher 0,2 (default)": None,
    "teacher 1,3": {0: 1, 1: 3},
    "teacher 0,3": {0: 0, 1: 3},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=200)
    parser.add_argument("--max-chars", type=int, default=120_000)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data = _charlm.load_data(args.max_chars, args.seq_len, validation=False)
    vocab = len(data["vocab"]) + 1
    x_eval, y_eval = (a[:256] for a in data["eval"])
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def bits(model):
        return _charlm.log_likelihood(model, x_eval, y_eval) / math.log(2)

    def train(model, steps, seed):
        rng = np.random.default_rng(seed)
        x, y = _charlm.train_windows(data["train_ids"], args.seq_len, steps * 32, rng)
        model.compile(optimizer=_charlm.warmup_cosine_adam(2e-3, steps), loss=sce)
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)

    start = time.time()
    results = {name: [] for name in STARTS}
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        teacher = _charlm.char_lm(vocab, args.seq_len, 4, args.width, 4, prefix="t")
        train(teacher, args.teacher_steps, seed=100 + seed)
        print(f"seed {seed}: teacher {bits(teacher):.3f} bits/char held out")
        for name, layer_map in STARTS.items():
            keras.utils.set_random_seed(1000 + seed)
            student = _charlm.char_lm(vocab, args.seq_len, 2, args.width, 4, prefix="s")
            if layer_map != "random":
                kd.init_from_teacher(student, teacher, layer_map=layer_map)
            before = bits(student)
            train(student, args.student_steps, seed=200 + seed)
            results[name].append((before, bits(student)))
            print(f"  {name:<22} start {before:.3f}  after {results[name][-1][1]:.3f}")
    print(
        f"\n| start | bits/char at step 0 | after {args.student_steps} steps "
        f"(mean of {len(args.seeds)} seeds) |"
    )
    print("| --- | --- | --- |")
    for name, runs in results.items():
        runs = np.array(runs)
        print(
            f"| {name} | {runs[:, 0].mean():.3f} | {runs[:, 1].mean():.3f} "
            f"(per seed {', '.join(f'{v:.3f}' for v in runs[:, 1])}) |"
        )
    print(f"wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
