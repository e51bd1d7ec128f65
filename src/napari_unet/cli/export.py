"""``napari-unet export``: a model as a bioimage.io package, ONNX or TorchScript."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``export`` subcommand and its options."""
    ex = sub.add_parser(
        "export",
        help="export a model for other tools (bioimage.io, ONNX, TorchScript)",
        description="Write a model as a bioimage.io model package (.zip, or a folder for any other "
        "name), an ONNX file or a TorchScript file. Every format computes softmax probabilities "
        "from a normalised tile; see docs/sharing.md. Needs the optional extra 'export' for "
        "bioimageio and onnx.",
    )
    ex.add_argument("model", help="a .safetensors model, 'default' (the shipped model) or a package")
    ex.add_argument("-o", "--output", required=True, help="file (or folder) to write")
    ex.add_argument("--format", default="bioimageio", help="bioimageio (default), onnx or torchscript")
    ex.add_argument(
        "--sample",
        default=None,
        metavar="IMAGE",
        help="bioimageio: an image whose centre becomes the package's test input (default: synthetic EM)",
    )
    ex.add_argument(
        "--no-check", action="store_true", help="bioimageio: skip bioimage.io's model test of the package"
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ex.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a model as a bioimage.io package, ONNX or TorchScript for other tools."""
    from napari_unet.export import export_model

    written = export_model(
        args.model, args.output, args.format, overwrite=args.overwrite, sample=args.sample,
        check=not args.no_check,
    )  # fmt: skip
    print(f"{args.format} -> {written}", file=sys.stderr)
    return 0
