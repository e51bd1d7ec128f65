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


def _check_output(path: Path, overwrite: bool, what: str = "output", inputs: Sequence = ()) -> None:
    """Refuse an output before any work: exists without --overwrite, not ours, an input, unwritable."""
    from .outputs import check_output

    check_output(path, overwrite=overwrite, inputs=inputs, what=what)


#: Largest --batch accepted: more tiles per forward pass than this only costs memory.
MAX_BATCH = 256


def _input_spec(text: str, what: str, dataset: str | None = None) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:DATASET`` (HDF5, zarr) -> (path, dataset), refusing a missing path."""
    from . import io

    path, key = io.split_dataset(text)
    if dataset is not None:
        if key is not None and key.strip("/") != dataset.strip("/"):
            raise UserInputError(
                f"{what} {text} names dataset {key!r} but --dataset says {dataset!r}; give one name"
            )
        key = dataset
    if not (path.exists() or path.is_symlink()):
        raise UserInputError(f"{what} {path} does not exist")
    if key is not None and (fmt := io._detect(path)) not in ("hdf5", "zarr"):
        raise UserInputError(f"{what} {path} is a {fmt} image and holds no datasets; drop the dataset name")
    return path, key


def _check_segment_args(args: argparse.Namespace) -> tuple[Path, str | None]:
    """Every option and output of ``segment`` checked before the model or any pixel is read."""
    from . import io

    src, key = _input_spec(args.input, "input", getattr(args, "dataset", None))
    if args.tile is not None and args.tile < 1:
        raise UserInputError(f"--tile must be a positive size, got {args.tile}")
    if args.batch is not None and not 1 <= args.batch <= MAX_BATCH:
        raise UserInputError(f"--batch must be from 1 to {MAX_BATCH} tiles, got {args.batch}")
    out = Path(args.output)
    io._target_kind(out, what="labels", allow_png=True)
    _check_output(out, args.overwrite, inputs=[src])
    if args.probabilities:
        probs = Path(args.probabilities)
        io._target_kind(probs, what="probabilities", allow_png=False)
        if os.path.realpath(probs) == os.path.realpath(out):
            raise UserInputError("--probabilities and -o name the same path; give each its own")
        _check_output(probs, args.overwrite, "probabilities output", inputs=[src])
    return src, key


def _check_segment_space(args: argparse.Namespace, shape: tuple[int, ...], n_classes: int) -> None:
    """Refuse a probabilities TIFF (its size is exact: float32, uncompressed) the disk cannot hold."""
    from .outputs import check_free_space

    probs = getattr(args, "probabilities", None)
    if probs and Path(probs).suffix.lower() in (".tif", ".tiff"):
        nbytes = 4 * n_classes * int(np.prod(shape, dtype=np.int64))
        check_free_space(Path(probs), nbytes, "probabilities output")


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment an image or stack with overlap-tile prediction and write class labels."""
    from . import io
    from .inference import check_image, predict_tiles

    out = Path(args.output)
    src, dataset = _check_segment_args(args)
    model = _resolve_model(args.model)
    img = io.read_image(src, dataset=dataset)
    data = io.to_grey(img.data)
    check_image(data)
    _check_segment_space(args, tuple(data.shape), model.n_classes)
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


