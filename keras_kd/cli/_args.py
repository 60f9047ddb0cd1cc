"""The command line's plumbing: its parser, argument types, errors, quiet runs.

Every user mistake the command can see ends the same way: exit code 2 and
one line on stderr, `keras-kd <command>: error: <what>`, naming the
argument. argparse's own errors are shortened to that one line
(`Parser.error`); mistakes found later (a missing file, a model that is not
one) are raised as `UsageError` and printed by `keras_kd.cli.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text):
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text):
    """argparse type: a finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a number greater than 0, got {text}"
        )
    return value


def mean_std(text):
    """argparse type of `--normalization`: `MEAN,STD`, two numbers, STD > 0."""
    parts = text.split(",")
    try:
        mean, std = (float(part) for part in parts)
    except ValueError:
        mean, std = float("nan"), float("nan")
    if not (abs(mean) < float("inf") and 0.0 < std < float("inf")):
        raise argparse.ArgumentTypeError(
            "expected MEAN,STD, two numbers with STD > 0 such that the "
            f"model's input is (pixel - MEAN) / STD (e.g. 127.5,127.5), got {text}"
        )
    return mean, std


def fraction(text):
    """argparse type: a number in [0, 1] (alpha)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a number between 0 and 1, got {text}"
        )
    return value


def add_verbosity(parser, default: int, what: str) -> None:
    """Adds `--verbose [N]` (and `--quiet`) setting `args.verbose`.

    Args:
        parser: the command's parser.
        default: the level without either flag.
        what: what the levels show, for the help text.
    """
    parser.add_argument(
        "--verbose",
        nargs="?",
        type=int,
        const=1,
        default=default,
        choices=[0, 1, 2],
        help=f"{what}: 0 none, 1 progress bars (`--verbose` alone), 2 one line "
        f"per epoch (default {default})",
    )
    parser.add_argument(
        "--quiet",
        dest="verbose",
        action="store_const",
        const=0,
        help="no progress output (same as --verbose 0)",
    )


def quiet_python_logging() -> None:
    """Keeps TensorFlow's and absl's Python-side INFO/WARNING chatter out."""
    import logging

    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


@contextlib.contextmanager
def native_stderr_silenced():
    """Keeps what TensorFlow's C++ writes to stderr out of the terminal.

    The converter, the LiteRT interpreter and XLA write straight to file
    descriptor 2 ("Created TensorFlow Lite XNNPACK delegate", "fully_quantize:
    0, ...", CUDA probes); no setting silences all of it. Inside this
    context, descriptor 2 goes to a temporary file while Python's
    `sys.stderr` keeps writing to the terminal, so Python warnings and
    errors still show. What was captured is written out if the block fails
    with an error that is not a `UsageError`, to help find the cause.
    """
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (embedded use)
        yield
        return
    captured = tempfile.TemporaryFile()
    python_stderr = sys.stderr
    terminal = None
    try:
        if getattr(python_stderr, "fileno", None) is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if python_stderr.fileno() == 2:
                    terminal = os.fdopen(
                        os.dup(original), "w", buffering=1, errors="replace"
                    )
                    sys.stderr = terminal
        os.dup2(captured.fileno(), 2)
        yield
    except UsageError:
        raise
    except BaseException:
        os.dup2(original, 2)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
        if text:
            (terminal or python_stderr).write(text)
        raise
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)
        sys.stderr = python_stderr
        if terminal is not None:
            terminal.close()
        captured.close()
