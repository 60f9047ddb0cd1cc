"""The `keras-kd` command line.

    keras-kd demo                  # offline: teacher, students, .tflite, report
    keras-kd distill --teacher T.keras --student S.keras --data DIR \\
        --output distilled.keras [--export int8]
    keras-kd export distilled.keras distilled.tflite --quantization int8 --data DIR
    keras-kd report --teacher T.keras --student distilled.keras --data DIR --out report/

`keras-kd <command> --help` describes each. A mistake the command can see
(a bad argument, a missing file, a file that is not a Keras model, a model
whose loading would run code without `--unsafe`, an output in a missing
directory, a teacher that scores no better than chance on the data) ends
with exit code 2 and one line on stderr naming the argument. The commands
live in `demo` (the demo, its options in `_demo_options`) and `commands`
(`distill`, `export`, `report`); `_io` reads model files, `_data` the data
(`--data`, `--split` in tfds's syntax), `_pixels` chooses each model's pixel
range (`--pixel-range`), `_checks` scores the teacher against chance, and
`_args` holds the parser's types, the error type and the quiet-output
helpers.
"""

from __future__ import annotations

import os
import sys

# Read by TensorFlow when it loads; `keras_kd/__init__.py` sets it too when
# the process is the `keras-kd` command (TensorFlow loads before this runs).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_kd.cli import commands, demo
from keras_kd.cli._args import (
    Parser,
    UsageError,
    native_stderr_silenced,
    quiet_python_logging,
)
from keras_kd.cli.demo import run_demo

__all__ = ["main", "run_demo"]


def _build_parser() -> Parser:
    parser = Parser(
        prog="keras-kd",
        description="Knowledge distillation for Keras on TensorFlow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    commands.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the `keras-kd` command.

    Args:
        argv: the arguments after `keras-kd` (default: `sys.argv[1:]`).

    Returns:
        0 on success. A mistake in the command line raises `SystemExit(2)`
        after printing one line, `keras-kd <command>: error: ...`, on stderr.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    quiet_python_logging()
    try:
        with native_stderr_silenced():
            args.run(args)
    except UsageError as e:
        sys.stdout.flush()
        print(f"keras-kd {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
