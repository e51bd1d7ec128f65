"""Draw docs/images/overlap-tile.png: how overlap-tile prediction covers a real ISBI 2012 slice.

(a) the tile plan (``tiling.plan_tiles``) of the paper's 572 px tiles over the mirror-padded slice,
(b) one input tile, its 388 px output and the part of it the tile keeps, with the shipped model's
membrane probability there, (c, d) why tiles start 384 px apart, not 388: the difference between
one tile's output and one pass of the network over the whole mirror-padded slice, for a tile whose
output starts at 388 and one at 384.

Usage: python scripts/draw_overlap_tile.py [--data DIR] [--slice N] [-o PNG]
``--data`` is a folder holding isbi2012/train/images/NN.png (default: $NAPARI_UNET_DATA_DIR or
../shared/data beside the repository).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from napari_unet import load_model  # noqa: E402
from napari_unet.arrays.normalize import compute_normalizer  # noqa: E402
from napari_unet.arrays.tiling import plan_tiles, read_mirrored  # noqa: E402
from napari_unet.models import default_model_path  # noqa: E402
from napari_unet.prediction.engine import forward_probabilities  # noqa: E402
from napari_unet.storage.data import load_isbi2012  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TILE = 572  # the paper's input tile; its output is 388 px
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231")


def membrane(model, x: np.ndarray) -> np.ndarray:
    """P(membrane) of one normalised input window, fp32 on the CPU."""
    cpu = torch.device("cpu")
    with torch.inference_mode():
        p = forward_probabilities(model, torch.from_numpy(x)[None, None].float(), cpu, torch.float32)
    return p[0, 0].numpy()


def draw_plan(ax, padded: np.ndarray, pad: int, plan) -> None:
    """(a): every tile's input window (outline) and the output it keeps (filled), over the padded slice."""
    n = plan.image_shape[0]
    ext = (-pad - 0.5, n + pad - 0.5, n + pad - 0.5, -pad - 0.5)
    ax.imshow(padded, cmap="gray", extent=ext)
    ax.add_patch(Rectangle((-0.5, -0.5), n, n, fill=False, ec="white", ls="--", lw=1.5))
    c = plan.margin // 2
    for colour, t in zip(COLOURS, plan.tiles(), strict=False):
        th, tw = plan.tile_shape
        ax.add_patch(Rectangle((t.in_x - 0.5, t.in_y - 0.5), tw, th, fill=False, ec=colour, lw=1.5))
        (ys, xs) = t.out
        ax.add_patch(Rectangle((xs.start - 0.5, ys.start - 0.5), xs.stop - xs.start, ys.stop - ys.start,
                               fc=colour, alpha=0.25, ec=colour, lw=0))  # fmt: skip
        ax.plot(t.in_x + c, t.in_y + c, "o", color=colour, ms=4)
    ax.set_title(
        f"(a) the plan of {TILE} px input tiles (outlines) over the\nmirror-padded {n} px slice "
        f"(dashed): outputs start at {' and '.join(map(str, plan.starts[0]))},\nthe last one moved "
        "back to end at the border; filled: the part each keeps",
        fontsize=9,
    )
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])


