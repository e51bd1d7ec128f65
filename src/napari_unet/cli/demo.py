"""``napari-unet demo``: the main job on embedded defaults (shipped model, sample stack)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_unet.cli.segment import predict_with_progress
from napari_unet.errors import UserInputError


def add_parser(sub: Any) -> None:
    """The ``demo`` subcommand and its options."""
    demo = sub.add_parser(
        "demo",
        help="segment a sample stack with the shipped model",
        description="Segment the ISBI 2012 test stack (or, offline without it, a synthetic EM stack) "
        "and write masks, instance labels and an overlay picture.",
    )
    demo.add_argument(
        "-o", "--output", default="demo-output", help="folder for the results (earlier demo results replaced)"
    )
    demo.add_argument("--data", default="auto", choices=["auto", "isbi", "synthetic"])
    demo.add_argument("--slices", type=int, default=None, help="segment only the first N slices")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    demo.add_argument("--tta", default="none", choices=["none", "flips", "d4"], help="as for segment")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on embedded defaults: shipped model, sample stack, masks and an overlay."""
    run_demo(Path(args.output), data=args.data, slices=args.slices, device=args.device, tta=args.tta)
    return 0


def run_demo(
    output: Path, data: str = "auto", slices: int | None = None, device: str = "auto", tta: str = "none"
) -> dict:
    """Segment the sample with the shipped model; write masks.tif, instances.tif, overlay.png."""
    from napari_unet.analysis.postprocess import cell_class_index, instances
    from napari_unet.arrays import metrics
    from napari_unet.demo import check_demo_output, load_sample, overlay_rgb
    from napari_unet.modelfiles.checkpoint import load_model
    from napari_unet.models import default_model_path

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
    classes, probs = predict_with_progress(
        model, images, name, device=device, tta=tta, keep_probabilities=True
    )
    cell = cell_class_index(model.metadata.get("classes"), k)
    inst = instances(probs[cell - 1])
    from napari_unet.demo import write_results

    write_results(output, classes, inst, overlay_rgb(images[0], inst[0]))
    summary = {"data": name, "shape": list(images.shape), "instances": int(inst.max())}
    if truth is not None:
        result = metrics.evaluate_stack(probs[cell - 1], truth == cell)
        summary["metrics"] = result["mean"]
    n = images.shape[0]
    lines = [
        f"data: {name}, {n} slice{'s' if n != 1 else ''} of {images.shape[1]}x{images.shape[2]}",
        f"masks.tif      class ids 1..{k} ({', '.join(model.metadata.get('classes', []))})",
        f"instances.tif  {summary['instances']} cell instances (uint32, the cells tile each slice)",
        "overlay.png    slice 0: image | instances",
    ]
    if "metrics" in summary:
        lines.append(
            "metrics vs ground truth: " + ", ".join(f"{a} {b:.4f}" for a, b in summary["metrics"].items())
        )
    if truth is not None:
        lines += _synthetic_caveat(model, classes, truth, chosen=data == "synthetic")
    print("\n".join(lines))
    print(f"results in {output.resolve()}", file=sys.stderr)
    return summary


def _synthetic_caveat(model, classes, truth, chosen: bool) -> list[str]:
    """What the numbers on the synthetic stack mean: a check that everything runs, not the model's
    quality on EM, which the model's own validation on held-out ISBI slices states."""
    names = [str(c).lower() for c in model.metadata.get("classes", [])]
    lines = []
    if "membrane" in names:
        k = names.index("membrane") + 1
        lines.append(
            f"membrane: {100 * float((classes == k).mean()):.0f} % of pixels predicted, "
            f"{100 * float((truth == k).mean()):.0f} % true"
        )
    why = "as asked (--data synthetic)" if chosen else "because the ISBI 2012 data could not be had"
    lines.append(
        f"note: the synthetic stack is a stand-in made here {why}; its texture is not real EM and the "
        "model finds membrane inside its cells, so these numbers show that everything runs, not how "
        "well the model segments EM"
    )
    val = model.metadata.get("validation") or {}
    if "adapted_rand_error" in val and "pixel_error" in val:
        lines.append(
            f"on EM it was not trained on ({val.get('slices', 'held-out slices')}) the model scores "
            f"adapted_rand_error {val['adapted_rand_error']:.4f}, pixel_error {val['pixel_error']:.4f} "
            "(docs/model-card.md); run with --data isbi for the real sample"
        )
    return lines
