"""Uncertainty kept: is a distilled student as honest about its confidence?

A student that matches its teacher's accuracy may still not match its
teacher's *uncertainty*: it can be over-confident on the test set (a high
expected calibration error, ECE) and, worse, confident on inputs that belong
to no class (out-of-distribution, OOD). This example measures both, for
students distilled with several settings, before and after temperature
scaling (`kd.calibrate`), against a teacher and a student trained on the
labels alone:

* `scratch`: the student trained on the labels alone;
* `KL T=1`, `KL T=4`: Hinton et al.'s KD (`kd.losses.KLDivergence`) at
  temperature 1 and 4, alpha 0.5;
* `KL a=.9`: KD at T=4 with alpha 0.9 (mostly soft targets);
* `DIST`: `kd.losses.DIST(temperature=4)`, alpha 0.5 (Huang et al. 2022);
* `mixup`: KD at T=4, alpha 0.5, with input mixup whose mixtures the
  teacher labels (`kd.Distiller(mixup=0.2)`, Beyer et al. 2022).

Every student starts from the same initial weights and sees the same
batches. For each model it reports test accuracy, ECE and NLL before and
after `kd.calibrate` (the temperature fitted on a held-out calibration
split of the training images, never on the test set), the mean predictive
entropy on the test images and on OOD inputs, and the AUROC of that entropy
telling OOD inputs from test images (`kd.report.auroc`, OOD positive). The
bar: a student meets it when, after `kd.calibrate`, its ECE is at most 0.01
above its teacher's and its OOD AUROC at most 0.03 below the teacher's,
the teacher taken as trained. (Not the teacher after `kd.calibrate`: the
convnet teacher makes no mistake, or one, on the 300 calibration images, so
its fitted temperature is at the bottom of the range or rests on one image;
the tables show its calibrated figures too.)

**Setup (defaults).** scikit-learn's 8x8 digits, offline: 1,347 training
images (the last 300 held out for calibration, 1,047 to train on) and 450
test images. OOD inputs, generated offline: the 450 test images rotated by
90 degrees (near-OOD: the strokes of a digit, in no digit's shape) and 450
images of uniform noise in [0, 1] (far-OOD). The teacher is the classic
Keras convnet (`keras_kd.models.cnn`, 151,306 parameters), the student an
MLP 64-32-10 (2,410 parameters; `--student-filters 8` makes it a small
convnet, 9,802 parameters with `--student-hidden 32`). Teacher and students
train for 40 epochs, Adam 3e-3 with a cosine decay to 0, batch 64. About 1
minute a seed on two CPU cores. Figures: BENCHMARKS.md, "Uncertainty kept".

Usage:

```
python examples/uncertainty.py              # 3 seeds
python examples/uncertainty.py --seeds 0 --verbose
```
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common

import argparse
import time
import warnings

import numpy as np

import _common
import keras_kd as kd
from keras_kd import models
from keras_kd.backend import keras

# The bar: how much worse than its teacher's a student's calibrated ECE and
# OOD AUROC may be.
ECE_MARGIN = 0.01
AUROC_MARGIN = 0.03


def _kl(temperature):
    return lambda: kd.losses.KLDivergence(temperature=temperature)


# The student runs: name to (row label, loss factory or None (labels alone),
# alpha, whether with mixup).
RUNS = {
    "scratch": ("scratch", None, 0.0, False),
    "kl_t1": ("KL T=1", _kl(1.0), 0.5, False),
    "kl_t4": ("KL T=4", _kl(4.0), 0.5, False),
    "kl_t4_a09": ("KL a=.9", _kl(4.0), 0.9, False),
    "dist_t4": ("DIST", lambda: kd.losses.DIST(temperature=4.0), 0.5, False),
    "kl_t4_mixup": ("mixup", _kl(4.0), 0.5, True),
}


def load_data(calibration_size: int = 300, noise_seed: int = 0):
    """The digits splits and the OOD inputs.

    Returns:
        `(fit, calibration, test, ood)`: `(x, y)` pairs of the training
        images (less the last `calibration_size`), the calibration split and
        the test images; `ood` is `{"rotated": test images rotated 90
        degrees, "noise": as many images of uniform noise in [0, 1]}`.
    """
    train, (x_test, y_test) = kd.data.load_digits()
    fit, calibration = kd.data.split_validation(*train, calibration_size)
    rng = np.random.default_rng(noise_seed)
    ood = {
        "rotated": np.ascontiguousarray(np.rot90(x_test, k=1, axes=(1, 2))),
        "noise": rng.uniform(0.0, 1.0, x_test.shape).astype("float32"),
    }
    return fit, calibration, (x_test, y_test), ood


def probabilities(model, x) -> np.ndarray:
    """`model`'s probabilities on `x` (logits softmaxed)."""
    return kd.report.to_probabilities(model.predict(x, batch_size=1000, verbose=0))


