"""Render docs/images/augmentation.png: an ISBI 2012 slice, its labels and weight map, and four
random augmentations of all three (the paper's elastic deformation plus flips, turns, shifts and
grey-value changes).

Usage: python scripts/make_augmentation_figure.py [--data DIR] [--out PNG] [--seed N]
The ISBI data is read from ../shared/data/isbi2012 by default; the script stops with a message
where it is absent.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from PIL import Image  # noqa: E402

from napari_unet.arrays.augment import AugmentConfig, augment  # noqa: E402
from napari_unet.arrays.weightmap import weight_map  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "isbi2012"
DEFAULT_OUT = ROOT / "docs" / "images" / "augmentation.png"
SAMPLES = 4
GRID = 64  # px between the overlaid lattice lines


def main(argv: list[str] | None = None) -> int:
    """Build the figure; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ISBI 2012 folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--seed", type=int, default=3, help="random seed of the augmentations")
    args = parser.parse_args(argv)

    image_path = args.data / "train" / "images" / "00.png"
    label_path = args.data / "train" / "labels" / "00.png"
    if not image_path.is_file() or not label_path.is_file():
        print(f"ISBI 2012 slice not found under {args.data}; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(2)

    raw = np.asarray(Image.open(image_path), dtype=np.float32) / 255.0
    # label PNG: 0 = membrane, 255 = cell interior -> class 1 = membrane, 2 = cell
    labels = np.where(np.asarray(Image.open(label_path)) > 0, 2, 1).astype(np.int64)
    weights = weight_map(labels, n_classes=2, border_class=2, w0=10.0, sigma=5.0)

    config = AugmentConfig()  # the defaults: sigma = 10 px on a 3 x 3 grid, as in the paper
    image_b = torch.from_numpy(raw)[None, None].repeat(SAMPLES, 1, 1, 1)
    labels_b = torch.from_numpy(labels)[None].repeat(SAMPLES, 1, 1)
    weights_b = torch.from_numpy(weights)[None].repeat(SAMPLES, 1, 1)
    generator = torch.Generator().manual_seed(args.seed)
    aug_i, aug_l, aug_w = augment(image_b, labels_b, weights_b, config, generator)
    # row and column coordinates moved by the same draws (same seed, same shapes): their contours
    # at every GRID px draw the lattice as the augmentation bent it
    ramps = []
    for axis in (0, 1):
        ramp = np.indices(labels.shape, dtype=np.float32)[axis]
        ramp_b = torch.from_numpy(ramp)[None].repeat(SAMPLES, 1, 1)
        generator = torch.Generator().manual_seed(args.seed)
        ramps.append((ramp, augment(image_b, labels_b, ramp_b, config, generator)[2].numpy()))

    columns = [(raw, labels, weights, (ramps[0][0], ramps[1][0]), "original")] + [
        (
            aug_i[k, 0].numpy(),
            aug_l[k].numpy(),
            aug_w[k].numpy(),
            (ramps[0][1][k], ramps[1][1][k]),
            f"augmented {k + 1}",
        )
        for k in range(SAMPLES)
    ]
    label_cmap = ListedColormap(["#202020", "#d95f02", "#f0f0f0"])  # 0 unannotated, 1, 2
    vmax = float(weights.max())
    fig, axes = plt.subplots(3, len(columns), figsize=(2.1 * len(columns), 6.6))
    for col, (img, lab, wts, lines, title) in enumerate(columns):
        axes[0, col].imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
        levels = np.arange(GRID // 2, labels.shape[0], GRID)
        for ramp in lines:
            axes[0, col].contour(ramp, levels=levels, colors="#ffd400", linewidths=0.7)
        axes[0, col].set_title(title, fontsize=9)
        axes[1, col].imshow(lab, cmap=label_cmap, vmin=0, vmax=2, interpolation="nearest")
        axes[2, col].imshow(wts, cmap="magma", vmin=0, vmax=vmax, interpolation="lanczos")
    names = ["image (+ warped lattice)", "labels (membrane / cell)", "weight map w(x)"]
    for row, name in enumerate(names):
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.4)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    # a 128-colour palette keeps the figure small without visible loss
    picture = Image.open(buffer).convert("RGB")
    picture = picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