def draw_tile(ax, model, image: np.ndarray, norm, plan) -> None:
    """(b): the last tile's input window, its 388 px output and the part it keeps, with P(membrane)."""
    t = list(plan.tiles())[-1]
    th, tw = plan.tile_shape
    x = norm(read_mirrored(image, t.in_y, t.in_x, th, tw))
    p = membrane(model, x)
    c = plan.margin // 2
    ax.imshow(x, cmap="gray", extent=(-0.5, tw - 0.5, th - 0.5, -0.5))
    oh, ow = plan.output_tile_shape
    (cy, cx) = t.crop
    kept = np.full((th, tw), np.nan)
    kept[c + cy.start : c + cy.stop, c + cx.start : c + cx.stop] = p[cy, cx]
    ax.imshow(kept, cmap="magma", alpha=0.55, vmin=0, vmax=1, extent=(-0.5, tw - 0.5, th - 0.5, -0.5))
    ax.add_patch(Rectangle((c - 0.5, c - 0.5), ow, oh, fill=False, ec="white", lw=1.5))
    ax.add_patch(Rectangle((c + cx.start - 0.5, c + cy.start - 0.5), cx.stop - cx.start, cy.stop - cy.start,
                           fill=False, ec=COLOURS[3], lw=2))  # fmt: skip
    ax.set_title(
        f"(b) the last input tile ({th} px, mirrored past the border),\nits {oh} px output (white) "
        f"and the {cy.stop - cy.start} x {cx.stop - cx.start} px it keeps\n(orange outline; "
        "colour: the shipped model's P(membrane))",
        fontsize=9,
    )


def shifted_difference(model, image: np.ndarray, norm, whole: np.ndarray, start: int) -> np.ndarray:
    """|tile output - whole-image pass| where a tile whose output starts at (start, start) overlaps
    the slice."""
    c = model.margin // 2
    p = membrane(model, norm(read_mirrored(image, start - c, start - c, TILE, TILE)))
    n = image.shape[0]
    return np.abs(p[: n - start, : n - start] - whole[start:n, start:n])


def draw_difference(ax, diff: np.ndarray, start: int, image) -> None:
    """(c) and (d): the difference map of one shifted tile, on a log scale."""
    shown = np.log10(np.maximum(diff, 1e-8))
    im = ax.imshow(shown, cmap="viridis", vmin=-8, vmax=-1)
    ax.set_title(
        f"({'c' if start % 16 else 'd'}) a tile whose output starts at {start} = {start // 16} x 16"
        + (f" + {start % 16}" if start % 16 else "")
        + "\nagainst one pass over the whole mirror-padded slice,"
        + f"\nslice pixels {start}..{image.shape[0] - 1}"
        + f": max |difference| {diff.max():.1g}",
        fontsize=9,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def main(argv: list[str] | None = None) -> int:
    """Compute the panels from the shipped model and one ISBI slice and write the PNG."""
    default_data = os.environ.get("NAPARI_UNET_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data)
    ap.add_argument("--slice", type=int, default=0)
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "images" / "overlap-tile.png"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    images, _ = load_isbi2012("train", indices=[args.slice], cache_dir=args.data, download=False)
    image = images[0]
    model = load_model(default_model_path()).eval()
    norm = compute_normalizer(image, model.metadata.get("normalization"))
    plan = plan_tiles(image.shape, (TILE, TILE), margin=model.margin, multiple=model.stride_multiple)
    n, c = image.shape[0], model.margin // 2
    pad = plan.starts[0][-1] + TILE - c - n  # the last tile's window reaches this far past the border
    padded = read_mirrored(image, -pad, -pad, n + 2 * pad, n + 2 * pad)
    size = model.input_size_for_output(n)
    whole = membrane(model, norm(read_mirrored(image, -c, -c, size, size)))[:n, :n]

    fig, axes = plt.subplots(2, 2, figsize=(10, 11), layout="constrained")
    draw_plan(axes[0, 0], padded, pad, plan)
    draw_tile(axes[0, 1], model, image, norm, plan)
    for ax, start in zip(axes[1], (388, 384), strict=True):
        im = draw_difference(ax, shifted_difference(model, image, norm, whole, start), start, image)
    fig.colorbar(im, ax=axes[1, 1], shrink=0.8, label="log10 |P(membrane) difference|")
    fig.suptitle(
        "Overlap-tile prediction on ISBI 2012 train slice "
        f"{args.slice:02d} with the shipped model (depth 4: 572 px in, 388 px out)\n"
        "Max-pooling 4 times makes the network equivariant only to shifts by multiples of 2^4 = 16,\n"
        "so on larger images tiles start (388 // 16) x 16 = 384 px apart, not 388",
        fontsize=10,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
