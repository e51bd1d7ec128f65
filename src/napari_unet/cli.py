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
#: what a bare ``--instances`` stands for: the model's cell class
INSTANCES_DEFAULT = "auto"


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
    from . import io, omezarr
    from .inference import check_image, predict_tiles

    if getattr(args, "into_input", None) is not None or args.output is None:
        return _segment_into_input(args)  # labels/ group of an OME-Zarr input
    if omezarr.is_ome_zarr(args.output):
        omezarr.require_library()  # a missing extra is said before any work, not after
    out = Path(args.output)
    src, dataset = _check_segment_args(args)
    model = _resolve_model(args.model)
    img = io.read_image(src, dataset=dataset)
    data = io.to_grey(img.data)
    check_image(data)
    _check_instance_options(args, model, data)
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
        result = _instances_from_probabilities(args, model, probs)
        written = io.write_labels(
            out, result, overwrite=args.overwrite, voxel_size=img.voxel_size, unit=img.unit
        )
        print(f"{len(np.unique(result)) - 1} objects {result.shape} -> {written}", file=sys.stderr)
    else:
        written = io.write_labels(
            out, labels, overwrite=args.overwrite, voxel_size=img.voxel_size, unit=img.unit,
            class_names=model.metadata.get("classes"),
        )  # fmt: skip
        print(f"labels {labels.shape} (classes 1..{k}) -> {written}", file=sys.stderr)
    if args.probabilities:
        p = io.write_probabilities(Path(args.probabilities), probs, overwrite=args.overwrite)
        print(f"probabilities {probs.shape} -> {p}", file=sys.stderr)
    return 0


def _segment_into_input(args: argparse.Namespace) -> int:
    """``segment IMAGE.ome.zarr --into-input [NAME]``: the labels become IMAGE/labels/NAME."""
    import shutil

    from . import io, omezarr

    if args.into_input is None:
        raise UserInputError("segment needs -o/--output, or --into-input for an OME-Zarr input")
    if args.output is not None:
        raise UserInputError("give either -o/--output or --into-input, not both")
    src = Path(args.input)
    if not src.exists():
        raise UserInputError(f"input {src} does not exist")
    omezarr.image_metadata(src)  # an OME-Zarr image, else one clear line before any work
    target = src / "labels" / args.into_input
    _check_output(target, args.overwrite)
    if args.probabilities:
        _check_output(Path(args.probabilities), args.overwrite, "probabilities output")
    classes = None if args.instances else _resolve_model(args.model).metadata.get("classes")
    omezarr.require_library()  # the extra is there before the segmentation runs
    tmp = src.parent / f".{src.name}.{args.into_input}.labels.zarr"
    overwrite = args.overwrite
    args.output, args.into_input, args.overwrite = str(tmp), None, True
    try:
        status = cmd_segment(args)
        if status:
            return status
        labels = io.read_image(tmp).data
        written = omezarr.write_into_image(
            src, target.name, labels, class_names=classes, overwrite=overwrite
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"labels -> {written}", file=sys.stderr)
    return 0


def _check_instance_options(args: argparse.Namespace, model, data) -> None:
    """Refuse instance options that cannot work, before any prediction runs."""
    from .instances import class_index

    if args.instances is None:
        for flag, value in (("--link-sections", args.link_sections), ("--min-size", args.min_size)):
            if value is not None:
                raise UserInputError(f"{flag} shapes instance labels; add --instances [CLASS]")
        return
    class_index(_instance_class(args), model.metadata.get("classes"), model.n_classes)
    if args.link_sections is not None:
        if data.ndim != 3:
            raise UserInputError(
                f"--link-sections joins objects of neighbouring sections; {args.input} is one 2-D "
                "image, not a stack"
            )
        if not 0.0 < args.link_sections <= 1.0:
            raise UserInputError(
                f"--link-sections takes a minimum overlap between 0 and 1, got {args.link_sections}"
            )
    if args.min_size is not None and args.min_size < 0:
        raise UserInputError(f"--min-size must be 0 or more pixels, got {args.min_size}")


def _instance_class(args: argparse.Namespace) -> str | None:
    return None if args.instances == INSTANCES_DEFAULT else args.instances


