"""Privileged information: a teacher with a scanner, a student with a phone camera.

Generalized distillation (Lopez-Paz, Bottou, Schoelkopf and Vapnik, 2016,
"Unifying distillation and privileged information"): at training time the
teacher sees what the deployed student never will, a richer view of each
example or another sensor; the student learns from the labels and from the
teacher's soft targets, but only ever reads its own, poorer view. Their MNIST
experiment gives the teacher the 28x28 image and the student a 7x7 one; this
example does the same with a story a phone developer recognises:

* **The collection rig (the teacher's view).** Handwritten digits collected
  in the lab are scanned at full resolution (`scan`, 28x28 for MNIST), and a
  second sensor, a line-scan bar of the kind in a pen tablet or a document
  feeder, records each digit's ink profile: the ink in every row and every
  column (`profiles`, a 1-D signal of 56 values). The teacher is a
  two-input Keras model (a small convnet on the scan, a dense branch on the
  profiles, joined before the classifier), trained on this view alone.
* **The phone (the student's view).** The app sees the digit through a
  cheap camera: 2x coarser (`phone`, 14x14, the mean of each 2x2 block;
  `--factor 4` gives the 7x7 view of Lopez-Paz et al.) with sensor noise
  (Gaussian, sigma 0.2 of the [0, 1] range, clipped), drawn once per image
  with `--capture-seed`, the same in every run: each image was photographed
  once. The student is a small MLP on that view; it never receives the scan
  or the profiles.

Both signals of the rig come from the same ink, so the profiles carry
nothing the scan lacks: they make the rig's teacher a real two-input model
(another device, another shape). What it has that the phone lacks is
resolution and a clean signal, which the student can only learn through it.

**Runs, per seed.** From the same initial weights, the same epochs and the
same batches, the student is trained

1. `scratch`: on its phone view and the labels alone;
2. `privileged`: distilled from the privileged teacher, with
   `kd.Distiller(teacher, student, teacher_inputs=["scan", "profiles"],
   student_inputs="phone")` on dicts holding all three views;
3. `same view` (the control; `--no-same-view` skips it): distilled from a
   teacher of the same architecture trained on the phone view only (its
   profiles branch dropped). It separates what the privileged view brings
   from what any larger teacher brings.

Each distilled student is trained for each `KLDivergence(T)`, T in
`--temperatures` (1 2 5), and each alpha in `--alphas` (0.5 0.9); the best
on 1,000 held-out training images is reported on the test set, which never
chooses. Each teacher runs once over the training images (its outputs ride
along in `kd.data.TeacherBatch`es). 2,000 training images by default: soft
targets matter most where labels are few. About 60-85 s a seed on two CPU
cores. Figures: BENCHMARKS.md, "Privileged information".

Usage:

```
python examples/privileged_information.py              # MNIST, seeds 0 1 2
python examples/privileged_information.py --factor 4     # a 7x7 phone view
python examples/privileged_information.py --train-size 10000   # more data
python examples/privileged_information.py --dataset digits     # offline
```

Data come from `keras_kd.data.load_image_classification`: MNIST from
TensorFlow Datasets (`--data-dir`, by default `../shared/datasets/tfds`
beside the project's root when that folder exists, else tfds downloads it),
or scikit-learn's bundled 8x8 digits (`--dataset digits`, offline: a 4x4
phone view, 300 of the 1,347 training images held out for validation).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common

import argparse
import itertools
import time

import numpy as np

import _common
import keras_kd as kd
from keras_kd import models
from keras_kd.backend import keras, tf

# The TFDS data dir beside the project's root, the default of `--data-dir`
# when it exists.

# Per dataset: `--train-size` (None: every training image left after the
# validation split) and `--validation-size` by default.
_TRAIN_SIZE = {"mnist": 2000, "digits": None}
_VALIDATION_SIZE = {"mnist": 1000, "digits": 300}

# The teacher's inputs (the rig) and the student's (the phone).
TEACHER_INPUTS = ("scan", "profiles")
STUDENT_INPUT = "phone"

# The distilled students: (key, the key of their teacher in `models`).
_DISTILLED = (("privileged", "teacher"), ("same_view", "same_view_teacher"))
_HEADERS = {
    "teacher": "teacher",
    "same_view_teacher": "phone teacher",
    "scratch": "scratch",
    "privileged": "privileged",
    "same_view": "same view",
}


# The views.


def ink_profiles(images) -> np.ndarray:
    """The line sensor: the mean ink of each row, then of each column, of
    `(n, height, width, 1)` images; `(n, height + width)` float32."""
    images = np.asarray(images, np.float32)[..., 0]
    return np.concatenate([images.mean(axis=2), images.mean(axis=1)], axis=1)


def phone_view(images, factor: int, noise: float, rng) -> np.ndarray:
    """The phone camera: `factor` times coarser, with Gaussian pixel noise.

    Each output pixel of the `(n, height // factor, width // factor, 1)`
    float32 result is the mean of a `factor` x `factor` block of `images`,
    plus noise of standard deviation `noise` drawn from the numpy Generator
    `rng` (0: none), clipped to [0, 1].
    """
    n, height, width, channels = np.shape(images)
    blocks = np.reshape(
        images, (n, height // factor, factor, width // factor, factor, channels)
    )
    low = blocks.mean(axis=(2, 4))
    if noise:
        low = low + rng.normal(0.0, noise, size=low.shape)
    return np.clip(low, 0.0, 1.0).astype(np.float32)


def views(images, factor: int, noise: float, rng) -> dict:
    """`{"scan", "profiles", "phone"}`: the rig's two signals and the phone's."""
    images = np.asarray(images, np.float32)
    return {
        "scan": images,
        "profiles": ink_profiles(images),
        "phone": phone_view(images, factor, noise, rng),
    }


def load_data(args):
    """`{"train", "validation", "test": (views, labels), "num_classes"}`.

    `--validation-size` images after the first `--train-size` are held out
    (`kd.data.split_validation`); the phone's noise is drawn from
    `--capture-seed` for the three splits in that order, the same every run.
    """
    max_train = None
    if args.train_size is not None:
        max_train = args.train_size + args.validation_size
    train, test, num_classes, _ = kd.data.load_image_classification(
        args.dataset, data_dir=args.data_dir, max_train=max_train
    )
    height, width = train[0].shape[1:3]
    if height % args.factor or width % args.factor:
        raise ValueError(
            f"Argument `factor` must divide the images' {height}x{width} "
            f"pixels. Received: factor={args.factor}."
        )
    fit, validation = kd.data.split_validation(*train, args.validation_size)
    rng = np.random.default_rng(args.capture_seed)
    data = {
        name: (views(x, args.factor, args.noise, rng), y)
        for name, (x, y) in (("train", fit), ("validation", validation), ("test", test))
    }
    data["num_classes"] = num_classes
    return data


# The models.


def _conv_trunk(inputs, filters: int):
    h = inputs
    for width in (filters, 2 * filters):
        h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D(2, padding="same")(h)
    return keras.layers.Flatten()(h)


def teacher_model(
    image_shape,
    num_classes: int,
    profile_size: int | None = None,
    filters: int = 32,
    hidden: int = 128,
    dropout: float = 0.3,
    name: str = "teacher",
):
    """The teacher: a small convnet on an image, with a profiles branch.

    Two 3x3 convolutions (`filters`, then twice as many), each followed by
    2x2 max pooling; with `profile_size`, a second input (`profiles`) through
    a dense layer of `hidden // 2` ReLUs, concatenated with the convolutions'
    features; then a dense layer of `hidden` ReLUs, `dropout` and the
    logits. Without `profile_size` the one input, of `image_shape`, is the
    phone's (the same-view teacher); with it, `{"scan", "profiles"}`.
    """
    image = keras.Input(image_shape, name="scan" if profile_size else STUDENT_INPUT)
    inputs, features = image, _conv_trunk(image, filters)
    if profile_size:
        profiles = keras.Input((profile_size,), name="profiles")
        inputs = {"scan": image, "profiles": profiles}
        line = keras.layers.Dense(hidden // 2, activation="relu")(profiles)
        features = keras.layers.Concatenate()([features, line])
    h = keras.layers.Dense(hidden, activation="relu")(features)
    h = keras.layers.Dropout(dropout)(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h), name=name)


def candidate_name(temperature: float, alpha: float) -> str:
    """`"T=4 a=0.9"`."""
    return f"T={temperature:g} a={alpha:g}"


# One seed.


def batches(x, y, args, seed: int, teacher_outputs=None):
    """A shuffled, batched `tf.data` pipeline of `(x, y)`.

    With `teacher_outputs` (the teacher's logits on each example, computed
    once), its elements are `kd.data.TeacherBatch`es: the Distiller uses the
    stored outputs instead of running its teacher at every step (and checks
    the first batch against the teacher). Every pipeline of one `seed` draws
    the same batches, whatever its elements.
    """
    examples = (
        (x, y)
        if teacher_outputs is None
        else kd.data.TeacherBatch(x, y, teacher_outputs, ())
    )
    dataset = tf.data.Dataset.from_tensor_slices(examples)
    return dataset.shuffle(len(y), seed=seed).batch(args.batch_size).prefetch(2)


def view_of(x: dict, keys):
    """What a model reads of the views `x`: the entry `keys` names (a str),
    or the dict of those a list names."""
    return x[keys] if isinstance(keys, str) else {k: x[k] for k in keys}


def _fit(run: _common.SeedRun, name: str, model, dataset, epochs: int) -> None:
    with _common.timed(run.times, name):
        model.fit(dataset, epochs=epochs, shuffle=False, verbose=run.verbose)


def train_teachers(run: _common.SeedRun, data) -> dict:
    """`{name: (teacher, the keys it reads)}`: the rig's teacher on
    `scan` and `profiles`, and (the control) the same on `phone`."""
    (x, y), num_classes = data["train"], data["num_classes"]
    keys = {"teacher": list(TEACHER_INPUTS), "same_view_teacher": STUDENT_INPUT}
    if not run.args.same_view:
        del keys["same_view_teacher"]
    teachers = {}
    for name, inputs in keys.items():
        keras.utils.set_random_seed(run.seed)
        rig = name == "teacher"
        model = teacher_model(
            x["scan" if rig else STUDENT_INPUT].shape[1:],
            num_classes,
            x["profiles"].shape[1] if rig else None,
            run.args.teacher_filters,
            run.args.teacher_hidden,
            name=name,
        )
        run.compile(model, run.args.teacher_epochs)
        dataset = batches(view_of(x, inputs), y, run.args, run.seed)
        _fit(run, name, model, dataset, run.args.teacher_epochs)
        teachers[name] = (model, inputs)
    return teachers


def choose_on_validation(run: _common.SeedRun, name, teacher, keys, student, data):
    """Distills `student(name)` from `teacher` (reading `keys`) once per
    candidate; returns `(the best student on validation, its candidate,
    {candidate name: validation accuracy})` (ties: the first candidate)."""
    (x, y), (x_val, y_val) = data["train"], data["validation"]
    # Computed once: the teacher reads only its own view of each image.
    outputs = teacher.predict(view_of(x, keys), batch_size=1000, verbose=0)
    scores, best = {}, None
    for temperature, alpha in itertools.product(run.args.temperatures, run.args.alphas):
        model = student(f"{name}_student")
        distiller = kd.Distiller(
            teacher=teacher,
            student=model,
            teacher_inputs=keys,
            student_inputs=STUDENT_INPUT,
        )
        loss = kd.losses.KLDivergence(temperature=temperature)
        run.compile(
            distiller, run.args.student_epochs, distillation_loss=loss, alpha=alpha
        )
        label = candidate_name(temperature, alpha)
        dataset = batches(x, y, run.args, run.seed + 2000, outputs)
        _fit(run, f"{name} {label}", distiller, dataset, run.args.student_epochs)
        scores[label] = _common.accuracy(model, x_val[STUDENT_INPUT], y_val)
        if best is None or scores[label] > scores[best[2]]:
            best = (model, {"temperature": temperature, "alpha": alpha}, label)
    return best[0], best[1], scores


def run_seed(seed, data, args) -> dict:
    """Trains the teachers and every student for one seed."""
    x_train, y_train = data["train"]
    phone_shape = x_train[STUDENT_INPUT].shape[1:]
    run = _common.SeedRun(seed, args, x_train[STUDENT_INPUT], y_train)
    teachers = train_teachers(run, data)
    trained = {name: model for name, (model, _) in teachers.items()}

    # Every student starts from these weights and sees the same batches.
    keras.utils.set_random_seed(seed + 1000)
    hidden, num_classes = tuple(args.student_hidden), data["num_classes"]
    initial_weights = models.mlp(phone_shape, num_classes, hidden).get_weights()

    def student(name):
        model = models.mlp(phone_shape, num_classes, hidden, name=name)
        model.set_weights(initial_weights)
        keras.utils.set_random_seed(seed + 2000)
        return model

    trained["scratch"] = student("scratch_student")
    run.compile(trained["scratch"], args.student_epochs)
    phone = batches(x_train[STUDENT_INPUT], y_train, args, seed + 2000)
    _fit(run, "scratch", trained["scratch"], phone, args.student_epochs)

    validation, chosen = {}, {}
    for name, teacher_name in _DISTILLED:
        if teacher_name in teachers:
            teacher, keys = teachers[teacher_name]
            trained[name], chosen[name], validation[name] = choose_on_validation(
                run, name, teacher, keys, student, data
            )

    x_test, y_test = data["test"]
    accuracy = {}
    for name, model in trained.items():
        keys = teachers[name][1] if name in teachers else STUDENT_INPUT
        accuracy[name] = _common.accuracy(model, view_of(x_test, keys), y_test)
    return run.result(
        accuracy=accuracy,
        validation_accuracy=validation,
        chosen=chosen,
        initial_weights=initial_weights,
        models=trained,
    )


# The report.


def print_results(results: dict) -> None:
    """Prints the test accuracies per seed, the gains and the choices."""
    config = results["config"]
    names = [n for n in _HEADERS if n in results["mean_accuracy"]]
    table = _common.Table([_HEADERS[n] for n in names], 8, 10, 2)
    print()
    print(_common.accuracy_title(results))
    scan, phone = results["scan_shape"], results["phone_shape"]
    print(
        f"teacher: convnet on the {scan[0]}x{scan[1]} scan + dense on "
        f"{results['profile_size']} ink-profile values, "
        f"{results['params']['teacher']:,} parameters, "
        f"{config['teacher_epochs']} epochs on {results['n_train']:,} images"
    )
    shape = _common.mlp_shape(
        phone[0] * phone[1], config["student_hidden"], results["num_classes"]
    )
    print(
        f"student: MLP {shape} on the {phone[0]}x{phone[1]} phone view (noise sigma "
        f"{config['noise']:g}), {results['params']['student']:,} parameters, "
        f"{config['student_epochs']} epochs"
    )
    _common.print_accuracy_table(results, list(zip(names, names)), table, "student")
    for name in (n for n, _ in _DISTILLED if n in results["mean_validation"]):
        scores = results["mean_validation"][name]
        picks = ", ".join(
            f"seed {run['seed']} " + candidate_name(**run["chosen"][name])
            for run in results["per_seed"]
        )
        print(f"{_HEADERS[name]}: chosen on validation: {picks}")
        print(
            "  mean validation accuracy: "
            + ", ".join(f"{label} {100 * a:.2f}" for label, a in scores.items())
        )
    if "same_view" in names:
        print(
            "phone teacher: the teacher's architecture on the phone view only; "
            "same view: the student distilled from it."
        )
    _common.print_wall_time(results)


def _build_parser() -> argparse.ArgumentParser:
    parser = _common.parser(
        "Generalized distillation (privileged information): a teacher on "
        "full-resolution scans and ink profiles teaches a student that sees "
        "only a low-resolution, noisy phone view."
    )
    _common.add_dataset(parser, data_dir=_common.shared_tfds_dir())
    _common.add_seeds(parser)
    add, positive = parser.add_argument, _common.positive
    options = (
        ("--train-size", positive(int), None, "training images (None: 2,000 "
         "for MNIST, all 1,047 left for digits)"),
        ("--validation-size", positive(int), None, "training images held out "
         "to choose T and alpha (None: 1,000 for MNIST, 300 for digits)"),
        ("--factor", positive(int), 2, "the phone view is this many times "
         "coarser (4: MNIST's 7x7 of Lopez-Paz et al.)"),
        ("--noise", _common.non_negative(float), 0.2, "phone pixel noise sigma"),
        ("--capture-seed", int, 0, "seed of the phone views' noise (the same "
         "for every seed)"),
    )  # fmt: skip
    for flag, kind, default, text in options:
        add(flag, type=kind, default=default, help=text)
    for option, default in (("epochs", 30), ("filters", 32), ("hidden", 128)):
        add(f"--teacher-{option}", type=positive(int), default=default)
    add(
        "--same-view",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the teacher on the phone view and distill from it",
    )
    add(
        "--student-hidden",
        type=positive(int),
        nargs="+",
        default=[128],
        help="units of each of the student MLP's hidden layers",
    )
    add("--student-epochs", type=positive(int), default=60)
    add(
        "--temperatures",
        type=positive(float),
        nargs="+",
        default=[1.0, 2.0, 5.0],
        help="temperatures tried, each with every alpha; chosen on validation",
    )
    add(
        "--alphas",
        type=float,
        nargs="+",
        default=[0.5, 0.9],
        help=_common.ALPHA_HELP + "; each tried, chosen on validation",
    )
    _common.add_optimizer(parser, checked=True)
    _common.add_verbose(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = _build_parser()
    args = parser.parse_args(argv)
    for name, defaults in (
        ("train_size", _TRAIN_SIZE),
        ("validation_size", _VALIDATION_SIZE),
    ):
        if getattr(args, name) is None:
            setattr(args, name, defaults[args.dataset])
    for alpha in args.alphas:
        if not 0.0 <= alpha <= 1.0:
            parser.error(f"argument --alphas: each must be in [0, 1], got {alpha:g}")
    _common.check_distinct(parser, args, "temperatures", "alphas")
    return args


def main(argv=None) -> dict:
    """Runs the experiment and returns its results.

    Args:
        argv: command-line arguments (None: `sys.argv[1:]`).

    Returns:
        A dict with `per_seed` (per seed: test `accuracy` of `teacher` (on
        its view), `scratch`, `privileged`, `same_view_teacher` and
        `same_view` (the last two unless `--no-same-view`); each distilled
        student's `validation_accuracy` per `"T=.. a=.."` and `chosen`
        candidate; timings, `initial_weights`, `models`), `mean_accuracy`,
        `gain_over_scratch`, `wins_over_scratch`, `mean_validation`, the
        views' shapes, the splits' sizes, `params`, `wall_time_s`, `config`.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    data = load_data(args)
    per_seed = _common.run_seeds(args, lambda s: run_seed(s, data, args), "accuracy")
    mean = _common.mean_over_seeds(per_seed, "accuracy")
    students = [n for n, _ in _DISTILLED if n in mean]
    x_train = data["train"][0]
    first = per_seed[0]["models"]
    results = {
        "dataset": args.dataset,
        "split": "test",
        "n_train": int(len(data["train"][1])),
        "n_validation": int(len(data["validation"][1])),
        "n_eval": int(len(data["test"][1])),
        "num_classes": int(data["num_classes"]),
        "seeds": list(args.seeds),
        "scan_shape": tuple(x_train["scan"].shape[1:]),
        "profile_size": int(x_train["profiles"].shape[1]),
        "phone_shape": tuple(x_train[STUDENT_INPUT].shape[1:]),
        "per_seed": per_seed,
        "mean_accuracy": mean,
        "gain_over_scratch": {n: mean[n] - mean["scratch"] for n in students},
        "wins_over_scratch": _common.wins_over(per_seed, "accuracy", students),
        "mean_validation": {
            n: _common.mean_over_seeds(
                [run["validation_accuracy"] for run in per_seed], n
            )
            for n in students
        },
        "params": {
            "teacher": first["teacher"].count_params(),
            "student": first["scratch"].count_params(),
        },
        "wall_time_s": time.perf_counter() - start,
        "config": _common.config(args),
    }
    print_results(results)
    return results


if __name__ == "__main__":
    main()