def measure(model, calibration, test, ood, num_bins: int = 15) -> dict:
    """One model's figures: accuracy, ECE / NLL before and after
    `kd.calibrate` (fitted on `calibration`), and the OOD entropies and
    AUROCs before and after."""
    x_test, y_test = test
    with warnings.catch_warnings():  # a T at the end of the range: noted below
        warnings.simplefilter("ignore")
        result = kd.calibrate(model, calibration, num_bins=num_bins)
    figures = {
        "temperature": result.temperature,
        "t_at_bound": float(bool(result.notes)),
    }
    for suffix, predictor in (("", model), ("_cal", result.model)):
        p = probabilities(predictor, x_test)
        inside = kd.report.predictive_entropy(p)
        outside = {
            k: kd.report.predictive_entropy(probabilities(predictor, x))
            for k, x in ood.items()
        }
        every = np.concatenate(list(outside.values()))
        figures.update(
            {
                f"ece{suffix}": kd.report.expected_calibration_error(
                    p, y_test, num_bins
                ),
                f"nll{suffix}": kd.report.negative_log_likelihood(p, y_test),
                f"entropy_in{suffix}": float(inside.mean()),
                f"entropy_ood{suffix}": float(every.mean()),
                f"auroc{suffix}": kd.report.auroc(inside, every),
            }
        )
        for kind, entropy in outside.items():
            figures[f"auroc_{kind}{suffix}"] = kd.report.auroc(inside, entropy)
            figures[f"entropy_{kind}{suffix}"] = float(entropy.mean())
    figures["accuracy"] = _common.accuracy(model, x_test, y_test)
    return figures


def meets_ece_bar(student: dict, teacher: dict) -> bool:
    """Whether the student's ECE after `kd.calibrate` is at most
    `ECE_MARGIN` above the teacher's (as trained)."""
    return student["ece_cal"] <= teacher["ece"] + ECE_MARGIN


def meets_auroc_bar(student: dict, teacher: dict) -> bool:
    """Whether the student's OOD AUROC after `kd.calibrate` is at most
    `AUROC_MARGIN` below the teacher's (as trained)."""
    return student["auroc_cal"] >= teacher["auroc"] - AUROC_MARGIN


def meets_bar(student: dict, teacher: dict) -> bool:
    """Both halves of the bar."""
    return meets_ece_bar(student, teacher) and meets_auroc_bar(student, teacher)


def train_students(run: _common.SeedRun, teacher, student) -> dict:
    """One student per entry of `RUNS`, from the same initial weights
    (`student(name)` builds one) on the same batches."""
    epochs = run.args.student_epochs
    trained = {}
    for name, (_, make_loss, alpha, with_mixup) in RUNS.items():
        model = student(f"{name}_student")
        keras.utils.set_random_seed(run.seed + 2000)  # the same batches for all
        if make_loss is None:
            trainer = run.compile(model, epochs)
        else:
            mixup = None
            if with_mixup:
                mixup = kd.augment.mixup(run.args.mixup, seed=run.seed)
            distiller = kd.Distiller(teacher=teacher, student=model, mixup=mixup)
            terms = dict(distillation_loss=make_loss(), alpha=alpha)
            trainer = run.compile(distiller, epochs, **terms)
        run.fit(name, trainer, epochs)
        trained[name] = model
    return trained


def student_model(shape, args, name: str = "student"):
    """The student: an MLP (`--student-hidden`), or with `--student-filters`
    a small convnet (`models.cnn`, its dense layer `--student-hidden[0]`)."""
    if args.student_filters:
        return models.cnn(
            shape, 10, args.student_filters, args.student_hidden[0], name=name
        )
    return models.mlp(shape, 10, tuple(args.student_hidden), name=name)


def run_seed(seed: int, data, args) -> dict:
    """Trains the teacher and every student for one seed and measures them."""
    (x_fit, y_fit), calibration, test, ood = data
    shape = x_fit.shape[1:]
    run = _common.SeedRun(seed, args, x_fit, y_fit)
    teacher = run.teacher(
        lambda: models.cnn(shape, 10, filters=args.teacher_filters, name="teacher"),
        args.teacher_epochs,
    )
    keras.utils.set_random_seed(seed + 1000)
    initial_weights = student_model(shape, args).get_weights()

    def student(name):
        model = student_model(shape, args, name)
        model.set_weights(initial_weights)
        return model

    trained = {"teacher": teacher, **train_students(run, teacher, student)}
    figures = {name: measure(m, calibration, test, ood) for name, m in trained.items()}
    report = kd.report.compare(
        teacher,
        trained["kl_t4"],
        test,
        baseline=trained["scratch"],
        ood_data=np.concatenate(list(ood.values())),
        latency_runs=0,
    )
    accuracy = {name: f["accuracy"] for name, f in figures.items()}
    return run.result(accuracy=accuracy, figures=figures, models=trained, report=report)