def _instances_from_probabilities(args: argparse.Namespace, model, probs: np.ndarray) -> np.ndarray:
    """Objects of the class ``--instances`` names, section by section, linked with --link-sections."""
    from .instances import class_index, instance_sections

    names = model.metadata.get("classes")
    k = class_index(_instance_class(args), names, model.n_classes)
    stack = probs if probs.ndim == 4 else probs[:, None]
    result = np.zeros(stack.shape[1:], dtype=np.uint32)
    sections = ((z, stack[:, z]) for z in range(stack.shape[1]))
    link = args.link_sections is not None
    steps = instance_sections(
        sections,
        k,
        class_names=names,
        min_size=args.min_size or 0,
        link=link,
        min_overlap=args.link_sections if link else 0.3,
    )
    with _progress() as bar:
        task = bar.add_task("instances", total=stack.shape[1], info=f"class {k}")
        for z, ids in steps:
            result[z] = ids
            bar.update(task, advance=1)
    return result if probs.ndim == 4 else result[0]


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


def cmd_export(args: argparse.Namespace) -> int:
    """Export a model as a bioimage.io package, ONNX or TorchScript for other tools."""
    from .export import export_model

    written = export_model(
        args.model, args.output, args.format, overwrite=args.overwrite, sample=args.sample,
        check=not args.no_check,
    )  # fmt: skip
    print(f"{args.format} -> {written}", file=sys.stderr)
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
    seg.add_argument(
        "-o",
        "--output",
        default=None,
        help=".tif/.tiff, .zarr, .ome.zarr (OME-Zarr labels with scale and pyramid) or a folder of PNGs",
    )
    seg.add_argument(
        "--into-input",
        nargs="?",
        const="napari-unet",
        default=None,
        metavar="NAME",
        help="instead of -o: write the labels into the OME-Zarr input as its labels/NAME group "
        "(default NAME: napari-unet)",
    )
    seg.add_argument(
        "--model",
        default=None,
        help="model .safetensors or a bioimage.io package exported by napari-unet (default: shipped)",
    )
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
        const=INSTANCES_DEFAULT,
        default=None,
        metavar="CLASS",
        help="write objects of one class (uint32 ids) instead of classes: a class name or id "
        "(default: the cell class; cells are split along the membranes between them, other "
        "classes are connected components split at thin necks)",
    )
    seg.add_argument(
        "--min-size",
        type=int,
        default=None,
        metavar="PX",
        help="with --instances: drop objects smaller than PX pixels per section (cells: give them "
        "to a neighbour)",
    )
    seg.add_argument(
        "--link-sections",
        type=float,
        nargs="?",
        const=0.3,
        default=None,
        metavar="OVERLAP",
        help="with --instances on a stack: one id for the objects of neighbouring sections that "
        "overlap by at least OVERLAP of the smaller one (default 0.3)",
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
    tr.add_argument(
        "--images",
        required=True,
        help="image or stack in any format segment reads (PATH:DATASET for HDF5/zarr)",
    )
    tr.add_argument(
        "--labels", required=True, help="annotations of the same shape (PATH:DATASET for HDF5/zarr)"
    )
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

    ex = sub.add_parser(
        "export",
        help="export a model for other tools (bioimage.io, ONNX, TorchScript)",
        description="Write a model as a bioimage.io model package (.zip, or a folder for any other "
        "name), an ONNX file or a TorchScript file. Every format computes softmax probabilities "
        "from a normalised tile; see docs/sharing.md. Needs the optional extra 'export' for "
        "bioimageio and onnx.",
    )
    ex.add_argument("model", help="a .safetensors model, 'default' (the shipped model) or a package")
    ex.add_argument("-o", "--output", required=True, help="file (or folder) to write")
    ex.add_argument("--format", default="bioimageio", help="bioimageio (default), onnx or torchscript")
    ex.add_argument(
        "--sample",
        default=None,
        metavar="IMAGE",
        help="bioimageio: an image whose centre becomes the package's test input (default: synthetic EM)",
    )
    ex.add_argument(
        "--no-check", action="store_true", help="bioimageio: skip bioimage.io's model test of the package"
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ex.set_defaults(func=cmd_export)

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
