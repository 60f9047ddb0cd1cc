"""A transfer set: 1,000 labelled MNIST images and 59,000 without labels.

A user with a few labelled examples and many unlabelled ones trains a good
teacher on what is labelled, then lets it label the rest for a student: the
unlabelled images become a transfer set (Hinton et al. 2015) that
`keras_kd.data.mix` mixes into every batch with the labelled ones.

**Data.** MNIST's 60,000 training images: `--labels 1000` of them (100 a
class, drawn with `--label-seed`, the same for every seed) keep their labels;
the other 59,000 are the transfer set, whose labels are dropped when the
split is made (`split_labels`): no training reads them. Accuracy is measured on the
10,000 test images. `--validation` holds out the last 10,000 training images
instead and reports on them (1,000 labelled, 49,000 unlabelled from the
rest): choose settings there, never on the test set.

**The teacher.** Where it comes from decides what the figures mean. By
default (`--teacher-labels labelled`) it is trained on the 1,000 labelled
images only, with 2-pixel jitter (`keras_kd.augment.jitter`), for 200
epochs (on the validation split its accuracy stopped rising, at 96.3%,
after about 150): no label outside the 1,000 is used anywhere, the honest
semi-supervised setting. `--teacher-labels all` trains it on all 60,000
labels instead (10 epochs): a different scenario, a teacher trained on much
data teaching through unlabelled images, and the table says so. It is a
convnet without pooling (`keras_kd.models.strided_cnn`, 32 and 64 filters,
128 units: 421,642 parameters on MNIST), fast enough to label 59,000 images
on every pass over the transfer set.

**The student** is an MLP with one hidden layer of 256 ReLUs
(`keras_kd.models.mlp`, 203,530 parameters), from the same initial weights
in every run of a seed, trained with Adam (1e-3, cosine decay to 0), batch
128:

1. `scratch`: on the 1,000 labelled images, 150 epochs;
2. `jittered`: the same with the teacher's jitter
   (`kd.Distiller(teacher=None, augmentation=...)`): what augmentation
   alone gives;
3. `distilled`: distilled on the 1,000 labelled images only
   (`kd.Distiller`, `KLDivergence(temperature=4)`, `alpha=0.9`), 150 epochs;
4. `transfer`: distilled on the labels plus the transfer set: each batch of
   `kd.data.mix` holds 32 labelled and 96 unlabelled images; the hard loss is
   taken on the labelled rows, the distillation term on every row; 15
   passes over the transfer set (615 steps each);
5. `consistent`: run 4 with the jitter applied inside the train step, so
   that teacher and student see the same shifted images (consistent
   teaching, Beyer et al. 2022); `--no-consistent` skips it.

It prints the test accuracy of every model per seed and averaged, and each
student's agreement with the teacher. About 2-3 minutes a seed on two CPU
cores, most of it in the two runs over the transfer set. Figures:
BENCHMARKS.md, "Transfer set".

Drawing 100 images of each class reads the training labels, as
semi-supervised benchmarks do to make the labelled set balanced; training
never reads a label outside it (with `--teacher-labels labelled`).

Usage:

```
python examples/transfer_set.py --data-dir ../shared/datasets/tfds   # 3 seeds, test set
python examples/transfer_set.py --data-dir ../shared/datasets/tfds \\
    --validation                                    # choose settings here
python examples/transfer_set.py --data-dir ../shared/datasets/tfds \\
    --teacher-labels all                            # a teacher with all labels
python examples/transfer_set.py --dataset digits    # offline: 100 labelled
```

With `--dataset digits` it runs on scikit-learn's bundled 8x8 digits (1,347
training images: 100 labelled, 1,247 unlabelled; 1-pixel jitter), for
quick checks without a download; those figures check the plumbing.
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

# Images held out of the training set by `--validation`, per dataset.
_VALIDATION_SIZE = {"mnist": 10_000, "digits": 300}
# Per-dataset defaults of `--labels` and `--jitter`.
_LABELS = {"mnist": 1000, "digits": 100}
_JITTER = {"mnist": 2, "digits": 1}
# `--teacher-epochs` by default, per `--teacher-labels`.
_TEACHER_EPOCHS = {"labelled": 200, "all": 10}

# The students, in the table's order.
STUDENTS = ("scratch", "jittered", "distilled", "transfer", "consistent")
_LEGEND = {
    "scratch": "the labelled images",
    "jittered": "the labelled images, jittered",
    "distilled": "distilled on the labelled images only",
    "transfer": "distilled on labelled + transfer set (kd.data.mix)",
    "consistent": "transfer, with the jitter on teacher and student",
}


def evaluation_data(
    dataset: str = "mnist", data_dir: str | None = None, validation: bool = False
):
    """The training pool and the set accuracy is measured on, from `kd.data`.

    Args:
        dataset: `"mnist"` (TensorFlow Datasets) or `"digits"` (offline).
        data_dir: the TFDS data dir for MNIST; None lets tfds download it.
        validation: if True, the last images of the training set are held
            out (`kd.data.split_validation`) and returned as the evaluation
            set; the test set is not touched.

    Returns:
        `(x_pool, y_pool), (x_eval, y_eval)`.
    """
    size = _VALIDATION_SIZE[dataset]
    return _common.image_splits(dataset, data_dir, size, validation)


def split_labels(x, y, labels: int, seed: int = 0):
    """Keeps the labels of `labels` images, as many of each class as can be.

    Class `c` (in sorted order) keeps `labels // k` labels, plus one for the
    first `labels % k` classes, drawn at random with `seed`; the other
    images lose theirs.

    Args:
        x: the training images.
        y: their labels.
        labels: how many images keep their labels.
        seed: seed of the draw.

    Returns:
        `((x_labelled, y_labelled), x_unlabelled, index)`: the labelled
        images (shuffled) and labels, the unlabelled images (in their
        original order, without labels) and the labelled images' indices
        in `x`.
    """
    classes = np.unique(y)
    k = len(classes)
    if not k <= labels < len(y):
        raise ValueError(
            f"Argument `labels` must be between the number of classes ({k}) and "
            f"the number of training images ({len(y)}, exclusive). Received: "
            f"labels={labels}."
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(y == c)
        count = labels // k + (i < labels % k)
        if count > len(members):
            raise ValueError(
                f"Argument `labels` asks for {count} labelled images of class "
                f"{c}, which has {len(members)}. Received: labels={labels}."
            )
        chosen.append(rng.choice(members, count, replace=False))
    index = rng.permutation(np.concatenate(chosen))
    unlabelled = np.ones(len(y), bool)
    unlabelled[index] = False
    return (x[index], y[index]), x[unlabelled], index


def _jitter(args, seed):
    return kd.augment.jitter(args.jitter, seed=seed) if args.jitter else None


def train_teacher(run: _common.SeedRun, shape, num_classes: int):
    """The teacher, on its labels (`run`'s arrays), with jitter."""
    args = run.args
    keras.utils.set_random_seed(run.seed)
    teacher = models.strided_cnn(
        shape,
        num_classes,
        filters=args.teacher_filters,
        hidden=args.teacher_hidden,
        name="teacher",
    )
    trainer = kd.Distiller(
        teacher=None, student=teacher, augmentation=_jitter(args, run.seed)
    )
    run.compile(trainer, args.teacher_epochs)
    run.fit("teacher", trainer, args.teacher_epochs)
    return teacher


def run_seed(seed, labelled, unlabelled, teacher_data, evaluation, args) -> dict:
    """Trains the teacher and every student for one seed.

    Args:
        seed: the run's seed.
        labelled: `(x, y)`, the labelled images.
        unlabelled: the transfer set's images (no labels).
        teacher_data: `(x, y)` the teacher trains on: `labelled`, or every
            training image with `--teacher-labels all`.
        evaluation: `(x, y)` accuracy is measured on.
        args: the parsed arguments.
    """
    x_eval, y_eval = evaluation
    shape = labelled[0].shape[1:]
    num_classes = int(max(labelled[1].max(), y_eval.max())) + 1
    run = _common.SeedRun(seed, args, *teacher_data)
    teacher = train_teacher(run, shape, num_classes)

    # Every student starts from these weights.
    keras.utils.set_random_seed(seed + 1000)
    hidden = tuple(args.student_hidden)
    initial_weights = models.mlp(shape, num_classes, hidden).get_weights()
    trained = {"teacher": teacher}
    distillation = dict(
        distillation_loss=kd.losses.KLDivergence(temperature=args.temperature),
        alpha=args.alpha,
    )

    def train(name, run_teacher, data, epochs, steps_per_epoch, augmentation=None):
        student = models.mlp(shape, num_classes, hidden, name=f"{name}_student")
        student.set_weights(initial_weights)
        keras.utils.set_random_seed(seed + 2000)  # the same batches in each run
        model = student
        if run_teacher is not None or augmentation is not None:
            model = kd.Distiller(
                teacher=run_teacher, student=student, augmentation=augmentation
            )
        terms = distillation if run_teacher is not None else {}
        run.compile(model, epochs, steps_per_epoch, **terms)
        fit_args = dict(epochs=epochs, verbose=run.verbose)
        with _common.timed(run.times, name):
            if not epochs:
                pass  # left untrained (tf_keras's fit refuses 0 epochs)
            elif isinstance(data, tuple):
                model.fit(*data, batch_size=args.batch_size, **fit_args)
            else:
                model.fit(data, shuffle=False, **fit_args)
        trained[name] = student

    label_steps = _common.steps_per_epoch(len(labelled[1]), args.batch_size)
    epochs = args.label_epochs
    train("scratch", None, labelled, epochs, label_steps)
    train("jittered", None, labelled, epochs, label_steps, _jitter(args, seed))
    train("distilled", teacher, labelled, epochs, label_steps)

    def mixed():
        return kd.data.mix(
            labelled,
            unlabelled,
            batch_size=args.batch_size,
            unlabelled_fraction=args.unlabelled_fraction,
            seed=seed,
        )

    steps, epochs = int(mixed().cardinality()), args.transfer_epochs
    train("transfer", teacher, mixed(), epochs, steps)
    if args.consistent:
        train("consistent", teacher, mixed(), epochs, steps, _jitter(args, seed))

    predictions = {name: _common.predicted(m, x_eval) for name, m in trained.items()}
    return run.result(
        accuracy={name: float(np.mean(p == y_eval)) for name, p in predictions.items()},
        agreement={
            name: float(np.mean(p == predictions["teacher"]))
            for name, p in predictions.items()
            if name != "teacher"
        },
        transfer_steps_per_epoch=steps,
        initial_weights=initial_weights,
        models=trained,
    )


def print_results(results: dict) -> None:
    """Prints the accuracies per seed and their mean, and the setting."""
    config = results["config"]
    names = ["teacher", *(s for s in STUDENTS if s in results["mean_accuracy"])]
    table = _common.Table(names, 8, 9, 2)
    print()
    print(_common.accuracy_title(results))
    per_class = results["n_labelled"] // results["num_classes"]
    print(
        f"labelled: {results['n_labelled']:,} images (about {per_class} a class); "
        f"unlabelled transfer set: {results['n_unlabelled']:,} images"
    )
    jitter = f"{config['jitter']}-pixel jitter" if config["jitter"] else "no jitter"
    source = (
        f"the {results['n_labelled']:,} labelled images only"
        if config["teacher_labels"] == "labelled"
        else f"all {results['teacher_train_size']:,} training labels (a different "
        "scenario: labels outside the labelled set)"
    )
    print(
        f"teacher: strided convnet, {results['params']['teacher']:,} parameters, "
        f"trained on {source}, {jitter}, {config['teacher_epochs']} epochs"
    )
    shape = _common.mlp_shape(
        results["input_size"], config["student_hidden"], results["num_classes"]
    )
    print(
        f"student: MLP {shape}, {results['params']['student']:,} "
        f"parameters; {config['label_epochs']} epochs on the labelled images, "
        f"{config['transfer_epochs']} passes over the transfer set "
        f"({results['transfer_steps_per_epoch']} steps each)"
    )
    percent = "{:.2f}".format
    mean = results["mean_accuracy"]
    _common.print_seed_rows(
        table, names, results["per_seed"], "accuracy", mean, lambda a: percent(100 * a)
    )
    agreement = results["mean_agreement"]
    print(table.row("agrees", ["", *(percent(100 * agreement[n]) for n in names[1:])]))
    print("agrees: mean % of evaluation images where the student predicts the")
    print("teacher's class. Students:")
    for name in names[1:]:
        print(f"  {name}: {_LEGEND[name]}")
    _common.print_wall_time(results)


def _build_parser() -> argparse.ArgumentParser:
    parser = _common.parser(
        "1,000 labelled MNIST images and 59,000 unlabelled: a "
        "scratch student against students distilled from a teacher on the "
        "labels alone and on the labels plus the unlabelled transfer set."
    )
    _common.add_dataset(parser)
    _common.add_seeds(parser)
    _common.add_validation(
        parser,
        "hold out the end of the training set (10,000 MNIST images) and "
        "report on it instead of the test set; use this to choose settings",
    )
    add = parser.add_argument
    add(
        "--labels",
        type=int,
        default=None,
        help="training images that keep their labels (None: 1000 for MNIST, "
        "100 for digits); the rest are the transfer set",
    )
    add(
        "--label-seed",
        type=int,
        default=0,
        help="seed of the draw of the labelled images (the same for every seed)",
    )
    add(
        "--teacher-labels",
        choices=["labelled", "all"],
        default="labelled",
        help="train the teacher on the labelled images only, or on every "
        "training label (a different scenario)",
    )
    add(
        "--teacher-epochs",
        type=int,
        default=None,
        help="None: 200 with --teacher-labels labelled, 10 with all",
    )
    add(
        "--teacher-filters",
        type=int,
        default=32,
        help="filters of the teacher's first convolution (the second has twice)",
    )
    add("--teacher-hidden", type=int, default=128, help="the teacher's dense units")
    _add_student_options(parser)
    return parser


def _add_student_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--student-hidden",
        type=int,
        nargs="+",
        default=[256],
        help="units of each of the student MLP's hidden layers",
    )
    add(
        "--label-epochs",
        type=int,
        default=150,
        help="epochs of the students trained on the labelled images only "
        "(0: left untrained, for checks)",
    )
    add(
        "--transfer-epochs",
        type=int,
        default=15,
        help="passes over the transfer set of the transfer students (0: left "
        "untrained, for checks)",
    )
    add(
        "--unlabelled-fraction",
        type=float,
        default=0.75,
        help="share of unlabelled images in each batch of kd.data.mix",
    )
    add(
        "--jitter",
        type=int,
        default=None,
        help="random translation in pixels of the teacher's training, the "
        "jittered and the consistent students (None: 2 for MNIST, 1 for "
        "digits; 0: none)",
    )
    add(
        "--consistent",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the transfer student with consistent teaching",
    )
    add("--temperature", type=float, default=4.0, help="distillation temperature T")
    _common.add_alpha(parser, 0.9)
    _common.add_optimizer(parser)
    _common.add_verbose(parser)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.labels is None:
        args.labels = _LABELS[args.dataset]
    if args.jitter is None:
        args.jitter = _JITTER[args.dataset]
    if args.teacher_epochs is None:
        args.teacher_epochs = _TEACHER_EPOCHS[args.teacher_labels]
    positive = ("teacher_epochs", "teacher_filters", "teacher_hidden", "batch_size")
    _common.check_minimum(parser, args, positive, 1)
    _common.check_minimum(
        parser, args, ("label_epochs", "transfer_epochs", "jitter"), 0
    )
    if min(args.student_hidden) < 1:
        parser.error("argument --student-hidden: must be >= 1")
    return args


