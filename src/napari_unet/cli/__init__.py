"""The ``napari-unet`` command line (entry point :func:`main`); nothing in the package imports it."""

from __future__ import annotations

from napari_unet.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
