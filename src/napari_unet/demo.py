"""The main job on embedded defaults: the shipped model segments a sample stack and writes masks."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from napari_unet.errors import UserInputError


def overlay_rgb(image: np.ndarray, instance_labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grey image beside the same image with each instance in a random colour and membranes dark red."""
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.8])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rng = np.random.default_rng(7)
    colours = rng.uniform(0.25, 1.0, size=(int(instance_labels.max()) + 1, 3))
    colours[0] = (0.8, 0.05, 0.05)
    tinted = (1 - alpha) * rgb + alpha * colours[instance_labels]
    both = np.concatenate([rgb, np.ones((rgb.shape[0], 8, 3)), tinted], axis=1)
    return (both * 255).round().astype(np.uint8)


def load_sample(data: str = "auto") -> tuple[str, np.ndarray, np.ndarray | None]:
    """(name, stack, true classes or None): the ISBI 2012 test stack when it can be had, else synthetic."""
    from napari_unet.storage import data as samples

    if data in ("auto", "isbi"):
        try:
            images, _ = samples.load_isbi2012("test", download=True)
            return "ISBI 2012 test stack", images, None
        except UserInputError as exc:
            if data == "isbi":
                raise
            print(f"ISBI 2012 not available ({exc}); using the synthetic EM stack", file=sys.stderr)
    images, labels = samples.synthetic_em(n_slices=8, shape=(512, 512), seed=0)
    return "synthetic EM stack", images, labels


#: The files the demo writes into its output folder.
DEMO_FILES = ("masks.tif", "instances.tif", "overlay.png")


def check_demo_output(output: Path, slices: int | None = None) -> None:
    """Refuse a demo output that is a file, holds results napari-unet did not write, or is read-only."""
    from napari_unet.storage.outputs import check_replaceable, check_writable_folder

    if slices is not None and slices < 1:
        raise UserInputError(f"--slices must be at least 1, got {slices}")
    if output.exists() and not output.is_dir():
        raise UserInputError(f"demo output {output} is a file; name a folder for the results")
    for name in DEMO_FILES:
        check_replaceable(output / name, "demo result")
    check_writable_folder(output / DEMO_FILES[0], "demo results")


def save_overlay(path: Path, rgb: np.ndarray) -> None:
    """The overlay PNG, tagged as napari-unet's and renamed into place only when complete."""
    from PIL import Image, PngImagePlugin

    from napari_unet.storage.outputs import TIFF_SOFTWARE, safe_output

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", TIFF_SOFTWARE)
    with safe_output(path, overwrite=True, what="demo overlay") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", pnginfo=info)


def write_results(output: Path, classes: np.ndarray, inst: np.ndarray, overlay: np.ndarray) -> None:
    """The demo's three files, all or none; a folder made for them goes again if they could not be."""
    from napari_unet.storage import io
    from napari_unet.storage.outputs import os_error_message, staged

    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(os_error_message(exc, output / DEMO_FILES[0], "demo results")) from None
    try:
        with staged([output / n for n in DEMO_FILES]) as (masks, instances, picture):
            io.write_labels(masks, classes, overwrite=True)
            io.write_labels(instances, inst, overwrite=True)
            save_overlay(picture, overlay)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                output.rmdir()  # only when empty: nothing of anyone's is removed
        raise
