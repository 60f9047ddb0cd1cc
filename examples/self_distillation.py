"""Born-Again Networks on MNIST: a model that learns from its own past.

No teacher is given. Generation 1 trains on the labels; generations 2 and 3
are the same architecture, freshly initialised, distilled from the previous
generation — all inside one `fit` driven by
`keras_kd.callbacks.SelfDistillation` (Furlanello et al. 2018). Generation 1
*is* the model trained independently with the same budget, so the table
reads directly as "what did more generations buy".

    python examples/self_distillation.py --data-dir ../shared/datasets/tfds
    python examples/self_distillation.py --dataset digits      # offline, tiny

It prints each generation's test accuracy per seed and averaged, on the test
set of `keras_kd.data.load_image_classification`; the model is a
one-hidden-layer `keras_kd.models.mlp`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common

import argparse
import time

import numpy as np

import _common
import keras_kd as kd
from keras_kd import models
from keras_kd.backend import keras


def run_seed(seed, data, num_classes, args):
    """Trains every generation for one seed.

    Returns:
        `(accuracies, weights)`: each generation's test accuracy and final
        weights, generation 1 first.
    """
    (x_tr, y_tr), (x_te, y_te) = data

    def make_model():
        return models.mlp(
            x_tr.shape[1:],
            num_classes,
            hidden=args.hidden,
            dropout=args.dropout,
            name="born_again",
        )

    keras.utils.set_random_seed(seed)
    distiller = kd.Distiller(teacher=None, student=make_model())
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        distillation_loss=kd.losses.KLDivergence(args.temperature),
        alpha=args.alpha,
    )
    born_again = kd.callbacks.SelfDistillation(
        generations=args.generations,
        epochs_per_generation=args.epochs,
        keep_weights=True,
        seed=seed,
        verbose=args.verbose,
    )
    distiller.fit(
        x_tr,
        y_tr,
        epochs=args.generations * args.epochs,
        batch_size=args.batch_size,
        verbose=args.verbose,
        callbacks=[born_again],
    )
    accuracies, weights = [], []
    model = make_model()
    for result in born_again.generation_results:
        model.set_weights(result["weights"])
        accuracies.append(_common.accuracy(model, x_te, y_te, batch_size=1024))
        weights.append(result["weights"])
    return accuracies, weights


def parse_args(argv=None) -> argparse.Namespace:
    p = _common.parser(__doc__.split("\n\n")[0])
    _common.add_dataset(p)
    p.add_argument("--max-train", type=int, default=None, help="cap on training images")
    _common.add_seeds(p, help=None)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6, help="epochs per generation")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    _common.add_without_teacher(p, temperature=4.0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    train, test, num_classes = _common.load_images(args)
    data = (train, test)
    start = time.perf_counter()
    runs = {seed: run_seed(seed, data, num_classes, args) for seed in args.seeds}
    per_seed = {seed: accuracies for seed, (accuracies, _) in runs.items()}
    seconds = time.perf_counter() - start
    table = np.array([per_seed[s] for s in args.seeds])
    print(
        f"\n{_common.sizes_text(args.dataset, train, test)}; "
        f"MLP({args.hidden}), {args.epochs} epochs a generation, T={args.temperature}, "
        f"alpha={args.alpha}; {seconds:.0f} s"
    )
    print(
        "seed  "
        + "".join(f"{'gen ' + str(g):>10}" for g in range(1, args.generations + 1))
    )
    for seed in args.seeds:
        print(f"{seed:<6}" + "".join(f"{a:>10.2%}" for a in per_seed[seed]))
    print("mean  " + "".join(f"{a:>10.2%}" for a in table.mean(0)))
    gains = table[:, 1:] - table[:, :1]
    for g in range(2, args.generations + 1):
        wins = int(np.sum(gains[:, g - 2] > 0))
        print(
            f"generation {g} vs 1: {gains[:, g - 2].mean() * 100:+.2f} points "
            f"(better in {wins} of {len(args.seeds)} seeds)"
        )
    return {
        "accuracy": per_seed,
        "mean": table.mean(0).tolist(),
        "seconds": seconds,
        "weights": {seed: weights for seed, (_, weights) in runs.items()},
    }


if __name__ == "__main__":
    main()
