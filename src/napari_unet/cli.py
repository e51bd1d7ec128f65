"""The ``napari-unet`` command line: the same core as the napari plugin, headless."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserInputError

PROG = "napari-unet"


def _progress():
    """A rich progress bar on stderr (stdout stays clean for data)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _resolve_model(spec: str | None):
    """Load the model named on the command line: a file, or the shipped default."""
    from .checkpoint import load_model
    from .models import default_model_path

    if spec in (None, "default"):
        path = default_model_path()
        if path is None:
            raise UserInputError(
                "this installation ships no default model; pass --model PATH to a .safetensors model"
            )
        return load_model(path)
    return load_model(Path(spec))


def _check_output(path: Path, overwrite: bool, what: str = "output") -> None:
    if path.exists() and not overwrite:
        raise UserInputError(f"{what} {path} exists; pass --overwrite to replace it")


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment an image or stack with overlap-tile prediction and write class labels."""
    from . import io
    from .inference import check_image, predict_tiles

    out = Path(args.output)
    _check_output(out, args.overwrite)
    if args.probabilities:
        _check_output(Path(args.probabilities), args.overwrite, "probabilities output")
    src = Path(args.input)
    if not src.exists():
        raise UserInputError(f"input {src} does not exist")
    model = _resolve_model(args.model)
    img = io.read_image(src)
    data = io.to_grey(img.data)
    check_image(data)
    if args.tile is not None and args.tile < 1:
        raise UserInputError(f"--tile must be a positive size, got {args.tile}")
    k = model.n_classes
    labels = np.zeros(data.shape, dtype=np.uint8)
    probs = np.zeros((k, *data.shape), dtype=np.float32) if args.probabilities else None
    tiles = predict_tiles(
        model,
        data,
        tile_shape=args.tile,
        batch_size=args.batch,
        device=args.device,
        precision=args.precision,
    )
    with _progress() as bar:
        task = bar.add_task("segment", total=None, info=f"{src.name}")
        for res in tiles:
            bar.update(task, total=res.total, completed=res.index + 1)
            labels[res.region] = (np.argmax(res.probabilities, axis=0) + 1).astype(np.uint8)
            if probs is not None:
                probs[(slice(None), *res.region)] = res.probabilities
    written = io.write_labels(out, labels, overwrite=args.overwrite)
    print(f"labels {labels.shape} (classes 1..{k}) -> {written}", file=sys.stderr)
    if probs is not None:
        p = io.write_probabilities(Path(args.probabilities), probs, overwrite=args.overwrite)
        print(f"probabilities {probs.shape} -> {p}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="U-Net segmentation of electron-microscopy images (Ronneberger et al. 2015).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    seg = sub.add_parser(
        "segment",
        help="segment an image or stack",
        description="Segment a 2-D image or a stack with overlap-tile prediction.",
    )
    seg.add_argument("input", help="multi-page TIFF, folder of PNG/TIFF slices, zarr, HDF5 or MRC")
    seg.add_argument("-o", "--output", required=True, help=".tif/.tiff, .zarr or a folder of PNGs")
    seg.add_argument("--model", default=None, help="model .safetensors (default: the shipped model)")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    seg.add_argument("--tile", type=int, default=None, help="input tile size in px (default: auto)")
    seg.add_argument("--batch", type=int, default=None, help="tiles per forward pass (default: auto)")
    seg.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    seg.add_argument(
        "--probabilities",
        default=None,
        metavar="PATH",
        help="also write float32 probabilities (K, [Z,] H, W) to .tif or .zarr",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.set_defaults(func=cmd_segment)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{PROG}: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
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
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
