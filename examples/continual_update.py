"""Update a deployed model without its old data, and without forgetting.

Learning without Forgetting (Li & Hoiem 2017) with keras-kd, in two
scenarios, each over several seeds:

1. **New classes** (class-incremental). A model knows the digits 0-4. New
   data arrives with 5-9 only; the old images are gone. The student is the
   old model with its head widened to 10 classes (`kd.widen_head`: old
   weights kept, new rows drawn) and learns from:
   - `finetune`: the new labels alone (it forgets);
   - `lwf`: the new labels plus distillation from the frozen old model on
     the old classes, `kd.Distiller(old, student, teacher_classes=[0..4])`;
   - `rehearsal`: LwF plus a small memory of old images (`--exemplars` per
     old class, drawn at random: iCaRL keeps exemplars too, but chooses them
     by herding and classifies by nearest mean, which this does not);
   - `joint`: every image, old and new, with labels (the upper bound: the
     data a continual update does not have).
   Reported: accuracy on the old classes' test images, on the new classes'
   and on all, every prediction an arg-max over the 10 classes.
2. **Same classes, new data** (domain-incremental). A model knows half of
   the training digits as they are stored. New data is the other half as a
   second camera, mounted a little off, gives them: one pixel to the right,
   dimmer, with pixel noise; the old images are gone. The
   student starts as a copy of the old model: `finetune` on the new data,
   `lwf` with the old model as a frozen teacher (`kd.Distiller(old,
   student)`: the same classes, no `teacher_classes`), `joint` on both.
   Reported: accuracy on the old and the new domain's test images.

The LwF model of the first scenario is then exported to `.tflite` like any
student (`kd.export.to_tflite`), its accuracy measured in the interpreter.

    python examples/continual_update.py                     # digits, offline
    python examples/continual_update.py --dataset mnist \\
        --data-dir ../shared/datasets/tfds --max-train 10000

Every model is a `keras_kd.models.mlp`; the new-data phases train for
`--epochs` with Adam; the distillation term is `KLDivergence(--temperature)`
weighted by `--alpha` (LwF's loss with lambda = alpha / (1 - alpha)).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common

import argparse
import tempfile
import time

import numpy as np

import _common
import keras_kd as kd
from keras_kd import models
from keras_kd.backend import keras

OLD_CLASSES = list(range(5))
CLASS_METHODS = ("finetune", "lwf", "rehearsal", "joint")
DOMAIN_METHODS = ("finetune", "lwf", "joint")


def parse_args(argv=None) -> argparse.Namespace:
    parser = _common.parser(
        "Learning without Forgetting: new classes, and the same classes on new "
        "data, without the old data (fine-tuning, LwF, rehearsal, joint)."
    )
    _common.add_dataset(parser)
    parser.set_defaults(dataset="digits")
    parser.add_argument("--max-train", type=_common.positive(int), default=None)
    _common.add_seeds(parser)
    add = parser.add_argument
    add("--hidden", type=_common.positive(int), default=128)
    add("--old-epochs", type=_common.positive(int), default=30)
    add("--epochs", type=_common.positive(int), default=20, help="new-data epochs")
    add("--batch-size", type=_common.positive(int), default=64)
    add("--learning-rate", type=_common.positive(float), default=1e-3)
    add("--temperature", type=_common.positive(float), default=2.0)
    add("--alpha", type=float, default=0.5, help="weight of the LwF term")
    add("--exemplars", type=_common.positive(int), default=10, help="per class")
    add("--noise", type=_common.non_negative(float), default=0.1)
    _common.add_verbose(parser)
    args = parser.parse_args(argv)
    _common.check_fraction(parser, args, "alpha", closed=False)
    return args


def _compiled(model, args):
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=_common.hard_loss(),
    )
    return model


def _fit(model, x, y, args, epochs):
    model.fit(
        x, y, epochs=epochs, batch_size=args.batch_size,
        verbose=_common.fit_verbosity(args),
    )  # fmt: skip
    return model


def _lwf(teacher, student, args, teacher_classes=None):
    distiller = kd.Distiller(teacher, student, teacher_classes=teacher_classes)
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=_common.hard_loss(),
        distillation_loss=kd.losses.KLDivergence(args.temperature),
        alpha=args.alpha,
    )
    return distiller


def _copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:  # the old model is frozen once it has taught
        layer.trainable = True
    return copy


def _accuracy(model, x, y):
    return _common.accuracy(model, x, y) if len(y) else float("nan")


def _task_aware(model, x, y):
    """Accuracy with the arg-max over the old classes only: the old task's
    head, as LwF's paper evaluates (the task is known at test time)."""
    logits = model.predict(x, batch_size=1000, verbose=0)[:, OLD_CLASSES]
    return float(np.mean(logits.argmax(-1) == y))


