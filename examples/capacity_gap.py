"""The capacity gap: a student with under 1% of its teacher's parameters.

A student far smaller than its teacher often learns little from it, or is
even hurt by it (Mirzadeh et al. 2020, "Improved knowledge distillation via
teacher assistant"; Cho and Hariharan 2019): whether distillation pays
depends on the objective and its settings. This example trains one teacher
and one tiny student architecture, and compares, from the same initial
weights, with the same optimizer, batches and epochs:

* `scratch`: the student trained on the labels alone;
* `T=1`, `T=4`, `T=10`: Hinton et al.'s KD (`kd.losses.KLDivergence`) at
  three temperatures (`--temperatures`);
* `DIST`: `kd.losses.DIST(temperature=1)` (Huang et al. 2022), which matches
  the correlation of the predictions rather than their values;
* `stdKL`: `kd.losses.KLDivergence(temperature=2, standardize=True)` (logit
  standardization, Sun et al. 2024);
* `DKD`: `kd.losses.DecoupledKD(temperature=4)` (Zhao et al. 2022), warmed up
  over the first epoch;
* `tune`: `kd.tune`'s pick: a Hyperband search over the objective, the
  temperature, alpha and mixup, with training on the labels alone as a trial
  it must beat on a held-out split by more than the paired test's margin
  (needs keras-tuner; `--no-tune` skips it);
* `chain`: a teacher-assistant chain (`kd.distill_chain`): the teacher
  teaches an assistant of intermediate size (`TA` in the table), which then
  teaches the student, each stage KD at T=4.

Every distilled run uses `alpha=0.5` (`--alpha`): the same weight of the
distillation term for every objective, so that only the objective changes.

**Setup (defaults).** The first 25,000 MNIST training images (a subset, to
fit the budget): every model trains on the first 20,000, and the last 5,000
are the held-out split on which `kd.tune` ranks its trials (no other run
uses them). Accuracy is measured on the 10,000 test images; `--validation`
loads 5,000 more training images and reports on those instead (choose
settings there, never on the test set). The teacher is an MLP with two
hidden layers of 512 ReLUs, dropout 0.3 and 2-pixel jitter
(`keras_kd.models.mlp`, 669,706 parameters), trained for 12 epochs; the
student an MLP with one hidden layer of 8 units (6,370 parameters: 0.95% of
the teacher; the script refuses a student over 1%); the assistant one of 64
units (50,890). Students train for 15 epochs (each chain stage too, and
`kd.tune`'s longest trials and its baseline), Adam 1e-3 with a cosine decay
to 0, batch 128.

It prints the accuracy of every run per seed and averaged, the mean
difference with the scratch student and in how many seeds each run beat
it, the parameter ratio, and `kd.tune`'s chosen configuration per seed.
About 3 minutes a seed on two CPU cores (`kd.tune` takes about half).
Figures: BENCHMARKS.md, "Capacity gap".

Usage:

```
python examples/capacity_gap.py --data-dir ../shared/datasets/tfds   # 3 seeds, test set
python examples/capacity_gap.py --data-dir ../shared/datasets/tfds \\
    --validation                                    # choose settings here
python examples/capacity_gap.py --dataset digits --learning-rate 0.01 \
    --teacher-epochs 30 --student-epochs 20 --batch-size 64   # offline
```

With `--dataset digits` it runs on scikit-learn's bundled 8x8 digits (all
1,347 training images: 1,147 to train on, 200 held out for `kd.tune`; the
teacher has 301,066 parameters, the student 610) for checks without a
download; those figures check the plumbing.
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

# The largest student the example allows, as a share of the teacher's
# parameters.
MAX_RATIO = 0.01

# Per dataset: training images loaded (None: all), those held out for
# `kd.tune`, and those held out further by `--validation`.
_MAX_TRAIN = {"mnist": 25_000, "digits": None}
_TUNE_HOLDOUT = {"mnist": 5_000, "digits": 200}
_VALIDATION_SIZE = {"mnist": 5_000, "digits": 300}


def load_data(
    dataset: str = "mnist",
    data_dir: str | None = None,
    validation: bool = False,
    max_train: int | None = None,
):
    """The training, tuning and evaluation splits, from `kd.data`.

    Args:
        dataset: `"mnist"` or `"digits"`.
        data_dir: the TFDS data dir for MNIST; None lets tfds download it.
        validation: if True, `_VALIDATION_SIZE` more training images are
            loaded and held out as the evaluation set; the test set is not
            touched.
        max_train: training images to load before that (None: the
            dataset's default, `_MAX_TRAIN`).

    Returns:
        `(fit, holdout, evaluation)`, each `(x, y)`: the images every model
        trains on, the last `_TUNE_HOLDOUT` training images on which
        `kd.tune` ranks its trials, and the set accuracy is measured on.
    """
    if max_train is None:
        max_train = _MAX_TRAIN[dataset]
    train, test = _common.image_splits(
        dataset, data_dir, _VALIDATION_SIZE[dataset], validation, max_train
    )
    fit, holdout = kd.data.split_validation(*train, _TUNE_HOLDOUT[dataset])
    return fit, holdout, test


def objectives(args, steps_per_epoch: int) -> dict:
    """The distillation runs: `{name: (column header, loss factory)}`."""
    runs = {
        f"kd_t{t:g}": (f"T={t:g}", lambda t=t: kd.losses.KLDivergence(t))
        for t in args.temperatures
    }
    runs["dist"] = ("DIST", lambda: kd.losses.DIST(temperature=1.0))
    runs["std_kl"] = (
        "stdKL",
        lambda: kd.losses.KLDivergence(temperature=2.0, standardize=True),
    )
    runs["dkd"] = (
        "DKD",
        lambda: kd.losses.DecoupledKD(temperature=4.0, warmup_steps=steps_per_epoch),
    )
    return runs


def parameter_ratio(student, teacher, limit: float = MAX_RATIO) -> float:
    """The student's share of the teacher's parameters; raises over `limit`."""
    ratio = student.count_params() / teacher.count_params()
    if ratio > limit:
        raise ValueError(
            f"The student has {student.count_params():,} parameters, "
            f"{ratio:.2%} of the teacher's {teacher.count_params():,}: this "
            f"example needs at most {limit:.0%}. Give a smaller "
            "--student-hidden or a larger --teacher-hidden."
        )
    return ratio


def train_students(run: _common.SeedRun, teacher, student) -> dict:
    """The scratch student and one student per objective, from the same
    initial weights (`student(name)` builds one) on the same batches."""
    epochs = run.args.student_epochs
    trained = {}

    def train(name, loss=None):
        model = student(f"{name}_student")
        # Seeded after the model is built, as `kd.distill_chain` and
        # `kd.tune` do: every run draws the same batches.
        keras.utils.set_random_seed(run.seed + 2000)
        if loss is None:
            trainer = run.compile(model, epochs)
        else:
            distiller = kd.Distiller(teacher=teacher, student=model)
            terms = dict(distillation_loss=loss, alpha=run.args.alpha)
            trainer = run.compile(distiller, epochs, **terms)
        run.fit(name, trainer, epochs)
        trained[name] = model

    train("scratch")
    for name, (_, make_loss) in objectives(run.args, run.steps).items():
        train(name, make_loss())
    return trained


def _shared(run: _common.SeedRun) -> dict:
    """What `kd.tune` and `kd.distill_chain` get alike: the hard loss, the
    optimizer, the batches and the seed of every other student run."""
    args = run.args
    return dict(
        loss=_common.hard_loss(),
        optimizer=_common.cosine_adam(
            args.learning_rate, args.student_epochs, run.steps
        ),
        metrics=["accuracy"],
        batch_size=args.batch_size,
        seed=run.seed + 2000,
        verbose=1 if args.verbose else 0,
    )


def _tune_summary(tuned) -> dict | None:
    if tuned is None:
        return None
    keys = ("config", "baseline_score", "trials")
    return {**{key: getattr(tuned, key) for key in keys}, "table": tuned.table()}


def run_seed(seed, data, args) -> dict:
    """Trains the teacher and every student for one seed."""
    (x_fit, y_fit), holdout, (x_eval, y_eval) = data
    shape = x_fit.shape[1:]
    num_classes = int(max(y_fit.max(), y_eval.max())) + 1
    run = _common.SeedRun(seed, args, x_fit, y_fit)
    teacher = run.teacher(
        lambda: models.mlp(
            shape,
            num_classes,
            hidden=tuple(args.teacher_hidden),
            dropout=args.dropout,
            jitter=args.jitter,
            name="teacher",
        ),
        args.teacher_epochs,
    )

    # Every student starts from these weights.
    keras.utils.set_random_seed(seed + 1000)
    student_hidden = tuple(args.student_hidden)
    initial_weights = models.mlp(shape, num_classes, student_hidden).get_weights()
    assistant = models.mlp(
        shape, num_classes, tuple(args.assistant_hidden), name="assistant"
    )

    def student(name="student"):
        model = models.mlp(shape, num_classes, student_hidden, name=name)
        model.set_weights(initial_weights)
        return model

    ratio = parameter_ratio(student(), teacher)  # main checked it already
    trained = {"teacher": teacher, **train_students(run, teacher, student)}
    tuned = None
    if args.tune:
        with _common.timed(run.times, "tune"):
            tuned = kd.tune(
                teacher,
                lambda: student("tune_student"),
                (x_fit, y_fit),
                holdout,
                max_epochs=args.student_epochs,
                factor=args.tune_factor,
                **_shared(run),
            )
        trained["tune"] = tuned.student
        if args.verbose:
            print(tuned.table())
    with _common.timed(run.times, "chain"):
        chain = kd.distill_chain(
            [teacher, assistant, student("chain_student")],
            (x_fit, y_fit),
            epochs=args.student_epochs,
            distillation_loss=kd.losses.KLDivergence(args.chain_temperature),
            alpha=args.alpha,
            **_shared(run),
        )
    trained["chain"] = chain.student
    trained["assistant"] = assistant
    return run.result(
        accuracy={n: _common.accuracy(m, x_eval, y_eval) for n, m in trained.items()},
        ratio=ratio,
        tune=_tune_summary(tuned),
        chain=chain,
        initial_weights=initial_weights,
        models=trained,
    )


def columns(results) -> list:
    """`(key, header)` of the table's columns, in order."""
    runs = [("teacher", "teacher"), ("assistant", "TA"), ("scratch", "scratch")]
    runs += [(name, header) for name, header in results["headers"].items()]
    if results["config"]["tune"]:
        runs.append(("tune", "tune"))
    return runs + [("chain", "chain")]


def _print_tune_choices(per_seed) -> None:
    for run in per_seed:
        if run["tune"] is None:
            continue
        c = run["tune"]["config"]
        choice = (
            "the baseline (labels only)"
            if c["is_baseline"]
            else f"{c['objective']} T={c['temperature']:g} alpha={c['alpha']:g} "
            f"mixup={'yes' if c['mixup'] else 'no'}"
        )
        baseline = run["tune"]["baseline_score"]
        print(
            f"tune, seed {run['seed']}: {choice}; held-out accuracy "
            f"{100 * c['score']:.2f}% (baseline {100 * baseline:.2f}%), "
            f"{len(run['tune']['trials'])} trials"
        )


def print_results(results: dict) -> None:
    """Prints accuracies per seed, their mean and the gain over scratch."""
    cols = columns(results)
    table = _common.Table([header for _, header in cols], 8, 7, 1)
    params = results["params"]
    print()
    print(f"{_common.accuracy_title(results)}; trained on {results['n_fit']:,} images")
    print(
        f"teacher: MLP {results['shapes']['teacher']}, {params['teacher']:,} "
        f"parameters; student: MLP {results['shapes']['student']}, "
        f"{params['student']:,} parameters = {100 * results['ratio']:.2f}% of the "
        f"teacher's; TA (assistant): MLP {results['shapes']['assistant']}, "
        f"{params['assistant']:,}"
    )
    _common.print_accuracy_table(results, cols, table, "run")
    config = results["config"]
    print(
        f"T=k: KLDivergence(T=k); DIST: DIST(T=1); stdKL: KLDivergence(T=2, "
        f"standardize=True); DKD: DecoupledKD(T=4); chain: teacher -> TA -> "
        f"student, KL T={config['chain_temperature']:g}; alpha={config['alpha']:g}."
    )
    _print_tune_choices(results["per_seed"])
    _common.print_wall_time(results)


def _build_parser() -> argparse.ArgumentParser:
    parser = _common.parser(
        "A student with under 1% of its teacher's parameters: "
        "scratch against KD at several temperatures, DIST, standardized KL, "
        "DKD, kd.tune and a teacher-assistant chain."
    )
    _common.add_dataset(parser)
    _common.add_seeds(parser)
    _common.add_validation(
        parser,
        "report on held-out training images (5,000 MNIST images more "
        "than --max-train) instead of the test set; use this to choose settings",
    )
    add = parser.add_argument
    add(
        "--max-train",
        type=int,
        default=None,
        help="training images to use, the first ones (None: 25,000 for MNIST, "
        "all for digits); the last 5,000 (digits: 200) are kd.tune's held-out split",
    )
    for model, default, owner in (
        ("teacher", [512, 512], "teacher MLP's"),
        ("student", [8], "student MLP's"),
        ("assistant", [64], "teacher assistant's"),
    ):
        add(
            f"--{model}-hidden",
            type=int,
            nargs="+",
            default=default,
            help=f"units of each of the {owner} hidden layers",
        )
    add("--dropout", type=float, default=0.3, help="the teacher's dropout rate")
    add("--jitter", type=int, default=2, help="the teacher's input jitter, in pixels")
    _add_training_options(parser)
    return parser


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--teacher-epochs", type=int, default=12)
    add(
        "--student-epochs",
        type=int,
        default=15,
        help="epochs of every student run, of each chain stage and of "
        "kd.tune's longest trials",
    )
    add(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1.0, 4.0, 10.0],
        help="temperatures of the KD (KLDivergence) runs",
    )
    add(
        "--chain-temperature",
        type=float,
        default=4.0,
        help="KD temperature of each stage of the chain",
    )
    _common.add_alpha(
        parser,
        0.5,
        "weight of the distillation term in every distilled run but "
        "kd.tune's (1 - alpha weights the hard labels)",
    )
    add(
        "--tune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run kd.tune (needs keras-tuner)",
    )
    add(
        "--tune-factor",
        type=int,
        default=3,
        help="Hyperband's reduction factor in kd.tune (larger: fewer trials)",
    )
    _common.add_optimizer(parser)
    add(
        "--verbose",
        action="store_true",
        help="show Keras's per-epoch logs and kd.tune's trials",
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = _build_parser()
    args = parser.parse_args(argv)
    names = ("teacher_epochs", "student_epochs", "batch_size")
    _common.check_minimum(parser, args, names, 1)
    if args.tune_factor < 2:
        parser.error("argument --tune-factor: must be >= 2")
    _common.check_fraction(parser, args, "alpha")
    if args.tune:
        try:
            import keras_tuner  # noqa: F401
        except ImportError:
            parser.error(
                "kd.tune needs keras-tuner: pip install keras-kd[tune] (or "
                "keras-tuner), or pass --no-tune"
            )
    return args


def main(argv=None) -> dict:
    """Runs the experiment and returns its results.

    Args:
        argv: command-line arguments (None: `sys.argv[1:]`).

    Returns:
        A dict with `per_seed` (one entry per seed: `accuracy` of each run,
        the parameter `ratio`, `tune` (its `config`, `baseline_score`,
        `trials` and `table`; None with `--no-tune`), the `chain`'s
        `kd.ChainResult`, timings, the students' `initial_weights` and the
        trained `models`), `mean_accuracy`, `gain_over_scratch`,
        `wins_over_scratch`, `params`, `ratio`, `headers`, the split sizes,
        `wall_time_s` and `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    data = load_data(args.dataset, args.data_dir, args.validation, args.max_train)
    shape = data[0][0].shape[1:]
    parameter_ratio(  # before any training
        models.mlp(shape, 10, tuple(args.student_hidden)),
        models.mlp(shape, 10, tuple(args.teacher_hidden)),
    )
    per_seed = _common.run_seeds(args, lambda s: run_seed(s, data, args), "accuracy")
    first = per_seed[0]
    names = list(first["accuracy"])
    accuracy = {
        name: np.array([r["accuracy"][name] for r in per_seed]) for name in names
    }
    students = [n for n in names if n not in ("teacher", "assistant", "scratch")]
    (x_fit, _), holdout, evaluation = data
    input_size = int(np.prod(x_fit.shape[1:]))
    num_classes = int(first["models"]["teacher"].output.shape[-1])
    results = _common.summary(
        args,
        per_seed,
        len(evaluation[1]),
        start,
        n_fit=int(len(x_fit)),
        n_holdout=int(len(holdout[1])),
        mean_accuracy=_common.mean_over_seeds(per_seed, "accuracy"),
        gain_over_scratch={  # the mean of the per-seed differences
            n: float(np.mean(accuracy[n] - accuracy["scratch"])) for n in students
        },
        wins_over_scratch=_common.wins_over(per_seed, "accuracy", students),
        params={
            name: first["models"][name].count_params()
            for name in ("teacher", "assistant", "scratch")
        },
        ratio=first["ratio"],
        shapes={
            name: _common.mlp_shape(
                input_size, getattr(args, f"{name}_hidden"), num_classes
            )
            for name in ("teacher", "student", "assistant")
        },
        headers={name: header for name, (header, _) in objectives(args, 1).items()},
    )
    results["params"]["student"] = results["params"].pop("scratch")
    print_results(results)
    return results


if __name__ == "__main__":
    main()
