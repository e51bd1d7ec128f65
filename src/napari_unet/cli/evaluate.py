"""``napari-unet evaluate``: ISBI-2012-style metrics of a segmentation against ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.cli.common import apply_label_map, check_output, input_spec, parse_label_map, read_array
from napari_unet.errors import UserInputError


def add_parser(sub: Any) -> None:
    """The ``evaluate`` subcommand and its options."""
    ev = sub.add_parser(
        "evaluate",
        help="compare a segmentation with ground truth",
        description="ISBI-2012-style metrics per slice and overall: adapted Rand error of the cells, "
        "variation of information (split, merge), pixel error, IoU per class.",
    )
    ev.add_argument("--pred", required=True, help="class labels from segment (1..K); PATH or PATH:DATASET")
    ev.add_argument("--gt", required=True, help="ground truth; PATH or PATH:DATASET (HDF5, zarr)")
    ev.add_argument(
        "--label-map",
        default=None,
        metavar="V:C,...",
        help="ground-truth stored value -> class, e.g. 0:1,255:2 (ISBI)",
    )
    ev.add_argument("--cell-class", type=int, default=2, help="class id of the cells (default 2)")
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the metrics as JSON (.json)")
    ev.add_argument(
        "--overwrite", action="store_true", help="replace an existing --json file that napari-unet wrote"
    )
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print ISBI-style metrics per slice and overall."""
    import json

    from napari_unet.storage.outputs import ATTRS_KEY, write_text

    mapping = parse_label_map(args.label_map)
    if not 1 <= args.cell_class <= 255:
        raise UserInputError(f"--cell-class must be a class id from 1 to 255, got {args.cell_class}")
    pred_src, _ = input_spec(args.pred, "prediction")
    gt_src, _ = input_spec(args.gt, "ground truth")
    if args.json:
        check_output(Path(args.json), args.overwrite, "metrics file", inputs=[pred_src, gt_src])
        if Path(args.json).suffix.lower() != ".json":
            raise UserInputError(f"--json {args.json} must end in .json")
    from napari_unet.arrays import metrics  # scikit-image: imported once the inputs are known to exist

    pred = metrics.check_class_labels(read_array(args.pred, "prediction"), f"prediction {args.pred}")
    gt = read_array(args.gt, "ground truth")
    if mapping is None:
        gt = metrics.check_class_labels(gt, f"ground truth {args.gt}")
    gt = apply_label_map(gt, mapping)
    if pred.shape != gt.shape:
        raise UserInputError(f"prediction has shape {pred.shape} but ground truth has shape {gt.shape}")
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
    cell = args.cell_class
    metrics.check_class_present(cell, pred, gt)
    classes = sorted({int(c) for c in np.unique(gt) if c > 0})
    rows = []
    for z in range(pred.shape[0]):
        m = metrics.evaluate_membrane((pred[z] == cell).astype(np.float32), gt[z] == cell)
        ious = metrics.iou_per_class(gt[z], pred[z], classes)
        rows.append({"slice": z, **m, **{f"iou_{c}": v for c, v in ious.items()}})
    keys = [k for k in rows[0] if k != "slice"]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    header = ["slice", *keys]
    print("\t".join(header))
    for r in rows:
        print("\t".join([str(r["slice"])] + [f"{r[k]:.4f}" for k in keys]))
    print("\t".join(["mean"] + [f"{mean[k]:.4f}" for k in keys]))
    if args.json:
        doc = {ATTRS_KEY: {"kind": "evaluation"}, "per_slice": rows, "mean": mean}
        write_text(Path(args.json), json.dumps(doc, indent=1), overwrite=args.overwrite, what="metrics file")
    return 0
