"""The `ctrlgan` command: train, sample, interpolate, traverse, generate, directions, export,
info, convert, bench and serve; one module per command group, options.py for what they share.

User mistakes print one line on stderr and exit with status 2 (a full disk too, naming the
file); Ctrl-C during training saves a checkpoint and exits with 130; a closed pipe (`ctrlgan
info | head -1`) ends the command quietly with status 1, Python's convention. Building the
parser imports neither torch nor onnxruntime: `ctrlgan --help` starts at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from ctrlgan import __version__
from ctrlgan.cli import (
    bench,
    convert,
    directions,
    edit,
    generate,
    model,
    options,
    sample,
    serve,
    train,
)
from ctrlgan.errors import CtrlganError

COMMAND_GROUPS = (train, sample, generate, directions, edit, model, convert, bench, serve)
DESCRIPTION = (
    "Conditional and controllable generation with GANs: train a class-conditional generator, "
    "find directions that control its features, export it to ONNX, and sample, interpolate, "
    "steer and batch-generate images from it."
)


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="ctrlgan", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ctrlgan {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=options.Parser)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # --help, --version or a usage error: their output, then exit
            sys.stdout.flush()
            raise
        args.argv = argv
        try:
            code = args.func(args)
        except CtrlganError as e:
            _error(args.cmd, str(e))
            return 2
        except BrokenPipeError:
            raise
        except OSError as e:  # an unwritable output, a full disk: name the file
            where = f": {e.filename}" if e.filename else ""
            _error(args.cmd, f"{e.strerror or e}{where}")
            return 2
        except KeyboardInterrupt:
            print(f"ctrlgan {args.cmd}: interrupted", file=sys.stderr)
            return 130
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not at exit
        return code
    except BrokenPipeError:
        # The reader of our output went away (`ctrlgan info | head -1`): stop quietly. Point
        # stdout at /dev/null so that the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _error(cmd: str, message: str) -> None:
    """One line on stderr, whatever the message holds (a path may contain a newline)."""
    one_line = message.replace("\n", "\\n").replace("\r", "\\r")
    print(f"ctrlgan {cmd}: error: {one_line}", file=sys.stderr)


__all__ = ["build_parser", "main"]
