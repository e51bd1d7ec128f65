"""The ``napari-unet`` command line: the same core as the napari plugin, headless."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserInputError

#: how long `train` runs when neither --steps nor --max-minutes is given
DEFAULT_TRAIN_MINUTES = 5.0

PROG = "napari-unet"


def _progress():
    """A rich progress bar on stderr (stdout stays clean for data)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _resolve_model(spec: str | None):
    """Load the model named on the command line: a file, or the shipped default."""
    from .checkpoint import load_model
    from .models import default_model_path

    if spec in (None, "default"):
        path = default_model_path()
        if path is None:
            raise UserInputError(
                "this installation ships no default model; pass --model PATH to a .safetensors model"
            )
        return load_model(path)
    return load_model(Path(spec))


def _check_output(path: Path, overwrite: bool, what: str = "output") -> None:
    if path.exists() and not overwrite:
        raise UserInputError(f"{what} {path} exists; pass --overwrite to replace it")


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment an image or stack with overlap-tile prediction and write class labels."""
    from . import io
    from .inference import check_image, predict_tiles

    out = Path(args.output)
    _check_output(out, args.overwrite)
    if args.probabilities:
        _check_output(Path(args.probabilities), args.overwrite, "probabilities output")
    src = Path(args.input)
    if not src.exists():
        raise UserInputError(f"input {src} does not exist")
    model = _resolve_model(args.model)
    img = io.read_image(src)
    data = io.to_grey(img.data)
    check_image(data)
    if args.tile is not None and args.tile < 1:
        raise UserInputError(f"--tile must be a positive size, got {args.tile}")
    from .distributed import run_segment_command, use_blockwise

    if use_blockwise(args, data, model.n_classes):  # --scheduler, zarr output, or too big
        return run_segment_command(args, model, data)
    k = model.n_classes
    labels = np.zeros(data.shape, dtype=np.uint8)
    keep = args.probabilities or args.instances
    probs = np.zeros((k, *data.shape), dtype=np.float32) if keep else None
    tiles = predict_tiles(
        model,
        data,
        tile_shape=args.tile,
        batch_size=args.batch,
        device=args.device,
        precision=args.precision,
        tta=args.tta,
    )
    with _progress() as bar:
        task = bar.add_task("segment", total=None, info=f"{src.name}")
        for res in tiles:
            bar.update(task, total=res.total, completed=res.index + 1)
            labels[res.region] = (np.argmax(res.probabilities, axis=0) + 1).astype(np.uint8)
            if probs is not None:
                probs[(slice(None), *res.region)] = res.probabilities
    if args.instances:
        from .postprocess import cell_class_index, instances

        if probs is None:
            raise UserInputError("--instances needs the probabilities; this is a bug")  # pragma: no cover
        cell = cell_class_index(model.metadata.get("classes"), k)
        result = instances(probs[cell - 1], method=args.instances)
        written = io.write_labels(out, result, overwrite=args.overwrite)
        print(f"{int(result.max())} instances {result.shape} -> {written}", file=sys.stderr)
    else:
        written = io.write_labels(out, labels, overwrite=args.overwrite)
        print(f"labels {labels.shape} (classes 1..{k}) -> {written}", file=sys.stderr)
    if args.probabilities:
        p = io.write_probabilities(Path(args.probabilities), probs, overwrite=args.overwrite)
        print(f"probabilities {probs.shape} -> {p}", file=sys.stderr)
    return 0


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """``"0:1,255:2"`` -> {0: 1, 255: 2}; None stays None."""
    if not text:
        return None
    mapping: dict[int, int] = {}
    try:
        for part in text.split(","):
            value, _, cls = part.partition(":")
            mapping[int(value)] = int(cls)
    except ValueError:
        raise UserInputError(
            f"--label-map {text!r} is not of the form VALUE:CLASS,... (e.g. 0:1,255:2)"
        ) from None
    if any(c < 0 or c > 255 for c in mapping.values()):
        raise UserInputError("--label-map classes must be between 0 and 255")
    return mapping


def apply_label_map(labels: np.ndarray, mapping: dict[int, int] | None) -> np.ndarray:
    """Stored values -> classes; values not in the map become 0 (not annotated)."""
    labels = np.asarray(labels)
    if mapping is None:
        return labels
    out = np.zeros(labels.shape, dtype=np.uint8)
    for value, cls in mapping.items():
        out[labels == value] = cls
    return out


def _read_array(path: str, what: str) -> np.ndarray:
    from . import io

    src = Path(path)
    if not src.exists():
        raise UserInputError(f"{what} {src} does not exist")
    return np.asarray(io.to_grey(io.read_image(src).data))


def _train_start_model(args: argparse.Namespace, labels: np.ndarray):
    """The model to train: the start model given the classes of ``--classes`` (or its own)."""
    from .model import UNet, kept_classes, with_classes

    names = None
    if args.classes:
        names = [n.strip() for n in args.classes.split(",")]
        lowered = [n.lower() for n in names]
        if "" in lowered:
            raise UserInputError(f"--classes has an empty name: {args.classes!r}")
        twice = sorted({n for n in lowered if lowered.count(n) > 1})
        if twice:
            raise UserInputError(f"--classes names {', '.join(twice)} more than once")
        if len(names) < 2:
            raise UserInputError("--classes needs at least two names (e.g. background,mitochondrion)")
    high = int(labels.max()) if labels.size else 0
    if args.start == "scratch":
        names = names or [f"class {i}" for i in range(1, max(high, 2) + 1)]
        if args.base_channels < 1 or args.base_channels > 512:
            raise UserInputError(f"--base-channels must be between 1 and 512, got {args.base_channels}")
        model = UNet(n_classes=len(names), base_channels=args.base_channels)
        model.metadata["classes"] = names
    else:
        model = _resolve_model(args.start)
        if names is not None:
            kept, added, dropped = kept_classes(model, names)
            model = with_classes(model, names)
            print(
                f"classes 1..{len(names)}: {', '.join(names)} (kept: {', '.join(kept) or 'none'}; "
                f"new: {', '.join(added) or 'none'}; dropped: {', '.join(dropped) or 'none'})",
                file=sys.stderr,
            )
    if high > model.n_classes:
        from .model import class_names

        raise UserInputError(
            f"the labels go up to {high}, but the model has {model.n_classes} classes "
            f"({', '.join(class_names(model))}); name one class per label with --classes"
        )
    return model


def _check_writable(out: Path) -> None:
    """Refuse a model output whose folder cannot be written, before any training step."""
    import tempfile

    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UserInputError(f"the folder of model output {out} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise UserInputError(f"cannot write model output {out} ({exc.strerror or exc})") from None


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune or train a model; Ctrl-C stops after the current step and keeps a checkpoint."""
    import signal

    from .recipes import recipe_config
    from .train import Trainer

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise UserInputError(f"model output {out} must end in .safetensors")
    resume_same = args.resume and Path(args.start).resolve() == out.resolve()
    if not resume_same:
        _check_output(out, args.overwrite, "model output")
    _check_writable(out)
    steps, minutes = args.steps, args.max_minutes
    if steps is None and minutes is None:
        minutes = DEFAULT_TRAIN_MINUTES
    lr = args.lr
    if lr is None and args.optimizer is not None:
        lr = 1e-4 if args.optimizer == "adam" else 0.001
    cfg = recipe_config(
        args.recipe,
        steps=steps,
        max_minutes=minutes,
        learning_rate=lr,
        momentum=args.momentum,
        optimizer=args.optimizer,
        tile_size=args.tile,
        batch_size=args.batch,
        validation=args.validation,
        val_fraction=args.val_fraction,
        checkpoint_every=args.checkpoint_every,
        checkpoint_path=str(out),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    if steps is None:
        cfg.steps = None
    if args.no_augment:
        cfg.augment = None
    cfg.check()  # numbers first: a bad option is reported before the data is read
    images = _read_array(args.images, "images")
    labels = apply_label_map(_read_array(args.labels, "labels"), parse_label_map(args.label_map))
    if images.ndim not in (2, 3):
        raise UserInputError(f"images have shape {images.shape}; expected one grey image or a stack")
    if images.shape != labels.shape:
        raise UserInputError(f"images have shape {images.shape} but labels have shape {labels.shape}")
    if labels.dtype.kind == "f":
        labels = labels.astype(np.int64)
    model = _train_start_model(args, labels)
    trainer = Trainer(model, images, labels, cfg, resume_from=args.start if args.resume else None)
    interrupted = []

    def on_sigint(signum, frame):  # first Ctrl-C: stop after this step; second: abort
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        trainer.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _progress() as bar:
            task = bar.add_task("train", total=1000, completed=0, info="")
            for ev in trainer.run():
                info = f"step {ev.step}"
                info += f"  loss {ev.loss:.4f}" if ev.loss is not None else ""
                if ev.remaining is not None:
                    info += f"  {_clock(ev.remaining)} left"
                bar.update(task, completed=round(1000 * ev.progress), info=info)
                if ev.kind == "validation" and ev.metrics:
                    bar.console.print(
                        f"step {ev.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items())
                    )
    finally:
        signal.signal(signal.SIGINT, previous)
    how = "stopped" if interrupted else "finished"
    print(f"{how} after {trainer.step} steps; model -> {out}", file=sys.stderr)
    if trainer.worse_than_start:
        print(
            "warning: the validation loss ended higher than the start model's "
            f"({trainer.last_metrics['val_loss']:.4f} > {trainer.start_metrics['val_loss']:.4f}); "
            "keep using the start model, or annotate more and train again",
            file=sys.stderr,
        )
    return 0


def _clock(seconds: float) -> str:
    """Seconds as m:ss (or h:mm:ss)."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print ISBI-style metrics per slice and overall."""
    import json

    from . import metrics

    pred = _read_array(args.pred, "prediction")
    gt = apply_label_map(_read_array(args.gt, "ground truth"), parse_label_map(args.label_map))
    if pred.shape != gt.shape:
        raise UserInputError(f"prediction has shape {pred.shape} but ground truth has shape {gt.shape}")
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
    cell = args.cell_class
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
        Path(args.json).write_text(json.dumps({"per_slice": rows, "mean": mean}, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on embedded defaults: shipped model, sample stack, masks and an overlay."""
    from .demo import run_demo

    run_demo(Path(args.output), data=args.data, slices=args.slices, device=args.device, tta=args.tta)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="U-Net segmentation of electron-microscopy images (Ronneberger et al. 2015).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    seg = sub.add_parser(
        "segment",
        help="segment an image or stack",
        description="Segment a 2-D image or a stack with overlap-tile prediction.",
    )
    seg.add_argument("input", help="multi-page TIFF, folder of PNG/TIFF slices, zarr, HDF5 or MRC")
    seg.add_argument("-o", "--output", required=True, help=".tif/.tiff, .zarr or a folder of PNGs")
    seg.add_argument("--model", default=None, help="model .safetensors (default: the shipped model)")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    seg.add_argument("--tile", type=int, default=None, help="input tile size in px (default: auto)")
    seg.add_argument("--batch", type=int, default=None, help="tiles per forward pass (default: auto)")
    seg.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    seg.add_argument(
        "--tta",
        default="none",
        choices=["none", "flips", "d4"],
        help="test-time augmentation: average the network over 4 flips or all 8 turns and flips "
        "of each tile (4x or 8x the time, fewer broken membranes)",
    )
    seg.add_argument(
        "--probabilities",
        default=None,
        metavar="PATH",
        help="also write float32 probabilities (K, [Z,] H, W) to .tif or .zarr",
    )
    seg.add_argument(
        "--instances",
        nargs="?",
        const="watershed",
        default=None,
        choices=["watershed", "components"],
        help="write instance labels (uint32, membranes 0) instead of classes",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument(
        "--scheduler",
        default=None,
        metavar="WHERE",
        help="segment block by block on dask into zarr: 'threads' (this process), 'local' (worker "
        "processes on this machine) or a scheduler address tcp://HOST:PORT; zarr outputs and "
        "inputs too big for memory use 'threads' unless told otherwise",
    )
    seg.set_defaults(func=cmd_segment)

    tr = sub.add_parser(
        "train",
        help="train or fine-tune a model on annotated images",
        description="Fine-tune the shipped model (or train from scratch) on images with sparse labels: "
        "0 = not annotated, 1..K = classes (or stored values mapped with --label-map).",
    )
    tr.add_argument("--images", required=True, help="image or stack (any format segment reads)")
    tr.add_argument("--labels", required=True, help="annotations of the same shape")
    tr.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    tr.add_argument(
        "--from",
        dest="start",
        default="default",
        help="starting model: a .safetensors file, 'default' (shipped) or 'scratch'",
    )
    tr.add_argument(
        "--resume", action="store_true", help="continue the step count and optimiser state stored in --from"
    )
    tr.add_argument(
        "--recipe",
        default="fast",
        choices=["fast", "paper"],
        help="fast: the measured default (Adam, tiles drawn class by class); paper: SGD momentum 0.99, "
        "batch 1, 572 px tiles (docs/training.md compares them); the options below override single settings",
    )
    tr.add_argument("--steps", type=int, default=None, help="train this many steps")
    tr.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help=f"train this long (with --steps: whichever ends first; neither: {DEFAULT_TRAIN_MINUTES:g} min)",
    )
    tr.add_argument(
        "--validation",
        default="none",
        choices=["auto", "none"],
        help="auto: hold out a few annotated slices or blocks and report validation from step 0",
    )
    tr.add_argument("--val-fraction", type=float, default=None, help="share of annotated slices held out")
    tr.add_argument(
        "--label-map",
        default=None,
        metavar="V:C,...",
        help="stored value -> class, e.g. 0:1,255:2 (ISBI); unmapped values = not annotated",
    )
    tr.add_argument(
        "--classes",
        default=None,
        help="the trained model's class names in label order 1..K, e.g. background,mitochondrion: a name "
        "the start model has keeps its weights, a new name gets a new output channel, others are dropped",
    )
    tr.add_argument(
        "--base-channels", type=int, default=16, help="width of a --from scratch network (the paper used 64)"
    )
    tr.add_argument("--optimizer", default=None, choices=["sgd", "adam"], help="override the recipe's")
    tr.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    tr.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.99)")
    tr.add_argument("--tile", type=int, default=None, help="training input tile (default: the recipe's)")
    tr.add_argument("--batch", type=int, default=None, help="tiles per step (default 1)")
    tr.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    tr.add_argument("--checkpoint-every", type=int, default=100)
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    tr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--overwrite", action="store_true", help="replace an existing output model")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate",
        help="compare a segmentation with ground truth",
        description="ISBI-2012-style metrics per slice and overall: adapted Rand error of the cells, "
        "variation of information (split, merge), pixel error, IoU per class.",
    )
    ev.add_argument("--pred", required=True, help="class labels from segment (1..K)")
    ev.add_argument("--gt", required=True, help="ground truth")
    ev.add_argument(
        "--label-map",
        default=None,
        metavar="V:C,...",
        help="ground-truth stored value -> class, e.g. 0:1,255:2 (ISBI)",
    )
    ev.add_argument("--cell-class", type=int, default=2, help="class id of the cells (default 2)")
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the metrics as JSON")
    ev.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser(
        "demo",
        help="segment a sample stack with the shipped model",
        description="Segment the ISBI 2012 test stack (or, offline without it, a synthetic EM stack) "
        "and write masks, instance labels and an overlay picture.",
    )
    demo.add_argument("-o", "--output", default="demo-output", help="folder for the results")
    demo.add_argument("--data", default="auto", choices=["auto", "isbi", "synthetic"])
    demo.add_argument("--slices", type=int, default=None, help="segment only the first N slices")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    demo.add_argument("--tta", default="none", choices=["none", "flips", "d4"], help="as for segment")
    demo.set_defaults(func=cmd_demo)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{PROG}: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG}: error: out of memory; try a smaller --tile or --batch", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
