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
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common

import argparse
import time

import _common
import keras_kd as kd
from keras_kd.backend import keras

# The TFDS data dir beside the project's root, the default of `--data-dir`
# when it exists.

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
    return _common.image_splits(
        dataset, data_dir, _VALIDATION_SIZE[dataset], validation, max_train
    )


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
    epochs = args.student_epochs
    run = _common.SeedRun(seed, args, x_train, y_train)
    teacher = run.teacher(
        lambda: conv_net(
            shape,
            num_classes,
            args.teacher_widths,
            dropout=args.dropout,
            prefix="t_",
            name="teacher",
        ),
        args.teacher_epochs,
    )

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

    def fit(name, trainer):
        # Seeded just before `fit`: every run draws the same batches.
        keras.utils.set_random_seed(seed + 2000)
        run.fit(name, trainer, epochs)

    scratch = student("scratch_student")
    fit("scratch", run.compile(scratch, epochs))
    trained = {"teacher": teacher, "scratch": scratch}
    adapters = {}
    for name, (_, match) in students(args).items():
        model = student(f"{name}_student")
        # Seeded before the Distiller creates its adapters (their initial
        # weights depend on the seed, not on the runs before).
        keras.utils.set_random_seed(seed + 3000)
        distiller = kd.Distiller(
            teacher=teacher,
            student=model,
            features=[] if match is None else [match()],
        )
        run.compile(
            distiller,
            epochs,
            distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
            alpha=args.alpha,
        )
        fit(name, distiller)
        trained[name] = model
        adapters[name] = list(distiller.adapters)

    return run.result(
        accuracy={n: _common.accuracy(m, x_eval, y_eval) for n, m in trained.items()},
        initial_weights=initial_weights,
        models=trained,
        adapters=adapters,
    )


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
    table = _common.Table([header for _, header in cols], 9, 9, 2)
    config, taps = results["config"], results["taps"]
    print()
    print(
        f"{_common.accuracy_title(results)}; "
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
    _common.print_accuracy_table(results, cols, table, "student")
    print(
        f"logits: KLDivergence(T={config['temperature']:g}), alpha="
        f"{config['alpha']:g}; hint: logits + weight * MSE(1x1 conv(student "
        "block), teacher block) (FitNets); AT: logits + weight * "
        "AttentionTransfer(p=2). Weights: hint "
        f"{' '.join(f'{w:g}' for w in config['hint_weight'])}, AT "
        f"{' '.join(f'{w:g}' for w in config['at_weight'])}."
    )
    _common.print_wall_time(results)


def _build_parser() -> argparse.ArgumentParser:
    parser = _common.parser(
        "Feature distillation on MNIST: a thin CNN student from "
        "scratch, with KD on the logits, with a FitNets hint (projected MSE) "
        "and with attention transfer on a middle block."
    )
    _common.add_dataset(parser, data_dir=_common.shared_tfds_dir())
    _common.add_seeds(parser)
    _common.add_validation(
        parser,
        "report on held-out training images (5,000 MNIST images after "
        "--max-train; digits: 300) instead of the test set; use this to "
        "choose the feature weights",
    )
    add, positive = parser.add_argument, _common.positive
    add(
        "--max-train",
        type=positive(int),
        default=None,
        help="training images to use, the first ones (None: 20,000 for "
        "MNIST, all for digits)",
    )
    add(
        "--teacher-widths",
        type=positive(int),
        nargs="+",
        default=[32, 64, 128],
        help="channels of each of the teacher's convolution blocks",
    )
    add(
        "--student-widths",
        type=positive(int),
        nargs="+",
        default=[8, 16, 32],
        help="channels of each of the student's blocks (as many as the teacher's)",
    )
    add(
        "--tap-block",
        type=positive(int),
        default=2,
        help="the block (from 1) whose convolution both feature terms read",
    )
    add("--dropout", type=float, default=0.3, help="the teacher's dropout rate")
    add("--teacher-epochs", type=positive(int), default=10)
    add(
        "--student-epochs",
        type=positive(int),
        default=10,
        help="epochs of every student",
    )
    add(
        "--temperature",
        type=positive(float),
        default=4.0,
        help="temperature of the KL term of every distilled student",
    )
    _common.add_alpha(
        parser, 0.9, "weight of the KL term (1 - alpha weights the hard labels)"
    )
    for option, default, term in (
        ("hint", 10.0, "the FitNets hint (MSE)"),
        ("at", 100.0, "attention transfer"),
    ):
        add(
            f"--{option}-weight",
            type=_common.non_negative(float),
            nargs="+",
            default=[default],
            help=f"weight of {term}; several values: one student each",
        )
    _common.add_optimizer(parser, checked=True)
    _common.add_verbose(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = _build_parser()
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
    _common.check_fraction(parser, args, "dropout", closed=False)
    _common.check_fraction(parser, args, "alpha")
    _common.check_distinct(parser, args, "hint_weight", "at_weight")
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
    per_seed = _common.run_seeds(args, lambda s: run_seed(s, data, args), "accuracy")
    mean = _common.mean_over_seeds(per_seed, "accuracy")
    distilled = [name for name in mean if name not in ("teacher", "scratch")]
    results = _common.summary(
        args,
        per_seed,
        len(y_eval),
        start,
        n_train=int(len(x_train)),
        mean_accuracy=mean,
        gain_over_scratch={name: mean[name] - mean["scratch"] for name in distilled},
        wins_over_scratch=_common.wins_over(per_seed, "accuracy", distilled),
        headers={name: header for name, (header, _) in students(args).items()},
        taps=tap_shapes(args, x_train.shape[1:], num_classes),
    )
    print_results(results)
    return results


if __name__ == "__main__":
    main()
