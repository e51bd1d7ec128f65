"""``napari-unet segment``: overlap-tile segmentation of an image or stack, in process or block by block."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.cli.common import check_output, input_spec, resolve_model
from napari_unet.cli.progress import progress
from napari_unet.errors import UserInputError

if TYPE_CHECKING:
    from napari_unet.network.model import UNet

#: what a bare ``--instances`` stands for: the model's cell class
INSTANCES_DEFAULT = "auto"


def add_parser(sub: Any) -> None:
    """The ``segment`` subcommand and its options, in the order ``--help`` lists them."""
    seg = sub.add_parser(
        "segment",
        help="segment an image or stack",
        description="Segment a 2-D image or a stack with overlap-tile prediction.",
    )
    _add_source_arguments(seg)
    _add_prediction_arguments(seg)
    _add_instance_arguments(seg)
    _add_run_arguments(seg)
    seg.set_defaults(func=cmd_segment)


def _add_source_arguments(seg: argparse.ArgumentParser) -> None:
    """What is segmented, where the labels go, and the model."""
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


def _add_prediction_arguments(seg: argparse.ArgumentParser) -> None:
    """How the network runs (device, tile, batch, precision, test-time augmentation) and whether
    probabilities are kept."""
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
        "--planes",
        default="auto",
        choices=["auto", "xy", "ortho"],
        help="a volume in its sections (xy), or along its XY, XZ and YZ planes averaged (ortho: 3x "
        "the time, in memory); auto (the default): ortho when the file states a z spacing within "
        "1.5x of its pixel size (isotropic, e.g. FIB-SEM), else xy (ssTEM, or no z spacing stated)",
    )


def _add_instance_arguments(seg: argparse.ArgumentParser) -> None:
    """``--instances`` and the options that shape the objects it writes."""
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
        "--link-by",
        default=None,
        choices=["overlap", "probabilities"],
        help="with --link-sections: what OVERLAP measures: the pixels two objects share (overlap, "
        "the default) or the class probability they share, min(p, p') summed over those pixels "
        "(probabilities)",
    )
    seg.add_argument(
        "--instance-method",
        default=None,
        metavar="NAME",
        help="with --instances: how objects are made: auto (default: cells for the cell class, "
        "components split at thin necks for others), cells, objects, components or watershed",
    )


def _add_run_arguments(seg: argparse.ArgumentParser) -> None:
    """Replacing outputs, and where block-by-block segmentation runs."""
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


def _check_segment_args(args: argparse.Namespace) -> tuple[Path, str | None]:
    """Every option and output of ``segment`` checked before the model or any pixel is read."""
    from napari_unet.storage import io

    src, key = input_spec(args.input, "input", getattr(args, "dataset", None))
    if args.tile is not None and args.tile < 1:
        raise UserInputError(f"--tile must be a positive size, got {args.tile}")
    if args.batch is not None and args.batch < 1:
        raise UserInputError(f"--batch must be a positive number of tiles, got {args.batch}")
    if args.batch is not None:
        from napari_unet.prediction.tileplan import (
            MAX_BATCH,  # imports torch: only for a batch that is otherwise valid
        )

        if not 1 <= args.batch <= MAX_BATCH:
            raise UserInputError(f"--batch must be from 1 to {MAX_BATCH} tiles, got {args.batch}")
    out = Path(args.output)
    io.output_format(out, what="labels")
    check_output(out, args.overwrite, inputs=[src])
    if args.probabilities:
        probs = Path(args.probabilities)
        io.output_format(probs, what="probabilities")
        if os.path.realpath(probs) == os.path.realpath(out):
            raise UserInputError("--probabilities and -o name the same path; give each its own")
        check_output(probs, args.overwrite, "probabilities output", inputs=[src])
    return src, key


def _check_segment_space(args: argparse.Namespace, shape: tuple[int, ...], n_classes: int) -> None:
    """Refuse a probabilities TIFF (its size is exact: float32, uncompressed) the disk cannot hold."""
    from napari_unet.storage.outputs import check_free_space

    probs = getattr(args, "probabilities", None)
    if probs and Path(probs).suffix.lower() in (".tif", ".tiff"):
        nbytes = 4 * n_classes * int(np.prod(shape, dtype=np.int64))
        check_free_space(Path(probs), nbytes, "probabilities output")


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment an image or stack with overlap-tile prediction and write class labels.

    Options, input and outputs are checked before torch is imported, so bad input is answered at once.
    """
    from napari_unet.storage import io, omezarr

    if getattr(args, "into_input", None) is not None or args.output is None:
        return _segment_into_input(args)  # labels/ group of an OME-Zarr input
    if omezarr.is_ome_zarr(args.output):
        omezarr.require_library()  # a missing extra is said before any work, not after
    out = Path(args.output)
    src, dataset = _check_segment_args(args)
    from napari_unet.prediction.arguments import check_finite_image
    from napari_unet.prediction.inference import check_image

    model = resolve_model(args.model)
    img = io.read_image(src, dataset=dataset)
    data = io.to_grey(img.data)
    check_image(data)
    check_finite_image(data, f"input {args.input}")  # an all-NaN image has nothing to segment
    _check_instance_options(args, model, data)
    _check_segment_space(args, tuple(data.shape), model.n_classes)
    from napari_unet.distributed import needs_blockwise

    blockwise = needs_blockwise(
        args.output, data, model.n_classes, scheduler=args.scheduler, instances=args.instances,
        probabilities=args.probabilities,
    )  # fmt: skip
    planes = _planes(args, img, data, blockwise)
    if blockwise:  # --scheduler, zarr output, or too big for memory
        return run_blockwise(args, model, data)
    k = model.n_classes
    labels, probs = (_predict_ortho if planes == "ortho" else predict_with_progress)(
        model, data, src.name, tile=args.tile, batch=args.batch, device=args.device,
        precision=args.precision, tta=args.tta, keep_probabilities=bool(args.probabilities or args.instances),
    )  # fmt: skip
    from napari_unet.storage.outputs import staged

    # both outputs or neither: a failed --probabilities leaves no new labels and no litter
    with staged([out, args.probabilities]) as (out_tmp, probs_tmp):
        if args.instances:
            result = _instances_from_probabilities(args, model, probs)
            io.write_labels(
                out_tmp, result, overwrite=args.overwrite, voxel_size=img.voxel_size, unit=img.unit,
                z_stated=img.z_stated,
            )
            count = int(np.count_nonzero(np.unique(result)))  # cells tile the image: there may be no 0
            done = [f"{count} objects {result.shape} -> {out}"]
        else:
            io.write_labels(
                out_tmp, labels, overwrite=args.overwrite, voxel_size=img.voxel_size, unit=img.unit,
                class_names=model.metadata.get("classes"), z_stated=img.z_stated,
            )  # fmt: skip
            done = [f"labels {labels.shape} (classes 1..{k}) -> {out}"]
        if probs_tmp is not None:
            io.write_probabilities(probs_tmp, probs, overwrite=args.overwrite)
            done.append(f"probabilities {probs.shape} -> {args.probabilities}")
    print("\n".join(done), file=sys.stderr)
    return 0


