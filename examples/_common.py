"""What the examples share: options, training helpers, the seed loop, tables.

Not an example itself: each script of `examples/` imports it as a sibling
module. Run as a script, Python puts the script's folder on `sys.path`;
loaded from its file (as the tests do), the script puts its folder there
first. What is here is what two or more examples do the same way:

* **options**: `parser` (defaults shown in `--help`), the common options
  (`add_dataset`, `add_seeds`, `add_validation`, `add_alpha`,
  `add_optimizer`, `add_verbose`, `add_without_teacher`), argparse types
  (`positive`, `non_negative`) and the checks run after parsing
  (`check_fraction`, `check_distinct`, `check_minimum`);
* **training**: the hard-label loss, Adam with a cosine decay, `SeedRun`
  (one seed's teacher, compiles and timed fits), accuracy, the images of
  `keras_kd.data` (`image_splits`, `load_images`);
* **the seed loop and its summary**: `run_seeds`, `mean_over_seeds`,
  `wins_over`, `summary`, `config`;
* **tables**: `Table` (fixed-width columns, as the figures in BENCHMARKS.md
  were printed), `print_seed_rows` (a row a seed and the mean),
  `print_vs_scratch` (gain and wins over the scratch student),
  `print_accuracy_table` (both, for accuracies), titles and the wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

import keras_kd as kd
from keras_kd.backend import keras

SEEDS_HELP = "one full run (teacher and every student) per seed"
ALPHA_HELP = "weight of the distillation term (1 - alpha weights the hard labels)"
COSINE_HELP = "Adam's initial learning rate (cosine decay to 0)"


# Options.


def parser(description: str) -> argparse.ArgumentParser:
    """An `ArgumentParser` that shows each option's default in `--help`."""
    return argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def positive(kind: type) -> Callable[[str], float | int]:
    """An argparse type: `kind(text)`, refused unless > 0."""

    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def non_negative(kind: type) -> Callable[[str], float | int]:
    """An argparse type: `kind(text)`, refused unless >= 0."""

    def parse(text):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_dataset(
    parser: argparse.ArgumentParser,
    digits: str = "offline",
    data_dir: str | None = None,
) -> None:
    """`--dataset` (`mnist` or `digits`) and `--data-dir`.

    Args:
        parser: the parser to add them to.
        digits: what `--help` says of scikit-learn's digits, in parentheses.
        data_dir: the default of `--data-dir`.
    """
    parser.add_argument(
        "--dataset",
        choices=["mnist", "digits"],
        default="mnist",
        help=f"MNIST from tfds, or scikit-learn's 8x8 digits ({digits})",
    )
    parser.add_argument(
        "--data-dir",
        default=data_dir,
        help="TFDS data dir holding MNIST (None: download)",
    )


def shared_tfds_dir() -> str | None:
    """`../shared/datasets/tfds` beside the project's root, where it exists
    (MNIST offline), else None (tfds's own data dir)."""
    path = pathlib.Path(__file__).resolve().parents[2] / "shared/datasets/tfds"
    return str(path) if path.is_dir() else None


def add_seeds(parser: argparse.ArgumentParser, help: str | None = SEEDS_HELP) -> None:
    """`--seeds`: one or more ints, `0 1 2` by default."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help=help)


def add_validation(parser: argparse.ArgumentParser, help: str) -> None:
    """`--validation`: report on held-out training images, not the test set."""
    parser.add_argument("--validation", action="store_true", help=help)


def add_alpha(
    parser: argparse.ArgumentParser, default: float, help: str = ALPHA_HELP
) -> None:
    """`--alpha`, the weight of the distillation term."""
    parser.add_argument("--alpha", type=float, default=default, help=help)


def add_optimizer(
    parser: argparse.ArgumentParser,
    learning_rate: float = 1e-3,
    help: str | None = COSINE_HELP,
    batch_size: int = 128,
    checked: bool = False,
) -> None:
    """`--learning-rate` and `--batch-size`; with `checked`, a value that is
    not > 0 is refused as argparse refuses a malformed one."""
    rate, size = (positive(float), positive(int)) if checked else (float, int)
    parser.add_argument("--learning-rate", type=rate, default=learning_rate, help=help)
    parser.add_argument("--batch-size", type=size, default=batch_size)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: Keras's per-epoch logs."""
    parser.add_argument(
        "--verbose", action="store_true", help="show Keras's per-epoch logs"
    )