def main(argv=None) -> dict:
    """Runs the experiment and returns its results.

    Args:
        argv: command-line arguments (None: `sys.argv[1:]`).

    Returns:
        A dict with `per_seed` (one entry per seed: `accuracy` of the
        teacher and each student, `agreement` of each student with the
        teacher, timings, the students' `initial_weights` and the trained
        `models`), `mean_accuracy`, `mean_agreement`, the split's sizes
        (`n_labelled`, `n_unlabelled`, `teacher_train_size`, `n_eval`) and
        `labelled_index`, `params`, `split`, `wall_time_s` and `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    (x_pool, y_pool), evaluation = evaluation_data(
        args.dataset, args.data_dir, args.validation
    )
    labelled, unlabelled, index = split_labels(
        x_pool, y_pool, args.labels, args.label_seed
    )
    # The only place the pool's labels are read: the labelled images above,
    # and, in the other scenario, the teacher's training set.
    teacher_data = labelled if args.teacher_labels == "labelled" else (x_pool, y_pool)
    per_seed = _common.run_seeds(
        args,
        lambda s: run_seed(s, labelled, unlabelled, teacher_data, evaluation, args),
        "accuracy",
    )
    first = per_seed[0]
    results = _common.summary(
        args,
        per_seed,
        len(evaluation[1]),
        start,
        mean_accuracy=_common.mean_over_seeds(per_seed, "accuracy"),
        mean_agreement=_common.mean_over_seeds(per_seed, "agreement"),
        n_labelled=int(len(labelled[1])),
        n_unlabelled=int(len(unlabelled)),
        teacher_train_size=int(len(teacher_data[1])),
        labelled_index=index,
        num_classes=int(first["models"]["teacher"].output.shape[-1]),
        input_size=int(np.prod(x_pool.shape[1:])),
        params={
            "teacher": first["models"]["teacher"].count_params(),
            "student": first["models"]["scratch"].count_params(),
        },
        transfer_steps_per_epoch=first["transfer_steps_per_epoch"],
    )
    print_results(results)
    return results


if __name__ == "__main__":
    main()