def _read_array(path: str, what: str, dataset: str | None = None) -> np.ndarray:
    """Read ``PATH`` or ``PATH:DATASET`` into grey numpy, one clear line for anything wrong."""
    from . import io

    src, key = _input_spec(path, what, dataset)
    return np.asarray(io.to_grey(io.read_image(src, dataset=key).data, name=f"{what} {path}"))


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune or train a model; Ctrl-C stops after the current step and keeps a checkpoint."""
    import signal

    from .model import UNet
    from .train import TrainConfig, Trainer

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise UserInputError(f"model output {out} must end in .safetensors")
    resume_same = args.resume and Path(args.start).resolve() == out.resolve()
    if not resume_same:
        _check_output(out, args.overwrite, "model output")
    images = _read_array(args.images, "images")
    labels = apply_label_map(_read_array(args.labels, "labels"), parse_label_map(args.label_map))
    if images.shape != labels.shape:
        raise UserInputError(f"images have shape {images.shape} but labels have shape {labels.shape}")
    if labels.dtype.kind == "f":
        labels = labels.astype(np.int64)
    if args.start == "scratch":
        n = int(labels.max())
        names = args.classes.split(",") if args.classes else [f"class {i}" for i in range(1, max(n, 2) + 1)]
        if len(names) < max(n, 2):
            raise UserInputError(f"--classes names {len(names)} classes but the labels go up to {n}")
        model = UNet(n_classes=len(names), base_channels=args.base_channels)
        model.metadata["classes"] = names
    else:
        model = _resolve_model(args.start)
    lr = args.lr if args.lr is not None else (1e-4 if args.optimizer == "adam" else 0.001)
    from .augment import AugmentConfig

    cfg = TrainConfig(
        steps=args.steps,
        max_minutes=args.max_minutes,
        learning_rate=lr,
        momentum=args.momentum,
        optimizer=args.optimizer,
        tile_size=args.tile,
        augment=None if args.no_augment else AugmentConfig(),
        val_fraction=args.val_fraction,
        checkpoint_every=args.checkpoint_every,
        checkpoint_path=str(out),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
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
            task = bar.add_task("train", total=cfg.steps, completed=trainer.step, info="")
            for ev in trainer.run():
                info = f"loss {ev.loss:.4f}" if ev.loss is not None else ""
                if ev.metrics:
                    info += "  " + "  ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items())
                bar.update(task, completed=ev.step, info=info)
                if ev.kind == "validation" and ev.metrics:
                    bar.console.print(
                        f"step {ev.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items())
                    )
    finally:
        signal.signal(signal.SIGINT, previous)
    how = "stopped" if interrupted else "finished"
    print(f"{how} after {trainer.step} steps; model -> {out}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print ISBI-style metrics per slice and overall."""
    import json

    from . import metrics
    from .outputs import ATTRS_KEY, write_text

    mapping = parse_label_map(args.label_map)
    if not 1 <= args.cell_class <= 255:
        raise UserInputError(f"--cell-class must be a class id from 1 to 255, got {args.cell_class}")
    pred_src, _ = _input_spec(args.pred, "prediction")
    gt_src, _ = _input_spec(args.gt, "ground truth")
    if args.json:
        _check_output(Path(args.json), args.overwrite, "metrics file", inputs=[pred_src, gt_src])
        if Path(args.json).suffix.lower() != ".json":
            raise UserInputError(f"--json {args.json} must end in .json")
    pred = _read_array(args.pred, "prediction")
    gt = apply_label_map(_read_array(args.gt, "ground truth"), mapping)
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
        doc = {ATTRS_KEY: {"kind": "evaluation"}, "per_slice": rows, "mean": mean}
        write_text(Path(args.json), json.dumps(doc, indent=1), overwrite=args.overwrite, what="metrics file")
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
    seg.add_argument(
        "input",
        help="multi-page TIFF, folder of PNG/TIFF slices, zarr, HDF5 or MRC; name one array of an "
        "HDF5 file or zarr store as PATH:DATASET (e.g. c.h5:volumes/raw) or with --dataset",
    )
    seg.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="the array to segment inside an HDF5 file or zarr store (needed when it holds several)",
    )
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
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs, only if napari-unet wrote them (never anything else)",
    )
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
    tr.add_argument("--steps", type=int, default=500)
    tr.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time")
    tr.add_argument("--val-fraction", type=float, default=0.0, help="share of slices held out")
    tr.add_argument(
        "--label-map",
        default=None,
        metavar="V:C,...",
        help="stored value -> class, e.g. 0:1,255:2 (ISBI); unmapped values = not annotated",
    )
    tr.add_argument("--classes", default=None, help="class names for --from scratch, e.g. membrane,cell")
    tr.add_argument(
        "--base-channels", type=int, default=16, help="width of a --from scratch network (the paper used 64)"
    )
    tr.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    tr.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.001 sgd, 1e-4 adam)")
    tr.add_argument("--momentum", type=float, default=0.99)
    tr.add_argument("--tile", type=int, default=None, help="training input tile (default: 412 CPU, 572 GPU)")
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
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{PROG}: warning: {message}\n"


def _output_locks(args: argparse.Namespace):
    """Hold a command's output locks for the whole run: a second run to one output is refused early."""
    from .outputs import locked

    targets: list[str | None] = []
    if args.command == "segment":
        targets = [args.output, args.probabilities]
    elif args.command == "evaluate":
        targets = [args.json]
    elif args.command == "demo":
        targets = [args.output]
    existing = [t for t in targets if t is not None and Path(t).absolute().parent.is_dir()]
    return locked(existing)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        with _output_locks(args):
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
    except RuntimeError as exc:  # torch reports a failed allocation as RuntimeError
        text = str(exc).lower()
        if "allocate" not in text and "out of memory" not in text:
            raise
        print(f"{PROG}: error: out of memory; try a smaller --tile or --batch", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