def _segment_into_input(args: argparse.Namespace) -> int:
    """``segment IMAGE.ome.zarr --into-input [NAME]``: the labels become IMAGE/labels/NAME."""
    import shutil

    from napari_unet.storage import io, omezarr

    if args.into_input is None:
        raise UserInputError("segment needs -o/--output, or --into-input for an OME-Zarr input")
    if args.output is not None:
        raise UserInputError("give either -o/--output or --into-input, not both")
    from napari_unet.storage.outputs import check_name, exists, is_ours

    check_name(args.into_input, "--into-input")  # a name, not a path: before anything is touched
    src = Path(args.input)
    if not src.exists():
        raise UserInputError(f"input {src} does not exist")
    omezarr.image_metadata(src)  # an OME-Zarr image, else one clear line before any work
    target = src / "labels" / args.into_input
    check_output(target, args.overwrite)
    if args.probabilities:
        check_output(Path(args.probabilities), args.overwrite, "probabilities output")
    classes = None if args.instances else resolve_model(args.model).metadata.get("classes")
    omezarr.require_library()  # the extra is there before the segmentation runs
    tmp = src.parent / f".{src.name}.{args.into_input}.labels.zarr"  # the same each run: it resumes
    if exists(tmp) and not is_ours(tmp):
        raise UserInputError(f"{tmp} is in the way: --into-input works there; move it and run again")
    overwrite = args.overwrite
    args.output, args.into_input, args.overwrite = str(tmp), None, True
    try:
        status = cmd_segment(args)
        if status:
            return status
        labels = io.read_image(tmp).data
        written = omezarr.write_into_image(src, target.name, labels, class_names=classes, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"labels -> {written}", file=sys.stderr)
    return 0


