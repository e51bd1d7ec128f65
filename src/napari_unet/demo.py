"""The main job on embedded defaults: the shipped model segments a sample stack and writes masks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import UserInputError


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
    from . import data as samples

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
    from .outputs import check_replaceable, check_writable_folder

    if slices is not None and slices < 1:
        raise UserInputError(f"--slices must be at least 1, got {slices}")
    if output.exists() and not output.is_dir():
        raise UserInputError(f"demo output {output} is a file; name a folder for the results")
    for name in DEMO_FILES:
        check_replaceable(output / name, "demo result")
    check_writable_folder(output / DEMO_FILES[0], "demo results")


def _save_overlay(path: Path, rgb: np.ndarray) -> None:
    """The overlay PNG, tagged as napari-unet's and renamed into place only when complete."""
    from PIL import Image, PngImagePlugin

    from .outputs import TIFF_SOFTWARE, OutputLock, remove, swap_into_place, temp_name

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", TIFF_SOFTWARE)
    with OutputLock(path):
        tmp = temp_name(path)
        try:
            Image.fromarray(rgb).save(tmp, format="PNG", pnginfo=info)
            swap_into_place(tmp, path)
        except OSError as exc:
            remove(tmp)
            raise UserInputError(f"cannot write {path} ({exc.strerror or exc}); check free space") from None


def run_demo(
    output: Path, data: str = "auto", slices: int | None = None, device: str = "auto", tta: str = "none"
) -> dict:
    """Segment the sample with the shipped model; write masks.tif, instances.tif, overlay.png."""
    from . import io, metrics
    from .checkpoint import load_model
    from .cli import _progress
    from .inference import predict_tiles
    from .models import default_model_path
    from .postprocess import cell_class_index, instances

    check_demo_output(output, slices)
    path = default_model_path()
    if path is None:
        raise UserInputError("this installation ships no default model")
    model = load_model(path)
    name, images, truth = load_sample(data)
    if slices is not None:
        images = images[:slices]
        truth = None if truth is None else truth[:slices]
    k = model.n_classes
    probs = np.zeros((k, *images.shape), dtype=np.float32)
    with _progress() as bar:
        task = bar.add_task("segment", total=None, info=name)
        for res in predict_tiles(model, images, device=device, tta=tta):
            probs[(slice(None), *res.region)] = res.probabilities
            bar.update(task, total=res.total, completed=res.index + 1)
    classes = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
    cell = cell_class_index(model.metadata.get("classes"), k)
    inst = instances(probs[cell - 1])
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create {output} ({exc.strerror or exc}); pick another folder") from None
    io.write_labels(output / "masks.tif", classes, overwrite=True)
    io.write_labels(output / "instances.tif", inst, overwrite=True)
    _save_overlay(output / "overlay.png", overlay_rgb(images[0], inst[0]))
    summary = {"data": name, "shape": list(images.shape), "instances": int(inst.max())}
    if truth is not None:
        result = metrics.evaluate_stack(probs[cell - 1], truth == cell)
        summary["metrics"] = result["mean"]
    lines = [
        f"{name}: {images.shape[0]} slices of {images.shape[1]}x{images.shape[2]}",
        f"masks.tif      class ids 1..{k} ({', '.join(model.metadata.get('classes', []))})",
        f"instances.tif  {summary['instances']} cell instances (uint32, the cells tile each slice)",
        "overlay.png    slice 0: image | instances",
    ]
    if "metrics" in summary:
        lines.append(
            "metrics vs ground truth: " + ", ".join(f"{a} {b:.4f}" for a, b in summary["metrics"].items())
        )
    print("\n".join(lines))
    print(f"results in {output.resolve()}", file=sys.stderr)
    return summary