def summarize(per_seed: list) -> dict:
    """Means over seeds of every figure, and per student the seeds meeting
    the bar (and whether the means do)."""
    names = list(per_seed[0]["figures"])
    keys = list(per_seed[0]["figures"]["teacher"])
    mean = {
        name: {
            k: float(np.mean([r["figures"][name][k] for r in per_seed])) for k in keys
        }
        for name in names
    }

    def seeds(test, name):
        return sum(test(r["figures"][name], r["figures"]["teacher"]) for r in per_seed)

    bar = {
        name: {
            "seeds": seeds(meets_bar, name),
            "seeds_ece": seeds(meets_ece_bar, name),
            "seeds_auroc": seeds(meets_auroc_bar, name),
            "mean": meets_bar(mean[name], mean["teacher"]),
            "ece_gap": mean[name]["ece_cal"] - mean["teacher"]["ece"],
            "auroc_gap": mean[name]["auroc_cal"] - mean["teacher"]["auroc"],
            "auroc_raw_gap": mean[name]["auroc"] - mean["teacher"]["auroc"],
            "more_confident_ood": sum(
                r["figures"][name]["entropy_ood"]
                < r["figures"]["teacher"]["entropy_ood"]
                for r in per_seed
            ),
        }
        for name in names
        if name != "teacher"
    }
    return {"mean": mean, "bar": bar}


_CALIBRATION_COLUMNS = (
    ("accuracy", "acc %", lambda v: f"{100 * v:.2f}"),
    ("ece", "ECE", lambda v: f"{v:.4f}"),
    ("ece_cal", "ECE cal", lambda v: f"{v:.4f}"),
    ("nll", "NLL", lambda v: f"{v:.4f}"),
    ("nll_cal", "NLL cal", lambda v: f"{v:.4f}"),
    ("temperature", "T", lambda v: f"{v:.3f}"),
)
_OOD_COLUMNS = (
    ("entropy_in", "H test", lambda v: f"{v:.3f}"),
    ("entropy_rotated", "H rot", lambda v: f"{v:.3f}"),
    ("entropy_noise", "H noise", lambda v: f"{v:.3f}"),
    ("auroc_rotated", "AUC rot", lambda v: f"{v:.3f}"),
    ("auroc_noise", "AUC noise", lambda v: f"{v:.3f}"),
    ("auroc", "AUROC", lambda v: f"{v:.3f}"),
    ("auroc_cal", "AUROC cal", lambda v: f"{v:.3f}"),
)


def student_text(args) -> str:
    """`"MLP 64-32-10"` or `"CNN 8 filters, dense 32"`."""
    if args.student_filters:
        return f"CNN {args.student_filters} filters, dense {args.student_hidden[0]}"
    return f"MLP {_common.mlp_shape(64, args.student_hidden, 10)}"


def headers() -> dict:
    """Each run's row label."""
    return {"teacher": "teacher", **{name: run[0] for name, run in RUNS.items()}}


def _print_means(results: dict, columns) -> None:
    table = _common.Table([h for _, h, _ in columns], 10, 8, 2)
    print(table.row("", table.headers))
    for name, label in headers().items():
        row = results["mean"][name]
        print(table.row(label, [fmt(row[key]) for key, _, fmt in columns]))


def _print_bar(results: dict) -> None:
    runs = len(results["per_seed"])
    columns = [
        "dECE",
        "dAUROC",
        "dAUROC raw",
        "ECE ok",
        "AUROC ok",
        "both",
        "mean",
        "surer OOD",
    ]
    table = _common.Table(columns, 10, 8, 2)
    print(table.row("", table.headers))
    for name, label in headers().items():
        if name == "teacher":
            continue
        b = results["bar"][name]
        cells = [
            f"{b['ece_gap']:+.4f}",
            f"{b['auroc_gap']:+.3f}",
            f"{b['auroc_raw_gap']:+.3f}",
            f"{b['seeds_ece']}/{runs}",
            f"{b['seeds_auroc']}/{runs}",
            f"{b['seeds']}/{runs}",
            "meets" if b["mean"] else "misses",
            f"{b['more_confident_ood']}/{runs}",
        ]
        print(table.row(label, cells))