def _check_instance_options(args: argparse.Namespace, model, data) -> None:
    """Refuse instance options that cannot work, before any prediction runs."""
    from napari_unet.analysis.instances import class_index, instance_method

    method = getattr(args, "instance_method", None)
    if args.instances is None:
        flags = (
            ("--link-sections", args.link_sections),
            ("--link-by", getattr(args, "link_by", None)),
            ("--min-size", args.min_size),
            ("--instance-method", method),
        )
        for flag, value in flags:
            if value is not None:
                raise UserInputError(f"{flag} shapes instance labels; add --instances [CLASS]")
        return
    class_index(_instance_class(args), model.metadata.get("classes"), model.n_classes)
    instance_method(method or "auto")
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
    if getattr(args, "link_by", None) is not None and args.link_sections is None:
        raise UserInputError("--link-by says how sections are linked; add --link-sections [OVERLAP]")
    if args.min_size is not None and args.min_size < 0:
        raise UserInputError(f"--min-size must be 0 or more pixels, got {args.min_size}")


def _instance_class(args: argparse.Namespace) -> str | None:
    return None if args.instances == INSTANCES_DEFAULT else args.instances


def _instances_from_probabilities(args: argparse.Namespace, model, probs: np.ndarray) -> np.ndarray:
    """Objects of the class ``--instances`` names, section by section, linked with --link-sections."""
    from napari_unet.analysis.instances import class_index, instance_sections

    names = model.metadata.get("classes")
    k = class_index(_instance_class(args), names, model.n_classes)
    stack = probs if probs.ndim == 4 else probs[:, None]
    result = np.zeros(stack.shape[1:], dtype=np.uint32)
    sections = ((z, stack[:, z]) for z in range(stack.shape[1]))
    link = args.link_sections is not None
    steps = instance_sections(
        sections,
        k,
        method=getattr(args, "instance_method", None) or "auto",
        class_names=names,
        min_size=args.min_size or 0,
        link=link,
        min_overlap=args.link_sections if link else 0.3,
        link_by=getattr(args, "link_by", None) or "overlap",
    )
    with progress() as bar:
        task = bar.add_task("instances", total=stack.shape[1], info=f"class {k}")
        for z, ids in steps:
            result[z] = ids
            bar.update(task, advance=1)
    return result if probs.ndim == 4 else result[0]


