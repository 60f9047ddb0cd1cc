"""Feature-tap training speed: keras-kd's FeatureMatch against keras.distillation.

Four trainers distil the same frozen CNN teacher into copies of the same CNN
student (the networks of `examples/feature_distillation.py`), from the same
initial weights, on the same batches of an MNIST subset, with the same
optimizer:

(a) `keras_kd.Distiller` with KL on the logits and a feature tap,
    `kd.FeatureMatch(t, s, loss="mse", weight=w)`;
(b) `keras.distillation.Distiller` with `LogitsDistillation(T)` and
    `FeatureDistillation("mse", t, s)`, weighted to give the same objective;
(c) `keras.distillation.Distiller` with `LogitsDistillation(T)` alone;
(d) `keras_kd.Distiller` with KL on the logits alone.

The tapped layers have identical shapes on both sides (the student's tapped
block has the teacher's channel count), because `FeatureDistillation` has no
projection adapter. keras-kd's objective is `alpha * KL + (1 - alpha) * hard
+ w * MSE`; keras.distillation's is `s * hard + (1 - s) * sum_i(w_i *
loss_i)`, so `s = 1 - alpha`, `w_logits = 1` and `w_feature = w / alpha`
give the same sum. Where they still differ: keras.distillation's KL clips
both softmaxes to [1e-7, 1] (keras-kd uses log-softmax); it runs the student
a second time (its feature extractor, training=True) where keras-kd reads
the tap from the one forward pass; and the two log different metrics. The
objectives of (a) and (b) are evaluated on the same images before training
and printed, as a check.

The figure is the median wall time of one epoch of `fit` over `--rounds`
rounds after a warm-up epoch (tracing), the four trainers alternating within
each round so all see the same machine load; the ratio (a) / (b) is the
result to read, not the absolute times. The fastest epoch of each is
printed too: on a shared or virtual machine, epochs can stall (on this
project's 2-core VM, step times snap to multiples of about 33 ms, whatever
the trainer), which moves a median of few rounds but not a minimum; give
more `--rounds` when the two disagree. After the same epochs, each
student's test accuracy is reported. Keras 3 only (`keras.distillation`
does not exist in tf_keras).

    python benchmarks/bench_features.py --data-dir ../shared/datasets/tfds

Writes a Markdown table to stdout and to `--out` with the suffix `.md`, and
the figures as JSON to `--out` (default `runs/bench_features.json`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import keras_kd as kd
from keras_kd.backend import keras, tf

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The TFDS data dir beside the project's root, the default of `--data-dir`
# when it exists.
_SHARED_TFDS = _ROOT.parent / "shared" / "datasets" / "tfds"

FEATURES_KD = "keras-kd, logits + feature"
FEATURES_KERAS = "keras.distillation, logits + feature"
LOGITS_KERAS = "keras.distillation, logits"
LOGITS_KD = "keras-kd, logits"
TRAINERS = (FEATURES_KD, FEATURES_KERAS, LOGITS_KERAS, LOGITS_KD)


def _conv_net():
    """`conv_net` of examples/feature_distillation.py: one definition of the
    networks for the example and this benchmark."""
    path = _ROOT / "examples" / "feature_distillation.py"
    spec = importlib.util.spec_from_file_location("feature_distillation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.conv_net


def build(kind, teacher, student, args):
    """One trainer of `student`, compiled."""
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam(args.learning_rate)
    tap = (f"t_block{args.tap_block}", f"s_block{args.tap_block}")
    if kind in (FEATURES_KD, LOGITS_KD):
        features = []
        if kind == FEATURES_KD:
            features = [kd.FeatureMatch(*tap, loss="mse", weight=args.feature_weight)]
        model = kd.Distiller(teacher=teacher, student=student, features=features)
        model.compile(
            optimizer=optimizer,
            loss=hard,
            jit_compile=args.jit,
            distillation_loss=kd.losses.KLDivergence(args.temperature),
            alpha=args.alpha,
        )
        return model
    from keras import distillation

    # A `keras.losses.KLDivergence` instance, not the default "kl_divergence":
    # that string resolves to the plain function, which LogitsDistillation
    # (Keras 3.15) then applies to the scaled logits without a softmax.
    kl = keras.losses.KLDivergence()
    losses = [distillation.LogitsDistillation(args.temperature, loss=kl)]
    weights = [1.0]
    if kind == FEATURES_KERAS:
        losses.append(
            distillation.FeatureDistillation(
                loss="mse", teacher_layer_name=tap[0], student_layer_name=tap[1]
            )
        )
        # (1 - s) * w_feature = w  with  s = 1 - alpha.
        weights.append(args.feature_weight / args.alpha)
    model = distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=losses,
        distillation_loss_weights=weights,
        student_loss_weight=1.0 - args.alpha,
    )
    model.compile(optimizer=optimizer, loss=hard, jit_compile=args.jit)
    return model


def _accuracy(model, x, y) -> float:
    predicted = np.argmax(model.predict(x, batch_size=1000, verbose=0), axis=-1)
    return float(np.mean(predicted == y))


def _write(path: pathlib.Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def markdown(results) -> str:
    """The figures as a Markdown table, with the ratio to read."""
    c = results["config"]
    steps = results["steps_per_epoch"]
    ref = results["median_epoch_s"][FEATURES_KERAS]
    t, s = results["taps"]["teacher"], results["taps"]["student"]
    lines = [
        f"MNIST, first {results['n_train']:,} training images: {steps} steps of "
        f"batch {c['batch_size']} per epoch; median of {c['rounds']} epochs after "
        f"a warm-up epoch, trainers alternating; jit_compile={c['jit']}. Taps "
        f"{t['layer']} {t['shape']} <- {s['layer']} {s['shape']}; teacher "
        f"{t['params']:,} parameters ({100 * results['teacher_accuracy']:.2f}% "
        f"test accuracy), student {s['params']:,}; T={c['temperature']:g}, "
        f"alpha={c['alpha']:g}, feature weight {c['feature_weight']:g}.",
        "",
        "| trainer | s/epoch (median) | ms/step | vs keras.distillation logits "
        f"+ feature | fastest epoch (s) | test accuracy after {c['rounds'] + 1} "
        "epochs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in TRAINERS:
        med = results["median_epoch_s"][kind]
        lines.append(
            f"| {kind} | {med:.2f} | {1000 * med / steps:.1f} | {med / ref:.2f}x "
            f"| {min(results['epoch_s'][kind]):.2f} "
            f"| {100 * results['accuracy'][kind]:.2f}% |"
        )
    ratio = results["ratio_features"]
    verdict = "meets" if ratio <= results["target_ratio"] else "misses"
    objective = results["initial_objective"]
    lines += [
        "",
        f"keras-kd / keras.distillation epoch time, logits + feature: "
        f"**{ratio:.2f}x** ({verdict} the target <= {results['target_ratio']:.2f}x); "
        f"fastest epochs: {results['ratio_features_fastest']:.2f}x.",
        f"Objective before training on {objective['n']:,} training images: "
        f"keras-kd {objective[FEATURES_KD]:.6f}, keras.distillation "
        f"{objective[FEATURES_KERAS]:.6f}. Largest difference between the "
        f"two feature students' weights after training: "
        f"{results['max_weight_difference']:.2g}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data-dir",
        default=str(_SHARED_TFDS) if _SHARED_TFDS.is_dir() else None,
        help="TFDS data dir holding MNIST (None: download)",
    )
    p.add_argument("--max-train", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="timed epochs per trainer")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument(
        "--student-widths",
        type=int,
        nargs="+",
        default=[16, 64, 32],
        help="the tapped block must have the teacher's width",
    )
    p.add_argument("--tap-block", type=int, default=2)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--feature-weight", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--jit", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--target-ratio", type=float, default=0.80)
    p.add_argument("--out", default=str(_ROOT / "runs" / "bench_features.json"))
    args = p.parse_args(argv)
    args.jit = {"auto": "auto", "true": True, "false": False}[args.jit]
    if not 0.0 < args.alpha < 1.0:
        p.error(f"argument --alpha: must be in (0, 1), got {args.alpha:g}")
    k = args.tap_block - 1
    if not 0 <= k < min(len(args.teacher_widths), len(args.student_widths)):
        p.error(f"argument --tap-block: no block {args.tap_block} in both networks")
    if args.teacher_widths[k] != args.student_widths[k]:
        p.error(
            "keras.distillation.FeatureDistillation needs identical shapes: "
            f"block {args.tap_block} has {args.teacher_widths[k]} channels in the "
            f"teacher and {args.student_widths[k]} in the student"
        )
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if kd.backend.LEGACY:
        raise SystemExit(
            "bench_features.py compares with keras.distillation, which exists "
            "in Keras 3 only: unset TF_USE_LEGACY_KERAS."
        )
    conv_net = _conv_net()
    train, test, num_classes, _ = kd.data.load_image_classification(
        "mnist", data_dir=args.data_dir, max_train=args.max_train
    )
    (x, y), (x_test, y_test) = train, test
    shape = x.shape[1:]

    keras.utils.set_random_seed(0)
    teacher = conv_net(
        shape,
        num_classes,
        args.teacher_widths,
        dropout=0.3,
        prefix="t_",
        name="teacher",
    )
    teacher.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(x, y, batch_size=args.batch_size, epochs=args.teacher_epochs, verbose=0)

    keras.utils.set_random_seed(1)
    initial = conv_net(shape, num_classes, args.student_widths, prefix="s_")
    students, trainers = {}, {}
    for kind in TRAINERS:
        students[kind] = conv_net(
            shape, num_classes, args.student_widths, prefix="s_", name="student"
        )
        students[kind].set_weights(initial.get_weights())
        trainers[kind] = build(kind, teacher, students[kind], args)

    # The same objective, before any training, on the same images.
    n = min(2048, len(x))
    objective = {"n": n}
    for kind in (FEATURES_KD, FEATURES_KERAS):
        logs = trainers[kind].evaluate(
            x[:n], y[:n], batch_size=args.batch_size, verbose=0, return_dict=True
        )
        objective[kind] = float(logs["loss"])

    def epoch(kind, seed):
        keras.utils.set_random_seed(seed)  # the same batches for every trainer
        start = time.perf_counter()
        trainers[kind].fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
        return time.perf_counter() - start

    warmup = {kind: epoch(kind, 100) for kind in TRAINERS}  # trace and compile
    times = {kind: [] for kind in TRAINERS}
    for r in range(args.rounds):
        for kind in TRAINERS:
            times[kind].append(epoch(kind, 101 + r))

    steps = int(np.ceil(len(x) / args.batch_size))
    median = {kind: statistics.median(times[kind]) for kind in TRAINERS}
    tap = args.tap_block
    results = {
        "n_train": int(len(x)),
        "n_test": int(len(x_test)),
        "steps_per_epoch": steps,
        "warmup_s": warmup,
        "epoch_s": times,
        "median_epoch_s": median,
        "ratio_features": median[FEATURES_KD] / median[FEATURES_KERAS],
        "ratio_features_fastest": min(times[FEATURES_KD]) / min(times[FEATURES_KERAS]),
        "ratio_logits": median[LOGITS_KD] / median[LOGITS_KERAS],
        "target_ratio": args.target_ratio,
        "accuracy": {k: _accuracy(m, x_test, y_test) for k, m in students.items()},
        "teacher_accuracy": _accuracy(teacher, x_test, y_test),
        "initial_objective": objective,
        "max_weight_difference": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(
                students[FEATURES_KD].get_weights(),
                students[FEATURES_KERAS].get_weights(),
            )
        ),
        "taps": {
            "teacher": {
                "layer": f"t_block{tap}",
                "shape": list(teacher.get_layer(f"t_block{tap}").output.shape[1:]),
                "params": int(teacher.count_params()),
            },
            "student": {
                "layer": f"s_block{tap}",
                "shape": list(initial.get_layer(f"s_block{tap}").output.shape[1:]),
                "params": int(initial.count_params()),
            },
        },
        "versions": {
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "keras_kd": kd.__version__,
            "python": platform.python_version(),
        },
        "cpus": os.cpu_count(),
        "config": {**vars(args), "jit": str(args.jit)},
    }
    table = markdown(results)
    print(table, end="")
    out = pathlib.Path(args.out)
    _write(out, json.dumps(results, indent=2) + "\n")
    _write(out.with_suffix(".md"), table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
