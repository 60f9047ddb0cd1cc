"""`--labels` and `--normalization`: the standard metadata a phone app reads.

`keras-kd export` and `keras-kd distill --export` pass them to
`kd.export.to_tflite(labels=..., normalization=...)`, which writes the TFLite
metadata that MediaPipe Tasks and the Task Library read. Without
`--normalization`, the model's pixel range (`keras_kd.cli._pixels`) gives
it: a model taking 0-255 pixels is `(pixel - 0) / 1`, one taking 0-1 is
`(pixel - 0) / 255`.
"""

from __future__ import annotations

import os

from keras_kd.cli._args import UsageError, mean_std


def add_options(parser, option: str) -> None:
    """Adds `--labels` and `--normalization` to `parser`."""
    parser.add_argument(
        "--labels",
        metavar="FILE",
        default=None,
        help=f"a text file of class names, one per line in class order: {option} "
        "then writes the standard metadata (labels, normalization) that "
        "MediaPipe Tasks and the Task Library read, so a phone app loads the "
        ".tflite file as it is",
    )
    parser.add_argument(
        "--normalization",
        metavar="MEAN,STD",
        type=mean_std,
        default=None,
        help="with --labels: the model's input is (pixel - MEAN) / STD for "
        "pixels in 0-255 (default: from the pixel range, 0,1 for a model "
        "taking 0-255 and 0,255 for one taking 0-1)",
    )


def check_args(args) -> None:
    """`--labels` and `--normalization`, before anything is loaded."""
    if args.normalization is not None and args.labels is None:
        raise UsageError("--normalization: needs --labels")
    if args.labels is not None and not os.path.isfile(args.labels):
        raise UsageError(f"--labels {args.labels}: no such file")


def metadata(args, pixel_range: str) -> dict:
    """`to_tflite`'s `labels` and `normalization` from `--labels` and
    `--normalization` (by default the model's pixel range as a
    normalization: 0-255 is (0, 1), 0-1 is (0, 255))."""
    if args.labels is None:
        return {}
    normalization = args.normalization
    if normalization is None:
        normalization = (0.0, 1.0) if pixel_range == "0-255" else (0.0, 255.0)
    mean, std = normalization
    print(
        f"Metadata: labels from {args.labels}, input = (pixel - {mean:g}) / {std:g}",
        flush=True,
    )
    return {"labels": args.labels, "normalization": normalization}