def _planes(args: argparse.Namespace, img: Any, data: Any, blockwise: bool) -> str:
    """"xy" or "ortho": what ``--planes`` asks for on this input (auto: from the voxel size its
    file states, said in one line for a volume); three planes need a volume in memory, so a 2-D
    image or a block-by-block run refuses them."""
    from napari_unet.prediction.ortho import choose_planes, planes_reason

    asked = getattr(args, "planes", None) or "auto"
    if asked == "ortho" and data.ndim != 3:
        raise UserInputError(
            f"--planes ortho predicts a volume along three planes; {args.input} is one 2-D image"
        )
    if asked == "ortho" and blockwise:
        raise UserInputError(
            "--planes ortho needs the whole volume in memory and does not run block by block "
            "(--scheduler, a zarr output or an input larger than memory); use --planes xy"
        )
    chosen = choose_planes(asked, img.voxel_size, data.ndim, z_stated=img.z_stated)
    why = planes_reason(img.voxel_size, data.ndim, z_stated=img.z_stated, unit=img.unit)
    if asked == "auto" and data.ndim == 3 and not blockwise:
        said = "ortho, XY, XZ and YZ averaged" if chosen == "ortho" else "xy, sections only"
        hint = "; --planes xy for sections only" if chosen == "ortho" else ""
        print(f"planes: {said} ({why}){hint}", file=sys.stderr)
    elif asked == "auto" and chosen == "ortho":  # block by block: said only when it costs the choice
        print(f"planes: xy, sections only ({why}, but this run goes block by block)", file=sys.stderr)
    return "xy" if blockwise else chosen