def add_without_teacher(parser: argparse.ArgumentParser, temperature: float) -> None:
    """The options of the examples without a pre-trained teacher (online,
    self-distillation): `--temperature`, `--alpha` (0.5), a constant
    `--learning-rate` (1e-3), `--batch-size` and `--verbose` (Keras's)."""
    parser.add_argument("--temperature", type=float, default=temperature)
    add_alpha(parser, 0.5, "weight of the distillation term")
    add_optimizer(parser, help=None)
    parser.add_argument("--verbose", type=int, default=0, help="Keras's verbose")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_fraction(
    parser: argparse.ArgumentParser, args, name: str, closed: bool = True
) -> None:
    """Exits (argparse's error) unless `args.<name>` is in [0, 1] (or [0, 1)
    when not `closed`)."""
    value = getattr(args, name)
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        bounds = "[0, 1]" if closed else "[0, 1)"
        parser.error(f"argument {_flag(name)}: must be in {bounds}, got {value:g}")


def check_distinct(parser: argparse.ArgumentParser, args, *names: str) -> None:
    """Exits unless each of the lists `args.<name>` holds each weight once."""
    for name in names:
        weights = getattr(args, name)
        if len(set(weights)) != len(weights):
            parser.error(
                f"argument {_flag(name)}: each weight once, got "
                f"{' '.join(f'{w:g}' for w in weights)}"
            )


def check_minimum(
    parser: argparse.ArgumentParser, args, names: Iterable[str], minimum: int
) -> None:
    """Exits unless every `args.<name>` is at least `minimum`."""
    for name in names:
        if getattr(args, name) < minimum:
            parser.error(f"argument {_flag(name)}: must be >= {minimum}")


# Training.


def hard_loss():
    """Sparse categorical cross-entropy on logits: the hard-label loss."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def cosine_adam(learning_rate: float, epochs: int, steps_per_epoch: int):
    """Adam with a cosine decay of the learning rate to 0 over the run."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps_per_epoch)
    )
    return keras.optimizers.Adam(schedule)


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in one pass over `examples` examples."""
    return int(np.ceil(examples / batch_size))


def fit_verbosity(args) -> int:
    """Keras's `verbose`: 2 (a line an epoch) with `--verbose`, else 0."""
    return 2 if args.verbose else 0


@contextlib.contextmanager
def timed(times: dict, name: str):
    """Records the seconds its block takes in `times[name]`."""
    begin = time.perf_counter()
    yield
    times[name] = time.perf_counter() - begin


class SeedRun:
    """One seed's training: the seed, the arguments, the training arrays,
    the steps an epoch, Keras's `verbose`, each run's seconds (`times`) and
    the start time.

    Args:
        seed: the seed.
        args: the parsed arguments (`learning_rate`, `batch_size`,
            `verbose`).
        x: the training inputs.
        y: their labels.
    """

    def __init__(self, seed: int, args, x, y):
        self.seed, self.args, self.x, self.y = seed, args, x, y
        self.steps = steps_per_epoch(len(x), args.batch_size)
        self.verbose = fit_verbosity(args)
        self.times = {}
        self.start = time.perf_counter()

    def compile(self, trainer, epochs: int, steps: int | None = None, **kwargs):
        """`trainer.compile` with `cosine_adam` over `epochs` epochs (of
        `steps` steps; None: an epoch of the training arrays) and, unless
        `kwargs` gives one, the hard loss; returns `trainer`."""
        kwargs.setdefault("loss", hard_loss())
        steps = self.steps if steps is None else steps
        optimizer = cosine_adam(self.args.learning_rate, epochs, steps)
        trainer.compile(optimizer=optimizer, **kwargs)
        return trainer

    def fit(self, run: str, trainer, epochs: int) -> None:
        """`trainer.fit` on the training arrays, timed as `run`."""
        with timed(self.times, run):
            trainer.fit(
                self.x,
                self.y,
                batch_size=self.args.batch_size,
                epochs=epochs,
                verbose=self.verbose,
            )

    def teacher(self, build: Callable, epochs: int, **kwargs):
        """Seeds with the seed, builds the teacher (`build()`), compiles it
        (`kwargs`) and fits it, timed as `teacher`."""
        keras.utils.set_random_seed(self.seed)
        teacher = build()
        self.compile(teacher, epochs, **kwargs)
        self.fit("teacher", teacher, epochs)
        return teacher

    def result(self, **fields) -> dict:
        """The seed's results: `seed`, `fields` (its figures,
        `initial_weights`, `models`...), `train_time_s` and `wall_time_s`."""
        return {
            "seed": self.seed,
            **fields,
            "train_time_s": self.times,
            "wall_time_s": time.perf_counter() - self.start,
        }


