"""What the commands share: the parser class, the common options (model, backend, classes,
seeds, steering, PNG outputs, batch sizes) and their parsers. Everything here is light: no
torch, no onnxruntime, so that `ctrlgan --help` starts at once.

Values are checked by the same validation layer as the Python API (ctrlgan.validate,
runtime/request.py); what is only about the command line (a spelling like "0-9" or
"thickness=2") is parsed here, and a mistake is an InvalidRequest naming the option.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from ctrlgan.artifact import DEFAULT_MODEL
from ctrlgan.errors import InvalidRequest
from ctrlgan.runtime.request import class_spec, int_list, seed_class  # noqa: F401 (the commands use them from here)

# Anything that starts like a negative number is a value, never an option: `--seed -1`,
# `--from -5:3`, `--batch-sizes -1,64` and `--alphas -3,-1.5,0` reach the validation that
# names what is wrong with them, instead of argparse's "expected one argument".
_NEGATIVE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (still exit 2) and negative numbers as values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless the help already says it or there is
    none: no "(default: None)", "(default: [])" or "(default 1) (default: None)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


def command(sub, name: str, help: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command's parser, with defaults shown in its --help."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=_DefaultsHelp,
        **kwargs,
    )


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help="bundled model name (mnist, digits) or artifact directory",
    )


def add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", default="auto", help="runtime backend: auto, torch, onnxruntime or triton"
    )


def add_steer(parser: argparse.ArgumentParser, help: str = "move along a direction") -> None:
    parser.add_argument(
        "--steer", action="append", default=[], metavar="NAME=ALPHA", help=f"{help} (repeatable)"
    )


def add_output(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("-o", "--output", default=default, help="PNG file to write")


def add_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=int, default=4, help="enlarge pixels by this factor")


def steer(items: list[str]) -> dict[str, float]:
    """--steer NAME=ALPHA, repeated -> {name: alpha} (the range is the runtime's check)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InvalidRequest("steer", f"expected name=alpha, got {item[:40]!r}")
    return out


def reals(text: str, field: str) -> list[float]:
    """'-3,-1.5,0,1.5,3' -> finite floats."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise InvalidRequest(field, f"expected finite numbers like -3,-1.5,0,1.5,3, got {text!r}")
    return values


def names(text: str, field: str) -> list[str]:
    """'a,b' -> ['a', 'b']; empty names are an error."""
    out = [n.strip() for n in text.split(",")]
    if not all(out):
        raise InvalidRequest(field, f"expected comma-separated names, got {text[:40]!r}")
    return out


def batch_sizes(text: str) -> tuple[int, ...]:
    """argparse type of --batch-sizes: '1,8,64' -> (1, 8, 64), each >= 1 (the CLI's bench and
    the scripts in benchmarks/ share it)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated batch sizes, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def name_tuple(text: str) -> tuple[str, ...]:
    """argparse type of a comma list of names (e.g. --backends)."""
    out = tuple(v.strip() for v in text.split(",") if v.strip())
    if not out:
        raise argparse.ArgumentTypeError("give one or more comma-separated names")
    return out


def output_file(text: str | Path, field: str = "output", suffix: str = ".png") -> Path:
    """A file to write (a .png, or ``suffix``); its directory must exist (checked before any
    work)."""
    path = Path(text)
    if path.suffix.lower() != suffix:
        raise InvalidRequest(field, f"must be a {suffix} file, got {str(path)!r}")
    if not path.parent.is_dir():
        raise InvalidRequest(field, f"directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise InvalidRequest(field, f"{str(path)!r} is a directory")
    return path


def positive(value: int, field: str) -> int:
    if value < 1:
        raise InvalidRequest(field, f"must be >= 1, got {value}")
    return value
