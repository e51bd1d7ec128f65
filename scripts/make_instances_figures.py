"""Pictures for docs/instances.md: before/after on a hard ISBI slice, linked mitochondria in 3-D.

Needs the ISBI 2012 and VNC development data (../shared/data or --data DIR) and the shipped model.
Writes docs/images/instances_before_after.png and docs/images/instances_linked_3d.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.segmentation import expand_labels, find_boundaries  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def overlay(ax, image, labels, title):
    """Image with each object filled in its own colour, outlines dark: merges show as one colour."""
    rng = np.random.default_rng(1)
    colours = rng.uniform(0.15, 1.0, size=(int(labels.max()) + 1, 3))
    rgb = np.repeat((image / 255.0)[..., None], 3, axis=2)
    colours[0] = 0.0
    weight = np.where(labels > 0, 0.45, 0.0)[..., None]  # label 0 (true membrane) stays grey
    rgb = (1 - weight) * rgb + weight * colours[labels]
    rgb[find_boundaries(labels, mode="inner")] = 0.0
    ax.imshow(rgb)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def before_after(data: Path, out: Path) -> None:
    from napari_unet import load_model, predict
    from napari_unet.analysis.instances import cells_2d
    from napari_unet.arrays.metrics import adapted_rand_error, segment_cells
    from napari_unet.models import default_model_path
    from napari_unet.storage.data import load_isbi2012

    os.environ.setdefault("NAPARI_UNET_DATA_DIR", str(data))
    images, stored = load_isbi2012("train", indices=[15])
    p = predict(load_model(default_model_path()), images)[1][0]
    truth = ndi.label(stored[0] > 127)[0]
    comp = segment_cells(p)
    new = expand_labels(cells_2d(p), 512)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.8))
    overlay(axes[0], images[0], truth, "ISBI 2012 slice 15: true cells")
    e1, e2 = adapted_rand_error(truth, comp), adapted_rand_error(truth, new)
    overlay(axes[1], images[0], comp, f"components of P(cell) > 0.5: {e1:.4f}")
    overlay(axes[2], images[0], new, f"new default (cells_2d): {e2:.4f}")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.text(
        0.5,
        0.01,
        "adapted Rand error in the titles; shipped model, slice never trained on",
        ha="center",
        fontsize=10,
    )
    fig.savefig(out, dpi=80)
    print(f"slice 15: components {e1:.4f}, new {e2:.4f} -> {out}")


def linked_3d(data: Path, out: Path, model: str | None = None) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from PIL import Image
    from skimage.measure import marching_cubes

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_instances import MITO, MITO_VALUE, degrade, mito_prediction

    from napari_unet.analysis.instances import SectionLinker, objects_2d

    mito = np.stack(
        [np.asarray(Image.open(data / "vnc-dev" / "labels" / f"{i}.png")) == MITO_VALUE for i in MITO]
    )
    if model:  # a model with a mitochondrion class predicts the raw sections
        raw = np.stack([np.asarray(Image.open(data / "vnc-dev" / "raw" / f"{i}.tif")) for i in MITO])
        objects, _ = mito_prediction(model, raw, "none")
    else:  # the true masks, degraded like a prediction
        objects = [objects_2d(s > 0.5, min_size=30) for s in degrade(mito, np.random.default_rng(0))]
    linker = SectionLinker(link=True, min_overlap=0.3)
    vol = np.stack([linker.add(z, o) for z, o in enumerate(objects)])
    step, z_scale = 4, 3 * 50.0 / 4.6  # px per sample in x-y; section thickness in px, 3x
    small = vol[:, ::step, ::step]
    rng = np.random.default_rng(3)
    fig = plt.figure(figsize=(8, 7))
    ax = fig.add_subplot(projection="3d")
    ids, sizes = np.unique(small[small > 0], return_counts=True)
    for i in ids[np.argsort(sizes)[::-1][:60]]:
        padded = np.pad(small == i, 1).astype(np.float32)
        if padded.sum() < 4:
            continue
        verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=(z_scale / step, 1.0, 1.0))
        mesh = Poly3DCollection(verts[faces][:, :, [2, 1, 0]], alpha=0.8)
        mesh.set_facecolor(rng.uniform(0.2, 1.0, 3))
        ax.add_collection3d(mesh)
    ax.set_xlim(0, small.shape[2])
    ax.set_ylim(0, small.shape[1])
    ax.set_zlim(0, (small.shape[0] + 2) * z_scale / step)
    ax.set_box_aspect((small.shape[2], small.shape[1], (small.shape[0] + 2) * z_scale / step))
    ax.set_xlabel(f"x (px / {step})")
    ax.set_ylabel(f"y (px / {step})")
    ax.set_zlabel("z (px / 4, stretched 3x)")
    ax.view_init(elev=25, azim=-60)
    ax.set_title(
        f"VNC mitochondria, sections {MITO[0]}-{MITO[-1]}, {'predicted' if model else 'degraded masks'}: "
        f"2-D objects linked into "
        f"{len(np.unique(vol)) - 1} 3-D objects\n(one colour per id; 60 largest shown; z stretched 3x)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"{len(np.unique(vol)) - 1} linked objects -> {out}")


def main() -> int:
    """Write both pictures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--which", default="both", choices=["both", "before-after", "linked"])
    ap.add_argument("--mito-model", default=None, help="link this model's mitochondria (else degraded masks)")
    args = ap.parse_args()
    data = Path(args.data)
    images = ROOT / "docs" / "images"
    if args.which != "linked":
        before_after(data, images / "instances_before_after.png")
    if args.which != "before-after":
        linked_3d(data, images / "instances_linked_3d.png", args.mito_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
