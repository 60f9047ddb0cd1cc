"""Feature distillation: a thin CNN student taught from inside its teacher.

Hinton et al.'s KD matches only the teacher's outputs. Feature distillation
also asks the student to match what happens inside the teacher: FitNets
(Romero et al. 2015, "FitNets: Hints for thin deep nets") regress a middle
layer of the student onto the teacher's through a learned projection, and
attention transfer (Zagoruyko and Komodakis 2017, "Paying more attention to
attention") matches where each network's activations concentrate,
whatever the channel counts. This example trains one CNN teacher and one
thinner CNN student architecture, and compares four students from the same
initial weights, with the same optimizer, batches and epochs:

1. `scratch`: the student trained on the labels alone (a plain `fit`);
2. `logits`: Hinton's KD, `kd.losses.KLDivergence(temperature=4)` with
   `alpha=0.9`;
3. `hint`: the same logits term, plus a FitNets hint on the middle
   convolution block, `kd.FeatureMatch("t_block2", "s_block2", loss="mse",
   weight=10, projection="auto")`: the student's block has a quarter of the teacher's
   channels, so keras-kd learns a 1x1 convolution (an adapter, in
   `Distiller.adapters`, never part of the student) that maps them to the
   teacher's width;
4. `AT`: the same logits term, plus attention transfer on the same blocks,
   `kd.FeatureMatch("t_block2", "s_block2", loss="attention_transfer",
   weight=100)` (width-agnostic: no adapter).

The feature terms are added to the distillation objective: `loss =
alpha * KL + (1 - alpha) * hard + weight * feature`.

**Setup (defaults).** The first 20,000 MNIST training images (a subset, to
fit the budget), the 10,000 test images to measure accuracy. Both networks
are three blocks of a 3x3 same-padded ReLU convolution (the layer a tap
names: `t_block1`..`t_block3`, `s_block1`..`s_block3`) and a 2x2 max
pooling, then `Flatten` and a `Dense` layer of logits; the teacher's blocks
have 32, 64 and 128 channels and dropout 0.3 before its logits (113,162
parameters on MNIST), the student's 8, 16 and 32 (11,018 parameters). The
taps read the second block, 14x14 on MNIST: 64 teacher channels against 16.
The teacher trains for 10 epochs, every student for 10, Adam 1e-3 with a
cosine decay to 0, batch 128. Three seeds take about 7 minutes on two CPU
cores; `--max-train 60000` and more epochs for a longer run. Figures:
BENCHMARKS.md, "Feature distillation".

**Choosing the feature weights.** The weights were chosen on a validation
split, never on the test set: `--validation` holds out 5,000 more MNIST
training images (images 20,001-25,000) and reports accuracy on those;
`--at-weight` and `--hint-weight` take several values and train one student
per value. Over three seeds (0, 1, 2), with every other setting at its
default:

```
python examples/feature_distillation.py --validation \\
    --at-weight 100 250 500 1000 --hint-weight 1 10 100
```

gave these mean validation accuracies (%): scratch 97.40, logits 97.37;
hint at weight 1, 10, 100: 97.37, 97.41, 97.41; attention transfer at 100,
250, 500, 1000 (the paper's beta/2 = 500 with keras-kd's mean over
positions): 97.37, 97.22, 97.03, 96.85. The defaults are the best of each:
AT weight 100 (accuracy falls steadily as the weight grows) and hint weight
10 (tied with 100 on the mean; it beat scratch in 2 seeds of 3, 100 in 1).
Read the differences with care: 0.1 point is 5 of the 5,000 images, and
every student but the heavily weighted AT ones is within that of scratch.

Usage:

```
python examples/feature_distillation.py                     # 3 seeds, test set
python examples/feature_distillation.py --data-dir ../shared/datasets/tfds
python examples/feature_distillation.py --max-train 60000 \\
    --teacher-epochs 20 --student-epochs 20                 # longer
python examples/feature_distillation.py --dataset digits \\
    --teacher-epochs 20 --student-epochs 20                 # tiny, offline
```

Data come from `keras_kd.data.load_image_classification`, which defines the
test set: MNIST from TensorFlow Datasets (`--data-dir` is a TFDS data dir;
it defaults to `../shared/datasets/tfds` beside the project's root when that
folder exists, otherwise tfds downloads MNIST), or with `--dataset digits`
the held-out quarter of scikit-learn's bundled 8x8 digits (450 images, no
download; the second block is then 4x4), whose figures check the plumbing.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import pathlib
import time

import numpy as np

import keras_kd as kd
from keras_kd.backend import keras

# The TFDS data dir beside the project's root, the default of `--data-dir`
# when it exists.
_SHARED_TFDS = pathlib.Path(__file__).resolve().parents[2] / "shared/datasets/tfds"

# Per dataset: training images loaded by default (None: all), and those held
# out further by `--validation`.
_MAX_TRAIN = {"mnist": 20_000, "digits": None}
_VALIDATION_SIZE = {"mnist": 5_000, "digits": 300}

# The feature students: (key prefix, header prefix, feature loss, argument
# holding its weights).
_FEATURE_STUDENTS = (
    ("hint", "hint", "mse", "hint_weight"),
    ("attention", "AT", "attention_transfer", "at_weight"),
)


def load_data(
    dataset: str = "mnist",
    data_dir: str | None = None,
    validation: bool = False,
    max_train: int | None = None,
):
    """The training and evaluation splits, from `kd.data`.

    Args:
        dataset: `"mnist"` (TensorFlow Datasets, 28x28) or `"digits"`
            (scikit-learn's bundled 8x8 digits, offline).
        data_dir: the TFDS data dir for MNIST; None lets tfds download it.
        validation: if True, `_VALIDATION_SIZE` more training images are
            loaded and held out (`kd.data.split_validation`) as the
            evaluation set; the test set is not touched.
        max_train: training images to use, the first ones (None: the
            dataset's default, `_MAX_TRAIN`).

    Returns:
        `(x_train, y_train), (x_eval, y_eval)`: images of shape
        `(n, height, width, 1)` in [0, 1] and int64 labels.
    """
    if max_train is None:
        max_train = _MAX_TRAIN[dataset]
    if validation and max_train is not None:
        max_train += _VALIDATION_SIZE[dataset]
    train, test, _, _ = kd.data.load_image_classification(
        dataset, data_dir=data_dir, max_train=max_train
    )
    if validation:
        return kd.data.split_validation(*train, _VALIDATION_SIZE[dataset])
    return train, test


def conv_net(input_shape, num_classes, widths, dropout=0.0, prefix="", name=None):
    """Blocks of a 3x3 ReLU convolution and 2x2 max pooling, then logits.

    Args:
        input_shape: `(height, width, channels)`.
        num_classes: number of output logits.
        widths: channels of each block's convolution.
        dropout: dropout rate before the logits (0: none).
        prefix: prefix of the convolutions' names: block `i` (from 1) is the
            layer `f"{prefix}block{i}"`, the name a `kd.FeatureMatch` taps.
        name: the model's name.

    Returns:
        A Functional `keras.Model` mapping images to logits.
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for i, width in enumerate(widths, 1):
        x = keras.layers.Conv2D(
            width, 3, padding="same", activation="relu", name=f"{prefix}block{i}"
        )(x)
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, name=f"{prefix}logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _optimizer(learning_rate: float, epochs: int, steps_per_epoch: int):
    """Adam with a cosine decay of the learning rate to 0 over the run."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps_per_epoch)
    )
    return keras.optimizers.Adam(schedule)


def _accuracy(model, x, y) -> float:
    predicted = np.argmax(model.predict(x, batch_size=1000, verbose=0), axis=-1)
    return float(np.mean(predicted == y))


def students(args) -> dict:
    """The students after `scratch`: `{key: (header, FeatureMatch factory)}`.

    `logits` has no feature term (factory None). A feature student given one
    weight is keyed `hint` / `attention` (headers `hint` / `AT`); given
    several, one student per weight, keyed `hint_w{w}` (header `hint@{w}`).
    """
    runs = {"logits": ("logits", None)}
    tap = (f"t_block{args.tap_block}", f"s_block{args.tap_block}")
    for key, header, loss, option in _FEATURE_STUDENTS:
        weights = getattr(args, option)
        for weight in weights:
            name, title = (key, header)
            if len(weights) > 1:
                name, title = f"{key}_w{weight:g}", f"{header}@{weight:g}"

            def match(loss=loss, weight=weight):
                return kd.FeatureMatch(
                    *tap, loss=loss, weight=weight, projection="auto"
                )

            runs[name] = (title, match)
    return runs


def run_seed(seed, data, args) -> dict:
    """Trains the teacher and every student for one seed."""
    (x_train, y_train), (x_eval, y_eval) = data
    shape = x_train.shape[1:]
    num_classes = int(max(y_train.max(), y_eval.max())) + 1
    steps = int(np.ceil(len(x_train) / args.batch_size))
    epochs = args.student_epochs
    hard_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    verbose = 2 if args.verbose else 0
    times = {}
    start = time.perf_counter()

    keras.utils.set_random_seed(seed)
    teacher = conv_net(
        shape,
        num_classes,
        args.teacher_widths,
        dropout=args.dropout,
        prefix="t_",
        name="teacher",
    )
    teacher.compile(
        optimizer=_optimizer(args.learning_rate, args.teacher_epochs, steps),
        loss=hard_loss,
    )
    teacher.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.teacher_epochs,
        verbose=verbose,
    )
    times["teacher"] = time.perf_counter() - start

    # Every student starts from these weights.
    keras.utils.set_random_seed(seed + 1000)
    initial_weights = conv_net(
        shape, num_classes, args.student_widths, prefix="s_"
    ).get_weights()

    def student(name):
        model = conv_net(
            shape, num_classes, args.student_widths, prefix="s_", name=name
        )
        model.set_weights(initial_weights)
        return model

    def fit(run, trainer):
        # Seeded just before `fit`: every run draws the same batches.
        keras.utils.set_random_seed(seed + 2000)
        begin = time.perf_counter()
        trainer.fit(
            x_train,
            y_train,
            batch_size=args.batch_size,
            epochs=epochs,
            verbose=verbose,
        )
        times[run] = time.perf_counter() - begin

    scratch = student("scratch_student")
    scratch.compile(
        optimizer=_optimizer(args.learning_rate, epochs, steps), loss=hard_loss
    )
    fit("scratch", scratch)
    trained = {"teacher": teacher, "scratch": scratch}
    adapters = {}
    for run, (_, match) in students(args).items():
        model = student(f"{run}_student")
        # Seeded before the Distiller creates its adapters (their initial
        # weights depend on the seed, not on the runs before).
        keras.utils.set_random_seed(seed + 3000)
        distiller = kd.Distiller(
            teacher=teacher,
            student=model,
            features=[] if match is None else [match()],
        )
        distiller.compile(
            optimizer=_optimizer(args.learning_rate, epochs, steps),
            loss=hard_loss,
            distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
            alpha=args.alpha,
        )
        fit(run, distiller)
        trained[run] = model
        adapters[run] = list(distiller.adapters)

    accuracy = {name: _accuracy(m, x_eval, y_eval) for name, m in trained.items()}
    return {
        "seed": seed,
        "accuracy": accuracy,
        "train_time_s": times,
        "wall_time_s": time.perf_counter() - start,
        "initial_weights": initial_weights,
        "models": trained,
        "adapters": adapters,
    }


def tap_shapes(args, input_shape, num_classes) -> dict:
    """The tapped blocks' output shapes (without the batch) and parameters."""
    shapes = {}
    for side, widths, prefix in (
        ("teacher", args.teacher_widths, "t_"),
        ("student", args.student_widths, "s_"),
    ):
        model = conv_net(input_shape, num_classes, widths, args.dropout, prefix)
        layer = model.get_layer(f"{prefix}block{args.tap_block}")
        shapes[side] = {
            "layer": layer.name,
            "shape": tuple(layer.output.shape[1:]),
            "params": int(model.count_params()),
        }
    return shapes


def columns(results) -> list:
    """`(key, header)` of the table's columns, in order."""
    runs = [("teacher", "teacher"), ("scratch", "scratch")]
    return runs + list(results["headers"].items())


def print_results(results: dict) -> None:
    """Prints accuracies per seed, their mean and the gain over scratch."""
    cols = columns(results)
    widths = [max(9, len(header) + 2) for _, header in cols]
    config, taps = results["config"], results["taps"]
    print()
    print(
        f"{results['dataset']} {results['split']} accuracy (%) on "
        f"{results['n_eval']:,} images (seeds {' '.join(map(str, results['seeds']))}); "
        f"trained on {results['n_train']:,} images, teacher "
        f"{config['teacher_epochs']} epochs, students {config['student_epochs']}"
    )
    t, s = taps["teacher"], taps["student"]
    print(
        f"teacher: CNN {'-'.join(map(str, config['teacher_widths']))}, "
        f"{t['params']:,} parameters; student: CNN "
        f"{'-'.join(map(str, config['student_widths']))}, {s['params']:,}; taps: "
        f"{t['layer']} {t['shape']} <- {s['layer']} {s['shape']}"
    )

    def row(label, values):
        cells = "".join(f"{v:>{w}}" for v, w in zip(values, widths))
        return f"{label:<9}{cells}"

    print(row("", [header for _, header in cols]))
    for run in results["per_seed"]:
        acc = run["accuracy"]
        print(row(f"seed {run['seed']}", [f"{100 * acc[k]:.2f}" for k, _ in cols]))
    mean = results["mean_accuracy"]
    print(row("mean", [f"{100 * mean[k]:.2f}" for k, _ in cols]))
    gains, wins = results["gain_over_scratch"], results["wins_over_scratch"]
    n = len(results["per_seed"])
    print(
        row(
            "vs scr.", [f"{100 * gains[k]:+.2f}" if k in gains else "" for k, _ in cols]
        )
    )
    print(row("wins", [f"{wins[k]}/{n}" if k in wins else "" for k, _ in cols]))
    print(
        "vs scr.: mean accuracy minus the scratch student's, in points; wins: "
        "seeds where the student beat it."
    )
    print(
        f"logits: KLDivergence(T={config['temperature']:g}), alpha="
        f"{config['alpha']:g}; hint: logits + weight * MSE(1x1 conv(student "
        "block), teacher block) (FitNets); AT: logits + weight * "
        "AttentionTransfer(p=2). Weights: hint "
        f"{' '.join(f'{w:g}' for w in config['hint_weight'])}, AT "
        f"{' '.join(f'{w:g}' for w in config['at_weight'])}."
    )
    print(f"wall time: {results['wall_time_s']:.0f} s")


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _non_negative(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Feature distillation on MNIST: a thin CNN student from "
        "scratch, with KD on the logits, with a FitNets hint (projected MSE) "
        "and with attention transfer on a middle block.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dataset",
        choices=["mnist", "digits"],
        default="mnist",
        help="MNIST from tfds, or scikit-learn's 8x8 digits (offline)",
    )
    parser.add_argument(
        "--data-dir",
        default=str(_SHARED_TFDS) if _SHARED_TFDS.is_dir() else None,
        help="TFDS data dir holding MNIST (None: download)",
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
        help="report on held-out training images (5,000 MNIST images after "
        "--max-train; digits: 300) instead of the test set; use this to "
        "choose the feature weights",
    )
    parser.add_argument(
        "--max-train",
        type=_positive(int),
        default=None,
        help="training images to use, the first ones (None: 20,000 for "
        "MNIST, all for digits)",
    )
    parser.add_argument(
        "--teacher-widths",
        type=_positive(int),
        nargs="+",
        default=[32, 64, 128],
        help="channels of each of the teacher's convolution blocks",
    )
    parser.add_argument(
        "--student-widths",
        type=_positive(int),
        nargs="+",
        default=[8, 16, 32],
        help="channels of each of the student's blocks (as many as the teacher's)",
    )
    parser.add_argument(
        "--tap-block",
        type=_positive(int),
        default=2,
        help="the block (from 1) whose convolution both feature terms read",
    )
    parser.add_argument(
        "--dropout", type=float, default=0.3, help="the teacher's dropout rate"
    )
    parser.add_argument("--teacher-epochs", type=_positive(int), default=10)
    parser.add_argument(
        "--student-epochs",
        type=_positive(int),
        default=10,
        help="epochs of every student",
    )
    parser.add_argument(
        "--temperature",
        type=_positive(float),
        default=4.0,
        help="temperature of the KL term of every distilled student",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.9,
        help="weight of the KL term (1 - alpha weights the hard labels)",
    )
    parser.add_argument(
        "--hint-weight",
        type=_non_negative,
        nargs="+",
        default=[10.0],
        help="weight of the FitNets hint (MSE); several values: one student each",
    )
    parser.add_argument(
        "--at-weight",
        type=_non_negative,
        nargs="+",
        default=[100.0],
        help="weight of attention transfer; several values: one student each",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive(float),
        default=1e-3,
        help="Adam's initial learning rate (cosine decay to 0)",
    )
    parser.add_argument("--batch-size", type=_positive(int), default=128)
    parser.add_argument(
        "--verbose", action="store_true", help="show Keras's per-epoch logs"
    )
    args = parser.parse_args(argv)
    if len(args.student_widths) != len(args.teacher_widths):
        parser.error(
            "arguments --teacher-widths and --student-widths must give as many "
            f"blocks, got {len(args.teacher_widths)} and {len(args.student_widths)}"
        )
    if args.tap_block > len(args.teacher_widths):
        parser.error(
            f"argument --tap-block: the networks have {len(args.teacher_widths)} "
            f"blocks, got {args.tap_block}"
        )
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"argument --dropout: must be in [0, 1), got {args.dropout:g}")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"argument --alpha: must be in [0, 1], got {args.alpha:g}")
    for option in ("hint_weight", "at_weight"):
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
        A dict with `per_seed` (one entry per seed: `accuracy` of the
        `teacher`, `scratch`, `logits` and each feature student (`hint`,
        `attention`, or `hint_w{w}` / `attention_w{w}` for several
        weights); timings; the students' `initial_weights`; the trained
        `models`; and `adapters`, each distilled student's
        `Distiller.adapters`), `mean_accuracy`, `gain_over_scratch` and
        `wins_over_scratch` (per distilled student), `headers` (the
        students' column headers), `taps` (the tapped layers' shapes and
        the models' parameters), `n_train`, `n_eval`, `split`,
        `wall_time_s` and `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    data = load_data(args.dataset, args.data_dir, args.validation, args.max_train)
    (x_train, y_train), (_, y_eval) = data
    num_classes = int(max(y_train.max(), y_eval.max())) + 1
    per_seed = []
    for seed in args.seeds:
        run = run_seed(seed, data, args)
        per_seed.append(run)
        if args.verbose:
            print(f"seed {seed}: {run['accuracy']} ({run['wall_time_s']:.0f} s)")
    names = list(per_seed[0]["accuracy"])
    mean = {
        name: float(np.mean([run["accuracy"][name] for run in per_seed]))
        for name in names
    }
    distilled = [name for name in names if name not in ("teacher", "scratch")]
    results = {
        "dataset": args.dataset,
        "split": "validation" if args.validation else "test",
        "n_train": int(len(x_train)),
        "n_eval": int(len(y_eval)),
        "seeds": list(args.seeds),
        "per_seed": per_seed,
        "mean_accuracy": mean,
        "gain_over_scratch": {name: mean[name] - mean["scratch"] for name in distilled},
        "wins_over_scratch": {
            name: sum(
                run["accuracy"][name] > run["accuracy"]["scratch"] for run in per_seed
            )
            for name in distilled
        },
        "headers": {name: header for name, (header, _) in students(args).items()},
        "taps": tap_shapes(args, x_train.shape[1:], num_classes),
        "wall_time_s": time.perf_counter() - start,
        "config": {k: v for k, v in vars(args).items() if k != "verbose"},
    }
    print_results(results)
    return results


if __name__ == "__main__":
    main()
