"""The ``napari-unet`` command line: the same core as the napari plugin, headless.

Each subcommand lives in its own module (``segment``, ``train``, ``evaluate``, ``export``, ``demo``,
``models``)
with its options and its body; this module builds the parser from them and turns errors into exit
codes. The core never imports this package.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_unet.cli import demo, evaluate, export, models, segment, train
from napari_unet.cli.common import PROG
from napari_unet.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="U-Net segmentation of electron-microscopy images (Ronneberger et al. 2015).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for command in (segment, train, evaluate, export, demo, models):
        command.add_parser(sub)
    return parser


#: the package's folder: warnings raised from a file under it are ours and read as one line
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _warning_formatter(fallback: Callable[..., str]) -> Callable[..., str]:
    """A ``warnings.formatwarning`` that shows napari-unet's own warnings as one labelled line and
    leaves every other library's warning as ``fallback`` formats it (with its file and line)."""

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if os.path.abspath(str(filename)).startswith(_PACKAGE_DIR + os.sep):
            return f"{PROG}: warning: {message}\n"
        return fallback(message, category, filename, lineno, line)

    return format_warning


def _output_locks(args: argparse.Namespace):
    """Hold a command's output locks for the whole run: a second run to one output is refused early."""
    from napari_unet.storage.outputs import locked

    targets: list[str | None] = []
    if args.command == "segment":
        targets = [args.output, args.probabilities]
    elif args.command == "evaluate":
        targets = [args.json]
    elif args.command in ("demo", "train", "export"):  # two runs to one -o: the second is refused
        targets = [args.output]
    existing = [t for t in targets if t is not None and Path(t).absolute().parent.is_dir()]
    return locked(existing)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_format = warnings.formatwarning
    warnings.formatwarning = _warning_formatter(previous_format)
    try:
        with _output_locks(args):
            return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG}: error: out of memory; try a smaller --tile or --batch", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch reports a failed allocation as RuntimeError
        text = str(exc).lower()
        if "allocate" not in text and "out of memory" not in text:
            raise
        print(f"{PROG}: error: out of memory; try a smaller --tile or --batch", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:  # a caller that runs main() in its own process keeps its own warning format
        warnings.formatwarning = previous_format
