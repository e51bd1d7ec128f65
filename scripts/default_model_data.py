"""The shipped models' data split and their figures of merit, shared by the training script and
``benchmarks/bench_models.py`` so that training, choosing and reporting can never use the same slices.

ISBI 2012 (512 x 512, 30 annotated slices): 0-14 train, 15-19 report; 20-29 report too where the
files are at hand (they are kept out of ../shared/data as an independent held-out set). Slices
15-19 chose the first shipped model (among six candidates, docs/model-card.md), so every model
continued from it carries that choice; nothing after it was chosen on them.
VNC ssTEM (vnc-dev, sections 10-19, 1024 x 1024): 10, 11, 13, 15 train, 17, 19 choose, 12, 14, 16,
18 report (the sections the fine-tuning benchmark scores on, so its start figures stay held out).
Classes of both: 1 = membrane, 2 = cell (everything that is not membrane).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

ISBI = {"train": list(range(0, 15)), "report": list(range(15, 20)), "held_out": list(range(20, 30))}
VNC = {"train": [10, 11, 13, 15], "choose": [17, 19], "report": [12, 14, 16, 18]}
REPO = Path(__file__).resolve().parents[1]


def vnc_dir(path: str | os.PathLike | None = None) -> Path:
    """The vnc-dev folder: ``path``, else $NAPARI_UNET_VNC_DIR, else ../shared/data/vnc-dev."""
    found = path or os.environ.get("NAPARI_UNET_VNC_DIR") or REPO.parent / "shared" / "data" / "vnc-dev"
    return Path(found)


def load_isbi(split: str) -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 slices of ``split`` as (images, classes) with classes 1 = membrane, 2 = cell."""
    from napari_unet.storage.data import load_isbi2012

    shared = REPO.parent / "shared" / "data"
    cache = None if os.environ.get("NAPARI_UNET_DATA_DIR") or not (shared / "isbi2012").is_dir() else shared
    images, stored = load_isbi2012("train", indices=ISBI[split], cache_dir=cache, download=cache is None)
    return images, np.where(stored > 127, 2, 1).astype(np.uint8)


def load_vnc(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """VNC sections of ``split`` as (images, classes) with classes 1 = membrane, 2 = cell."""
    import tifffile
    from PIL import Image

    root = vnc_dir(root)
    if not (root / "raw").is_dir():
        raise SystemExit(f"VNC data not found at {root}; set NAPARI_UNET_VNC_DIR or pass --vnc-dir")
    images = np.stack([tifffile.imread(root / "raw" / f"{z}.tif") for z in VNC[split]])
    membranes = np.stack([np.asarray(Image.open(root / "membranes" / f"{z}.png")) > 0 for z in VNC[split]])
    return images, np.where(membranes, 1, 2).astype(np.uint8)


def score(model, images: np.ndarray, classes: np.ndarray, instances: bool = False,
          probabilities: np.ndarray | None = None) -> dict[str, float]:
    """Membrane IoU (argmax), cells' adapted Rand error of P(cell) > 0.5 and, with ``instances``,
    of the cell instances ``segment --instances`` draws; the mean over slices."""
    from napari_unet import predict
    from napari_unet.arrays.metrics import evaluate_instances, evaluate_stack

    probs = predict(model, images) if probabilities is None else probabilities
    pred_membrane = probs.argmax(0) == 0  # probs[0] = P(membrane), probs[1] = P(cell)
    true_membrane = classes == 1
    inter = np.logical_and(pred_membrane, true_membrane).sum(axis=(1, 2))
    union = np.logical_or(pred_membrane, true_membrane).sum(axis=(1, 2))
    out = {
        "membrane_iou": float(np.mean(inter / np.maximum(union, 1))),
        "rand_threshold": evaluate_stack(probs[1], classes == 2)["mean"]["adapted_rand_error"],
    }
    if instances:
        from napari_unet.analysis.instances import cells_2d

        labels = np.stack([cells_2d(p) for p in probs[1]])
        out["rand_instances"] = float(evaluate_instances(labels, classes == 2)["adapted_rand_error"])
    return out


def machine() -> str:
    """CPU model and flags that decide speed, GPU name when there is one, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = line.split(":", 1)[1].split()
                flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu} ({flags or 'no avx2'}), {os.cpu_count()} cores{gpu}, torch {torch.__version__}"