def new_classes(seed, train, test, args) -> dict:
    """Scenario 1 for one seed: `{"accuracy": {method: {old, new, all}},
    "old_model": its accuracy on the old classes, "tflite": ...}`."""
    (x, y), (x_test, y_test) = train, test
    old_rows, new_rows = y < 5, y >= 5
    keras.utils.set_random_seed(seed)
    old = models.mlp(x.shape[1:], 5, hidden=args.hidden, name="old")
    _fit(_compiled(old, args), x[old_rows], y[old_rows], args, args.old_epochs)
    rng = np.random.default_rng(seed)
    memory = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), args.exemplars, replace=False)
         for c in OLD_CLASSES]
    )  # fmt: skip
    x_new, y_new = x[new_rows], y[new_rows]
    trained = {}
    for method in CLASS_METHODS:
        keras.utils.set_random_seed(seed + 1)  # the same new rows for each
        student = kd.widen_head(old, 10, name=f"{method}_student")
        if method == "finetune":
            _fit(_compiled(student, args), x_new, y_new, args, args.epochs)
        elif method == "joint":
            _fit(_compiled(student, args), x, y, args, args.epochs)
        else:
            xs, ys = x_new, y_new
            if method == "rehearsal":
                xs = np.concatenate([x_new, x[memory]])
                ys = np.concatenate([y_new, y[memory]])
            _fit(_lwf(old, student, args, OLD_CLASSES), xs, ys, args, args.epochs)
        trained[method] = student
    old_test, new_test = y_test < 5, y_test >= 5
    figures = {
        method: {
            "old": _accuracy(model, x_test[old_test], y_test[old_test]),
            "new": _accuracy(model, x_test[new_test], y_test[new_test]),
            "all": _accuracy(model, x_test, y_test),
            "old_task_aware": _task_aware(model, x_test[old_test], y_test[old_test]),
        }
        for method, model in trained.items()
    }
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "lwf.tflite")
        report = kd.export.to_tflite(trained["lwf"], path, verify_data=x_test)
        tflite = {
            "size_bytes": report.size_bytes,
            "top1_agreement": report.top1_agreement,
            "accuracy": kd.export.evaluate_tflite(path, (x_test, y_test)),
        }
    return {
        "accuracy": figures,
        "old_model": _accuracy(old, x_test[old_test], y_test[old_test]),
        "tflite": tflite,
    }


def _second_camera(x, rng, noise):
    """The new domain: the digits one pixel to the right, dimmer (x 0.7),
    with pixel noise, as a second camera mounted a little off gives them."""
    shifted = np.roll(x, 1, axis=2)
    shifted[:, :, 0] = 0.0
    noisy = 0.7 * shifted + rng.normal(0, noise, x.shape)
    return np.clip(noisy, 0, 1).astype("float32")


def same_classes(seed, train, test, args) -> dict:
    """Scenario 2 for one seed: `{"accuracy": {method: {old, new}},
    "old_model": {old, new}}` (old / new: the two domains' test images)."""
    (x, y), (x_test, y_test) = train, test
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    half = len(y) // 2
    x_old, y_old = x[order[:half]], y[order[:half]]
    x_new = _second_camera(x[order[half:]], rng, args.noise)
    y_new = y[order[half:]]
    test_old, test_new = x_test, _second_camera(x_test, rng, args.noise)
    keras.utils.set_random_seed(seed)
    old = models.mlp(x.shape[1:], 10, hidden=args.hidden, name="old")
    _fit(_compiled(old, args), x_old, y_old, args, args.old_epochs)
    trained = {}
    for method in DOMAIN_METHODS:
        student = _copy(old)
        if method == "finetune":
            _fit(_compiled(student, args), x_new, y_new, args, args.epochs)
        elif method == "joint":
            both = (np.concatenate([x_old, x_new]), np.concatenate([y_old, y_new]))
            _fit(_compiled(student, args), *both, args, args.epochs)
        else:
            _fit(_lwf(old, student, args), x_new, y_new, args, args.epochs)
        trained[method] = student

    def scores(model):
        return {
            "old": _accuracy(model, test_old, y_test),
            "new": _accuracy(model, test_new, y_test),
        }

    return {
        "accuracy": {m: scores(model) for m, model in trained.items()},
        "old_model": scores(old),
    }


