"""Choose the student for a phone's budget and ship it as an app loads it.

The story: a phone app classifies small colour images and has room for a
model of 64 KiB (or, on a low-end phone, 16 KiB). Which student is the most
accurate one that fits? This script

1. makes the data: **colour digits**, scikit-learn's bundled 8x8 handwritten
   digits rendered at 16x16 in RGB, each copy with a random ink colour, a
   random paper colour (every channel at least 96 levels from the ink's)
   and pixel noise (generated here, offline, in a second). Train, validation
   and test images are renderings of disjoint digits (`kd.data.load_digits`
   holds out a quarter; the validation set is a fifth of the rest);
2. trains the teacher, a CNN, on the labels;
3. runs `kd.tune_for_budget` under each budget (`--budgets-kib`): the
   candidates are `student_fn(hp)`'s grid of widths and depths; each is
   exported as an int8 `.tflite` file with its labels and normalization
   metadata (which count in the size), measured, discarded if over budget
   before it trains, trained with `kd.tune` (labels alone against
   distillation) and scored by its file's accuracy on the validation set;
4. writes, for each budget, the returned file (`budget_64KiB.tflite`), the
   table of candidates (`budget_64KiB.txt`) and the plot of accuracy against
   size and latency with the Pareto fronts (`budget_64KiB.png`);
5. classifies the test images with MediaPipe Tasks' `ImageClassifier`, the
   API an Android or iOS app calls, reading the file as it is: its top-1
   against the Keras student's and against the labels (skipped, with a
   note, where `mediapipe` is not installed: `pip install keras-kd[phone]`).

Usage:

```
python examples/phone_budget.py                      # ~10 minutes on 2 cores
python examples/phone_budget.py --budgets-kib 16 --widths 4,8 --blocks 2
```

The model's inputs are pixels normalized as `(pixel - 127.5) / 127.5`; the
file's metadata says so, and MediaPipe applies it to the uint8 image it is
given. Latencies are this machine's (batch 1, LiteRT with XNNPACK, 1 thread).
Runs in the Keras 3 flavour (MediaPipe's step in the flavour it installs in).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _common

import argparse
import json
import time

import numpy as np

import _common
import keras_kd as kd
from keras_kd import data
from keras_kd.backend import keras

LABELS = ["zero", "one", "two", "three", "four"]
LABELS += ["five", "six", "seven", "eight", "nine"]
MEAN = STD = 127.5
SIZE = 16


def render(x, y, copies: int, rng):
    """RGB uint8 images `(n * copies, 16, 16, 3)` of the 8x8 digits `x` (in
    [0, 1]): each copy its own ink and paper colours, plus noise."""
    x = np.repeat(x, copies, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    n = len(x)
    ink = rng.uniform(0, 256, size=(n, 1, 1, 3))
    paper = (ink + rng.uniform(96, 160, size=(n, 1, 1, 3))) % 256
    images = paper + (ink - paper) * x + rng.normal(0, 8, size=(n, SIZE, SIZE, 3))
    return np.clip(images, 0, 255).round().astype("uint8"), np.repeat(y, copies)


def colour_digits(copies: int, seed: int):
    """`(train, validation, test)` splits of uint8 colour digits."""
    rng = np.random.default_rng(seed)
    (x_train, y_train), (x_test, y_test) = data.load_digits(seed=seed)
    order = rng.permutation(len(x_train))
    held = order[: len(order) // 5]
    kept = order[len(order) // 5 :]
    return (
        render(x_train[kept], y_train[kept], copies, rng),
        render(x_train[held], y_train[held], 1, rng),
        render(x_test, y_test, 1, rng),
    )


def normalized(images):
    """What the model is fed: the normalization the metadata records."""
    return (images.astype("float32") - MEAN) / STD


def build_teacher() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(128, 3, strides=2, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(len(LABELS)),
        ],
        name="teacher",
    )


def student_fn_for(widths, max_blocks: int):
    """`student_fn(hp)`: `blocks` strided 3x3 convolutions, the first
    `width` channels wide and each next one twice as wide, then global
    average pooling and the class logits."""

    def student_fn(hp):
        width = hp.Choice("width", widths)
        blocks = hp.Int("blocks", 1, max_blocks)
        model = keras.Sequential([keras.Input((SIZE, SIZE, 3))], name="student")
        for block in range(blocks):
            model.add(
                keras.layers.Conv2D(
                    width * 2**block, 3, strides=2, padding="same", activation="relu"
                )
            )
        model.add(keras.layers.GlobalAveragePooling2D())
        model.add(keras.layers.Dense(len(LABELS)))
        return model

    return student_fn


def mediapipe_top1(path, images):
    """MediaPipe Tasks' `ImageClassifier` on `images` (uint8 RGB) from the
    file as it is: the top-1 class indices and names; None without
    mediapipe."""
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError:
        return None
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=os.fspath(path)), max_results=1
    )
    indices, names = [], []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            picture = mp.Image(
                image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)
            )
            (top,) = classifier.classify(picture).classifications[0].categories
            indices.append(top.index)
            names.append(top.category_name)
    return np.array(indices), names


def search(budget_kib, teacher, splits, args):
    """One budget: the search, its files, and MediaPipe on the test set."""
    (x, y), (x_val, y_val), (x_test, y_test) = splits
    result = kd.tune_for_budget(
        teacher,
        student_fn_for(args.widths, args.blocks),
        (normalized(x), y),
        (normalized(x_val), y_val),
        loss=_common.hard_loss(),
        max_bytes=int(budget_kib * 1024),
        quantization="int8",
        export_options={"labels": LABELS, "normalization": (MEAN, STD)},
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        latency_runs=args.latency_runs,
        verbose=1 if args.verbose else 0,
    )
    stem = os.path.join(args.out_dir, f"budget_{budget_kib:g}KiB")
    path = result.save_tflite(stem + ".tflite")
    with open(stem + ".txt", "w") as f:
        f.write(result.table() + "\n")
    plot = None
    try:
        plot = result.plot(stem + ".png")
    except ImportError as error:
        print(f"No plot: {error}")
    keras_top1 = result.student.predict(normalized(x_test), verbose=0).argmax(-1)
    file_top1 = kd.export.predict_tflite(path, normalized(x_test)).argmax(-1)
    row = {
        "budget_bytes": int(budget_kib * 1024),
        "path": path,
        "table_path": stem + ".txt",
        "plot_path": plot,
        "candidate": {k: v for k, v in result.candidate.items() if k != "error"},
        "candidates": len(result.candidates),
        "trained": sum(r["accuracy"] is not None for r in result.candidates),
        "file_test_accuracy": kd.export.evaluate_tflite(
            path, (normalized(x_test), y_test)
        ),
        "keras_test_accuracy": float(np.mean(keras_top1 == y_test)),
        "table": result.table(),
    }
    classified = mediapipe_top1(path, x_test)
    if classified is None:
        row["mediapipe"] = None
    else:
        indices, names = classified
        row["mediapipe"] = {
            "test_accuracy": float(np.mean(indices == y_test)),
            "agreement_with_keras": float(np.mean(indices == keras_top1)),
            "agreement_with_file": float(np.mean(indices == file_top1)),
            "names_match_labels": names == [LABELS[i] for i in indices],
        }
    return row


def print_budget(row) -> None:
    chosen = row["candidate"]
    print()
    print(f"Budget {row['budget_bytes']:,} bytes (int8):")
    print(row["table"])
    print(
        f"Returned {chosen['id']} ({chosen['hyperparameters']}): "
        f"{chosen['size_bytes']:,} bytes, {chosen['latency_ms']:.3f} ms, "
        f"{chosen['recipe']}; test accuracy of the file "
        f"{100 * row['file_test_accuracy']:.2f}% "
        f"(Keras student {100 * row['keras_test_accuracy']:.2f}%)"
    )
    if row["mediapipe"] is None:
        print("MediaPipe: not installed (pip install keras-kd[phone]); skipped.")
    else:
        mp = row["mediapipe"]
        print(
            f"MediaPipe ImageClassifier on the file: test accuracy "
            f"{100 * mp['test_accuracy']:.2f}%, top-1 agreement with Keras "
            f"{100 * mp['agreement_with_keras']:.2f}% (with the file in LiteRT's "
            f"Python interpreter {100 * mp['agreement_with_file']:.2f}%), label names "
            f"{'as given' if mp['names_match_labels'] else 'DIFFER'}"
        )


def int_list(text: str) -> list:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 4,8,16, got {text}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text}")
    return values


def float_list(text: str) -> list:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 64,16, got {text}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected budgets > 0, got {text}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = _common.parser(
        "Choose the most accurate int8 student within each size budget with "
        "kd.tune_for_budget on colour digits (generated offline), write each "
        "file with its labels and normalization metadata, its table and its "
        "Pareto plot, and classify the test set with MediaPipe Tasks."
    )
    add = parser.add_argument
    add(
        "--budgets-kib",
        type=float_list,
        default=[64.0, 16.0],
        help="size budgets in KiB, one search each",
    )
    add(
        "--widths",
        type=int_list,
        default=[4, 8, 16, 32],
        help="the first convolution's channels, one candidate each",
    )
    add(
        "--blocks",
        type=_common.positive(int),
        default=3,
        help="candidates have 1 to this many strided convolutions",
    )
    add(
        "--copies",
        type=_common.positive(int),
        default=4,
        help="colourings of each training digit",
    )
    add("--teacher-epochs", type=_common.positive(int), default=30)
    add(
        "--epochs",
        type=_common.positive(int),
        default=8,
        help="epochs of each candidate's trainings (kd.tune's max_epochs)",
    )
    add("--batch-size", type=_common.positive(int), default=64)
    add(
        "--latency-runs",
        type=_common.positive(int),
        default=50,
        help="timed single-image invocations per file",
    )
    add("--seed", type=int, default=0)
    add(
        "--out-dir",
        default=os.path.join("runs", "phone_budget"),
        help="where the files, tables and plots are written",
    )
    _common.add_verbose(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Runs the example and returns its figures.

    Returns:
        A dict with `teacher_accuracy` (test), `n_train` / `n_val` / `n_test`,
        `budgets` (one dict per budget: `budget_bytes`, `path`, `table_path`,
        `plot_path`, `candidate` (the returned row), `candidates`, `trained`,
        `file_test_accuracy`, `keras_test_accuracy`, `mediapipe` (None, or
        `test_accuracy`, `agreement_with_keras`, `agreement_with_file`,
        `names_match_labels`),
        `table`), `wall_time_s` and the `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    splits = colour_digits(args.copies, args.seed)
    (x, y), _, (x_test, y_test) = splits
    teacher = build_teacher()
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=_common.hard_loss(),
        metrics=["accuracy"],
    )
    teacher.fit(
        normalized(x),
        y,
        epochs=args.teacher_epochs,
        batch_size=args.batch_size,
        verbose=2 if args.verbose else 0,
    )
    teacher_accuracy = _common.accuracy(teacher, normalized(x_test), y_test)
    print(
        f"Colour digits: {len(x):,} training, {len(splits[1][1]):,} validation, "
        f"{len(y_test):,} test images; teacher "
        f"({teacher.count_params():,} params) test accuracy "
        f"{100 * teacher_accuracy:.2f}%"
    )
    budgets = []
    for budget_kib in args.budgets_kib:
        budgets.append(search(budget_kib, teacher, splits, args))
        print_budget(budgets[-1])
    results = {
        "teacher_accuracy": teacher_accuracy,
        "n_train": int(len(y)),
        "n_val": int(len(splits[1][1])),
        "n_test": int(len(y_test)),
        "budgets": budgets,
        "wall_time_s": time.perf_counter() - start,
        "config": _common.config(args),
    }
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\nWall time {results['wall_time_s']:.0f} s; files in {args.out_dir}")
    return results


if __name__ == "__main__":
    main()