def predicted(model, x, batch_size: int = 1000) -> np.ndarray:
    """The arg-max class of `model` on each image of `x`."""
    return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)


def accuracy(model, x, y, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on `(x, y)`."""
    return float(np.mean(predicted(model, x, batch_size) == y))


def image_splits(
    dataset: str,
    data_dir: str | None,
    validation_size: int,
    validation: bool = False,
    max_train: int | None = None,
):
    """The training and evaluation images, from `kd.data`.

    Args:
        dataset: `"mnist"` (TensorFlow Datasets) or `"digits"` (offline).
        data_dir: the TFDS data dir for MNIST; None lets tfds download it.
        validation_size: images held out of the training set by
            `validation`.
        validation: if True, the last `validation_size` training images
            (loaded on top of `max_train`) are the evaluation set, and the
            test set is not touched.
        max_train: training images to load, the first ones (None: all).

    Returns:
        `(x_train, y_train), (x_eval, y_eval)`: images of shape
        `(n, height, width, 1)` in [0, 1] and int64 labels.
    """
    if validation and max_train is not None:
        max_train += validation_size
    train, test, _, _ = kd.data.load_image_classification(
        dataset, data_dir=data_dir, max_train=max_train
    )
    if validation:
        return kd.data.split_validation(*train, validation_size)
    return train, test


def load_images(args):
    """`(train, test, num_classes)` of `args.dataset` (`args.data_dir`,
    `args.max_train`) from `kd.data.load_image_classification`."""
    train, test, num_classes, _ = kd.data.load_image_classification(
        args.dataset, data_dir=args.data_dir, max_train=args.max_train
    )
    return train, test, num_classes


def mlp_shape(input_size: int, hidden, num_classes: int) -> str:
    """`"64-32-10"`: an MLP's layer sizes, input to logits."""
    return "-".join(map(str, [input_size, *hidden, num_classes]))


def sizes_text(dataset: str, train, test) -> str:
    """`"digits: 1347 training / 450 test images"`."""
    return f"{dataset}: {len(train[0])} training / {len(test[0])} test images"


# The seed loop and its summary.


def run_seeds(args, run_seed: Callable[[int], dict], shown: str) -> list:
    """`run_seed(seed)` for each of `args.seeds`, in order.

    With `--verbose`, each run's `shown` figures and wall time are printed
    as it ends.
    """
    per_seed = []
    for seed in args.seeds:
        run = run_seed(seed)
        per_seed.append(run)
        if args.verbose:
            print(f"seed {seed}: {run[shown]} ({run['wall_time_s']:.0f} s)")
    return per_seed


def mean_over_seeds(per_seed: Sequence[dict], key: str) -> dict:
    """`{name: mean over the runs of run[key][name]}`."""
    return {
        name: float(np.mean([run[key][name] for run in per_seed]))
        for name in per_seed[0][key]
    }


def wins_over(
    per_seed: Sequence[dict],
    key: str,
    names: Iterable[str],
    baseline: str = "scratch",
    lower_is_better: bool = False,
) -> dict:
    """`{name: in how many runs run[key][name] beat run[key][baseline]}`."""
    sign = -1.0 if lower_is_better else 1.0
    return {
        name: sum(sign * run[key][name] > sign * run[key][baseline] for run in per_seed)
        for name in names
    }


def summary(args, per_seed: list, n_eval: int, start: float, **fields) -> dict:
    """The results of an image example: `dataset`, `split`, `n_eval`,
    `seeds`, `per_seed`, `fields`, `wall_time_s` since `start` and `config`."""
    return {
        "dataset": args.dataset,
        "split": "validation" if args.validation else "test",
        "n_eval": int(n_eval),
        "seeds": list(args.seeds),
        "per_seed": per_seed,
        **fields,
        "wall_time_s": time.perf_counter() - start,
        "config": config(args),
    }


def config(args) -> dict:
    """The parsed arguments as a dict, but `verbose`."""
    return {k: v for k, v in vars(args).items() if k != "verbose"}


# Tables.


def seeds_text(seeds: Iterable[int]) -> str:
    """`"0 1 2"`: the seeds as a table's title names them."""
    return " ".join(map(str, seeds))


def accuracy_title(results: dict) -> str:
    """`"mnist test accuracy (%) on 10,000 images (seeds 0 1 2)"`."""
    return (
        f"{results['dataset']} {results['split']} accuracy (%) on "
        f"{results['n_eval']:,} images (seeds {seeds_text(results['seeds'])})"
    )


class Table:
    """Fixed-width columns: a label, then one right-aligned cell a column.

    Args:
        headers: the columns' headers.
        label_width: width of the label column (left-aligned).
        min_width: the narrowest column.
        pad: spaces at least before the longest header.
    """

    def __init__(
        self, headers: Sequence[str], label_width: int, min_width: int, pad: int
    ):
        self.headers = list(headers)
        self.label_width = label_width
        self.widths = [max(min_width, len(header) + pad) for header in headers]

    def row(self, label: str, values: Iterable[str]) -> str:
        """One line: `label`, then each value right-aligned in its column."""
        cells = "".join(f"{v:>{w}}" for v, w in zip(values, self.widths))
        return f"{label:<{self.label_width}}{cells}"


def print_seed_rows(
    table: Table,
    keys: Sequence[str],
    per_seed: Sequence[dict],
    key: str,
    mean: dict,
    number: Callable[[float], str],
) -> None:
    """The header, one row a seed (`run[key][k]` for each column `k`) and
    the mean row, each value written by `number`."""
    print(table.row("", table.headers))
    for run in per_seed:
        print(table.row(f"seed {run['seed']}", [number(run[key][k]) for k in keys]))
    print(table.row("mean", [number(mean[k]) for k in keys]))


def print_vs_scratch(
    table: Table,
    keys: Sequence[str],
    gains: dict,
    wins: dict,
    runs: int,
    number: Callable[[float], str],
) -> None:
    """Rows `vs scr.` (each gain written by `number`) and `wins` (`w/runs`);
    columns without a gain stay blank."""
    print(table.row("vs scr.", [number(gains[k]) if k in gains else "" for k in keys]))
    print(table.row("wins", [f"{wins[k]}/{runs}" if k in wins else "" for k in keys]))


def print_accuracy_table(results: dict, cols: list, table: Table, who: str) -> None:
    """Accuracy (%) per seed of each column `(key, header)` of `cols`, its
    mean, the gain over the scratch student and the wins, and their legend
    (`who` beat it)."""
    keys = [key for key, _ in cols]
    per_seed = results["per_seed"]
    mean = results["mean_accuracy"]
    print_seed_rows(table, keys, per_seed, "accuracy", mean, lambda a: f"{100 * a:.2f}")
    gains, wins = results["gain_over_scratch"], results["wins_over_scratch"]
    print_vs_scratch(
        table, keys, gains, wins, len(per_seed), lambda g: f"{100 * g:+.2f}"
    )
    print(
        "vs scr.: mean accuracy minus the scratch student's, in points; wins: "
        f"seeds where the {who} beat it."
    )


def print_wall_time(results: dict) -> None:
    """`wall time: 123 s`, the last line of every example's report."""
    print(f"wall time: {results['wall_time_s']:.0f} s")