def print_results(results: dict) -> None:
    """Prints the calibration table, the OOD table and the bar."""
    seeds = _common.seeds_text(results["seeds"])
    n = results["sizes"]
    print()
    print(
        f"digits: trained on {n['fit']:,} images, calibrated on {n['calibration']}, "
        f"tested on {n['test']}; OOD: {n['rotated']} rotated + {n['noise']} noise "
        f"images; means over seeds {seeds}"
    )
    print(
        f"teacher: CNN, {results['params']['teacher']:,} parameters; student: "
        f"{results['student_shape']}, {results['params']['student']:,}"
    )
    print("\nCalibration on the test set (cal: after kd.calibrate):")
    _print_means(results, _CALIBRATION_COLUMNS)
    runs = len(results["per_seed"])
    for name, label in headers().items():
        share = results["mean"][name]["t_at_bound"]
        if share:
            print(
                f"{label}: T at the end of kd.calibrate's range in "
                f"{round(share * runs)}/{runs} seeds (no mistake on the "
                "calibration images: T is not determined)"
            )
    print(
        "\nOOD (before calibration but AUROC cal): mean predictive entropy (nats) "
        "and the AUROC of entropy, OOD positive:"
    )
    _print_means(results, _OOD_COLUMNS)
    print(
        f"\nThe bar: after kd.calibrate, ECE at most {ECE_MARGIN} above the "
        f"teacher's and OOD AUROC at most {AUROC_MARGIN} below it (the teacher as "
        "trained):"
    )
    _print_bar(results)
    print(
        "dECE, dAUROC: the calibrated student minus the teacher as trained, "
        "means over seeds; dAUROC raw: the student before calibration; ECE ok, "
        "AUROC ok, both: seeds meeting that half of the bar (both halves) "
        "against that seed's teacher; mean: whether the means meet it; surer OOD: "
        "seeds where the student's mean OOD entropy (before calibration) is "
        "below the teacher's."
    )
    _common.print_wall_time(results)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _common.parser(
        "Calibration and out-of-distribution uncertainty of distilled "
        "students (digits, offline), before and after kd.calibrate."
    )
    _common.add_seeds(parser)
    add = parser.add_argument
    add("--teacher-epochs", type=int, default=40)
    add("--student-epochs", type=int, default=40)
    add(
        "--teacher-filters",
        type=int,
        default=32,
        help="the teacher CNN's first filters",
    )
    add(
        "--student-hidden",
        type=int,
        nargs="+",
        default=[32],
        help="the student MLP's hidden units",
    )
    add(
        "--student-filters",
        type=int,
        default=0,
        help="a convnet student with this many first filters (0: the MLP)",
    )
    add(
        "--calibration-size",
        type=int,
        default=300,
        help="training images held out for kd.calibrate",
    )
    add("--mixup", type=float, default=0.2, help="the mixup run's Beta parameter")
    _common.add_optimizer(parser, learning_rate=3e-3, batch_size=64)
    _common.add_verbose(parser)
    args = parser.parse_args(argv)
    names = ("teacher_epochs", "student_epochs", "batch_size", "calibration_size")
    _common.check_minimum(parser, args, names, 1)
    if args.mixup <= 0:
        parser.error(f"argument --mixup: must be > 0, got {args.mixup:g}")
    return args


def main(argv=None) -> dict:
    """Runs the study and returns its results.

    Returns:
        A dict with `per_seed` (per seed: `figures` of each run, the trained
        `models`, the `kd.report.compare` `report` of the `KL T=4` student
        with the OOD inputs, timings), `mean` (each run's figures averaged
        over seeds), `bar` (per student: `seeds` meeting the bar, whether the
        `mean` does, the gaps to the teacher and the seeds where it is
        surer than the teacher on OOD inputs), `sizes`, `params`, `seeds`,
        `wall_time_s` and `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    data = load_data(args.calibration_size)
    fit, calibration, test, ood = data
    per_seed = _common.run_seeds(args, lambda s: run_seed(s, data, args), "accuracy")
    trained = per_seed[0]["models"]
    results = {
        "seeds": list(args.seeds),
        "per_seed": per_seed,
        **summarize(per_seed),
        "sizes": {
            "fit": len(fit[0]),
            "calibration": len(calibration[0]),
            "test": len(test[0]),
            **{kind: len(x) for kind, x in ood.items()},
        },
        "params": {
            "teacher": trained["teacher"].count_params(),
            "student": trained["scratch"].count_params(),
        },
        "student_shape": student_text(args),
        "wall_time_s": time.perf_counter() - start,
        "config": _common.config(args),
    }
    print_results(results)
    return results


if __name__ == "__main__":
    main()