def _predict_ortho(
    model: UNet, data: Any, name: str, *, keep_probabilities: bool = False, **settings: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Class labels and probabilities of a volume predicted along three planes and averaged
    (:func:`napari_unet.prediction.ortho.predict_ortho`) under a progress bar; keywords as
    :func:`predict_with_progress`'s (the probabilities are always made)."""
    from napari_unet.prediction.inference import labels_from_probabilities
    from napari_unet.prediction.ortho import predict_ortho

    with progress() as bar:
        task = bar.add_task("segment", total=None, info=f"{name} (xy)")

        def step(plane: str, index: int, total: int) -> None:
            bar.update(task, total=total, completed=index + 1, info=f"{name} ({plane})")

        probs = predict_ortho(
            model, data, settings.get("tile"), settings.get("batch"), settings.get("device", "auto"),
            settings.get("precision", "auto"), tta=settings.get("tta", "none"), progress=step,
        )  # fmt: skip
    return labels_from_probabilities(probs), probs


# The keywords are inference.predict_into's, passed on one to one (``segment`` and ``demo`` name
# them as their options do); a settings object would only be unpacked again here.
def predict_with_progress(
    model: UNet,
    data: Any,
    name: str,
    *,
    tile: int | None = None,
    batch: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    tta: str = "none",
    keep_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class labels (uint8, 1..K) of ``data`` by in-process overlap-tile prediction under a progress bar,
    and its probabilities (K, ...) when ``keep_probabilities``; ``segment`` and ``demo`` both use it.
    Labels alone are taken on the device (:class:`napari_unet.prediction.sinks.Collect`)."""
    from napari_unet.prediction.inference import predict_into
    from napari_unet.prediction.sinks import Collect

    sink = Collect(model.n_classes, data.shape, probabilities=keep_probabilities)
    steps = predict_into(
        model, data, sink, tile_shape=tile, batch_size=batch, device=device, precision=precision, tta=tta
    )
    with progress() as bar:
        task = bar.add_task("segment", total=None, info=name)
        for step in steps:
            bar.update(task, total=step.total, completed=step.index + 1)
    kept = sink.finish()
    return kept.labels, kept.probabilities


def run_blockwise(args: argparse.Namespace, model: UNet, data: Any) -> int:
    """``napari-unet segment`` on the block-by-block path, with a progress bar on stderr."""
    from napari_unet.distributed import finish_ome_zarr, segment_blocks

    out, probs, final = _blockwise_outputs(args)
    gen = segment_blocks(
        model,
        data,
        out,
        probabilities=probs,
        scheduler=getattr(args, "scheduler", None) or "threads",
        tile_shape=args.tile,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch,
        overwrite=args.overwrite or final is not None,
        tta=getattr(args, "tta", "none"),
    )
    result = _follow_blocks(gen, out, Path(args.input).name)
    if result is None:
        return 130
    written = result.labels
    if final is not None:
        written = finish_ome_zarr(out, final, args.input, model, overwrite=args.overwrite)
    _report_blocks(result, written, model.n_classes)
    return 0


def _blockwise_outputs(args: argparse.Namespace) -> tuple[Path, Path | None, Path | None]:
    """(labels store, probabilities store, final OME-Zarr) of a block-by-block run, checked first:
    blocks are written to zarr stores only, and an OME-Zarr output is first a plain zarr store of
    blocks whose NGFF levels and metadata come at the end (``final``, else None)."""
    from napari_unet.distributed import blocks_path
    from napari_unet.storage.omezarr import is_ome_zarr

    out = Path(args.output)
    probs = Path(args.probabilities) if getattr(args, "probabilities", None) else None
    if getattr(args, "instances", None):
        raise UserInputError(
            "--instances needs the whole probability map in memory and cannot run block by "
            "block; drop --scheduler, or segment to zarr first and split instances per slice"
        )
    for p in (out, probs):
        if p is not None and p.suffix.lower() != ".zarr":
            raise UserInputError(
                f"{p}: block-by-block segmentation (for --scheduler, zarr and inputs larger than "
                f"memory) writes zarr stores; name it {p.with_suffix('.zarr').name}"
            )
    final = None
    if is_ome_zarr(out):  # blocks go to a plain zarr store; NGFF levels and metadata come at the end
        if out.exists() and not args.overwrite:
            raise UserInputError(f"output {out} exists; pass --overwrite to replace it")
        if probs is not None and probs.exists() and not args.overwrite:
            raise UserInputError(f"probabilities output {probs} exists; pass --overwrite to replace it")
        final, out = out, blocks_path(out)
    return out, probs, final


def _follow_blocks(gen: Any, out: Path, name: str) -> Any:
    """Run the blocks of ``gen`` under a progress bar; its SegmentResult, or None after Ctrl-C
    (the finished blocks are kept, and the line printed says how to resume)."""
    from napari_unet.distributed import MARKER_DIR, SegmentResult, partial_path

    done = 0
    try:
        first = next(gen)  # set-up errors (scheduler, outputs) surface before the progress bar
        done = first.completed
        with progress() as bar:
            task = bar.add_task("segment", total=first.total, completed=done, info=f"{name}")
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    result: SegmentResult = stop.value
                    break
                done = event.completed
                bar.update(task, total=event.total, completed=event.completed)
    except KeyboardInterrupt:
        gen.close()  # waits for blocks in flight, which finish and are kept too
        with contextlib.suppress(OSError):
            done = sum(1 for _ in (partial_path(out) / MARKER_DIR).iterdir())
        print(
            f"napari-unet: interrupted; {done} finished blocks are kept in {partial_path(out)}. "
            "Run the same command again to resume",
            file=sys.stderr,
        )
        return None
    return result


def _report_blocks(result: Any, written: Any, k: int) -> None:
    """The closing lines of a block-by-block run: where the labels went, how many blocks were
    computed, resumed and recomputed, the tile and the devices; where the probabilities went."""
    print(
        f"labels {result.shape} (classes 1..{k}) -> {written} "
        f"[{result.blocks - result.skipped} blocks computed, {result.skipped} resumed, "
        + (f"{result.changed} recomputed because their input changed, " if result.changed else "")
        + f"tile {result.tile_shape[0]}x{result.tile_shape[1]}"
        + (f", on {', '.join(result.devices)}]" if result.devices else "]"),
        file=sys.stderr,
    )
    if result.probabilities is not None:
        print(f"probabilities {(k, *result.shape)} -> {result.probabilities}", file=sys.stderr)