def _mean(runs, scenario, method, key):
    return float(np.mean([run[scenario]["accuracy"][method][key] for run in runs]))


def _spread(runs, scenario, method, key):
    values = [100 * run[scenario]["accuracy"][method][key] for run in runs]
    return f"{np.mean(values):.2f} ({', '.join(f'{v:.1f}' for v in values)})"


def print_tables(results: dict) -> None:
    runs = results["per_seed"]
    print(f"\nNew classes (0-4, then 5-9 alone), {len(runs)} seeds: test accuracy %,")
    print("mean (per seed), arg-max over the 10 classes")
    keys = ("old", "new", "all", "old_task_aware")
    heads = ("old classes", "new classes", "all", "old, over 0-4 only")
    print(f"{'method':<10} " + " ".join(f"{h:<24}" for h in heads))
    old = [100 * run["classes"]["old_model"] for run in runs]
    print(f"{'old model':<10} {np.mean(old):.2f} (5 classes)")
    for method in CLASS_METHODS:
        row = [_spread(runs, "classes", method, k) for k in keys]
        print(f"{method:<10} " + " ".join(f"{cell:<24}" for cell in row))
    files = [run["classes"]["tflite"] for run in runs]
    print(
        "LwF student as .tflite (float32): "
        + ", ".join(f"{100 * f['accuracy']:.2f}%" for f in files)
        + f" accuracy, {files[0]['size_bytes']:,} bytes, top-1 agreement "
        + ", ".join(f"{100 * f['top1_agreement']:.1f}%" for f in files)
    )
    print(f"\nSame classes, new data (a second camera), {len(runs)} seeds:")
    print(f"{'method':<10} {'old domain':<24} {'new domain':<24}")
    for method in ("old model", *DOMAIN_METHODS):
        if method == "old model":
            row = [
                f"{np.mean([100 * r['domains']['old_model'][k] for r in runs]):.2f}"
                for k in ("old", "new")
            ]
        else:
            row = [_spread(runs, "domains", method, k) for k in ("old", "new")]
        print(f"{method:<10} " + " ".join(f"{cell:<24}" for cell in row))


def main(argv=None) -> dict:
    """Runs both scenarios and returns their figures.

    Returns:
        A dict with `per_seed` (one dict per seed: `classes` (`accuracy`
        per method of `old` / `new` / `all`, `old_model`, `tflite`) and
        `domains` (`accuracy` per method of `old` / `new`, `old_model`)),
        `means` (`classes` and `domains`, the same figures averaged),
        `dataset`, `wall_time_s` and `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    train, test, _ = _common.load_images(args)
    print(_common.sizes_text(args.dataset, train, test))
    per_seed = []
    for seed in args.seeds:
        run = {
            "classes": new_classes(seed, train, test, args),
            "domains": same_classes(seed, train, test, args),
        }
        per_seed.append(run)
        if args.verbose:
            print(f"seed {seed}: {run['classes']['accuracy']}")
    means = {
        "classes": {
            m: {
                k: _mean(per_seed, "classes", m, k)
                for k in ("old", "new", "all", "old_task_aware")
            }
            for m in CLASS_METHODS
        },
        "domains": {
            m: {k: _mean(per_seed, "domains", m, k) for k in ("old", "new")}
            for m in DOMAIN_METHODS
        },
    }
    results = {
        "dataset": args.dataset,
        "per_seed": per_seed,
        "means": means,
        "wall_time_s": time.perf_counter() - start,
        "config": _common.config(args),
    }
    print_tables(results)
    _common.print_wall_time(results)
    return results


if __name__ == "__main__":
    main()
