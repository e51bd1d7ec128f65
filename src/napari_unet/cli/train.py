"""``napari-unet train``: fine-tune or train a model on annotated images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.arrays.classes import default_class_names
from napari_unet.cli.common import (
    apply_label_map,
    check_output,
    input_spec,
    model_path,
    parse_label_map,
    read_array,
    resolve_model,
)
from napari_unet.cli.progress import clock, progress
from napari_unet.errors import UserInputError

if TYPE_CHECKING:
    from napari_unet.training.train import TrainConfig

#: how long `train` runs when neither --steps nor --max-minutes is given
DEFAULT_TRAIN_MINUTES = 5.0


def add_parser(sub: Any) -> None:
    """The ``train`` subcommand and its options, in the order ``--help`` lists them."""
    tr = sub.add_parser(
        "train",
        help="train or fine-tune a model on annotated images",
        description="Fine-tune the shipped model (or train from scratch) on images with sparse labels: "
        "0 = not annotated, 1..K = classes (or stored values mapped with --label-map).",
    )
    _add_data_arguments(tr)
    _add_length_arguments(tr)
    _add_class_arguments(tr)
    _add_setting_arguments(tr)
    tr.set_defaults(func=cmd_train)


def _add_data_arguments(tr: argparse.ArgumentParser) -> None:
    """What is trained on, the model it starts from and where the trained model goes."""
    tr.add_argument(
        "--images",
        required=True,
        help="image or stack in any format segment reads (PATH:DATASET for HDF5/zarr)",
    )
    tr.add_argument(
        "--labels", required=True, help="annotations of the same shape (PATH:DATASET for HDF5/zarr)"
    )
    tr.add_argument(
        "-o",
        "--output",
        default=None,
        help="model file to write (.safetensors); the model library keeps the model either way",
    )
    tr.add_argument(
        "--name",
        default=None,
        help="its name in the model library (default: '<start> tuned on <images> <date time>')",
    )
    tr.add_argument(
        "--from",
        dest="start",
        default="default",
        help="starting model: a .safetensors file, a library model's name ('napari-unet models'), "
        "'default' (shipped) or 'scratch'",
    )
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue the step count and optimiser state stored in --from (an unfinished library "
        "model goes on in the library)",
    )


def _add_length_arguments(tr: argparse.ArgumentParser) -> None:
    """The recipe, how long it runs and what is held out for validation."""
    tr.add_argument(
        "--recipe",
        default="auto",
        choices=["auto", "fast", "paper"],
        help="auto (default): fast when a class is new, paper when only the model's own classes are "
        "corrected; fast: Adam, tiles drawn class by class; paper: SGD momentum 0.99, batch 1, 572 px "
        "tiles (docs/training.md compares them); the options below override single settings",
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
        default="auto",
        choices=["auto", "none"],
        help="auto (default): hold out a few annotated slices or blocks, report validation from step 0 "
        "and a verdict against the start model at the end; none: train on every annotated pixel",
    )
    tr.add_argument("--val-fraction", type=float, default=None, help="share of annotated slices held out")


def _add_class_arguments(tr: argparse.ArgumentParser) -> None:
    """How stored label values become classes, the trained model's class names and width."""
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
    tr.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="K",
        help="neighbouring sections on each side the network sees with each section (2.5-D, 0-8; "
        "read from the --images stack, mirrored at its ends; a 2-D image stands in for its own "
        "neighbours); a --from model that sees fewer is widened (the new neighbours start at zero, "
        "so it predicts as before until trained); default: the start model's own (0 for the shipped one)",
    )


def _add_setting_arguments(tr: argparse.ArgumentParser) -> None:
    """Single settings that override the recipe's, the device, the seed and --overwrite."""
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


def _train_start_model(args: argparse.Namespace, labels: np.ndarray):
    """(model, new): the start model given the classes of ``--classes`` (or its own), and whether
    it now has a class the start model lacked (always from scratch)."""
    from napari_unet.network.model import build_model, kept_classes, with_classes

    names = None
    new = args.start == "scratch"
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
        names = names or default_class_names(max(high, 2))
        if args.base_channels < 1 or args.base_channels > 512:
            raise UserInputError(f"--base-channels must be between 1 and 512, got {args.base_channels}")
        arch = {"n_classes": len(names), "base_channels": args.base_channels, "context": args.context or 0}
        model = build_model({"architecture": arch})
        model.metadata["classes"] = names
    else:
        model = resolve_model(args.start)
        if names is not None:
            kept, added, dropped = kept_classes(model, names)
            new = bool(added)
            model = with_classes(model, names)
            print(
                f"classes 1..{len(names)}: {', '.join(names)} (kept: {', '.join(kept) or 'none'}; "
                f"new: {', '.join(added) or 'none'}; dropped: {', '.join(dropped) or 'none'})",
                file=sys.stderr,
            )
    model = _with_context_of(args, model)
    if high > model.n_classes:
        from napari_unet.network.model import class_names

        raise UserInputError(
            f"the labels go up to {high}, but the model has {model.n_classes} classes "
            f"({', '.join(class_names(model))}); name one class per label with --classes"
        )
    return model, new


def _check_context(args: argparse.Namespace) -> None:
    """Refuse a --context outside 0-8 before anything is read."""
    from napari_unet.network.model import MAX_CONTEXT

    if args.context is not None and not 0 <= args.context <= MAX_CONTEXT:
        raise UserInputError(
            f"--context must be a number of sections from 0 to {MAX_CONTEXT} on each side, got {args.context}"
        )


def _with_context_of(args: argparse.Namespace, model: Any) -> Any:
    """The start model seeing --context sections on each side: widened when it sees fewer; a
    narrower --context, or another one for a --resume, is refused."""
    from napari_unet.network.model import with_context

    own = int(getattr(model, "context", 0))
    if args.context is None or args.context == own:
        return model
    if args.resume:
        raise UserInputError(
            f"--resume goes on with the model's own context ({own}); leave --context out or give {own}"
        )
    if args.context < own:
        raise UserInputError(
            f"the start model sees {own} neighbouring sections on each side; --context {args.context} "
            f"would narrow it (give --context {own} or more, or start from a model without context)"
        )
    print(f"context: {args.context} sections on each side (widened from {own})", file=sys.stderr)
    return with_context(model, args.context)


def _interrupted_run(model: Any) -> tuple[bool, bool] | None:
    """(new_classes, pretrained) of the run a ``--resume`` goes on with, from its record in the
    checkpoint: "auto" had chosen Adam ("fast", a class was new) or SGD ("paper"), and a run from
    scratch neither froze nor distilled. None for a checkpoint without a record."""
    run = model.metadata.get("training")
    if not isinstance(run, dict) or run.get("optimizer") not in ("adam", "sgd"):
        return None
    return run["optimizer"] == "adam", bool(run.get("freeze_encoder") or run.get("distill"))


def _start_label(spec: str, library: Any) -> str:
    """How the library records the start model: the shipped model's or a file's stem, a library
    model's name, or "scratch"."""
    from napari_unet.models import shipped_model

    path = Path(spec).expanduser()
    if spec == "scratch" or path.exists():
        return spec if spec == "scratch" else path.stem
    shipped = shipped_model(spec)
    if shipped is not None:
        return shipped.name
    entry = library.find(spec)
    return entry.name if entry is not None else path.stem


def _resumed_library_model(args: argparse.Namespace, library: Any) -> Any:
    """The unfinished library model that ``--resume --from NAME`` (without -o) goes on with, or None."""
    if not args.resume or args.output is not None or args.start in ("default", "scratch"):
        return None
    if Path(args.start).expanduser().exists():
        return None
    entry = library.find(args.start)
    if entry is not None and entry.status == "finished":
        raise UserInputError(
            f"library model '{entry.name}' has finished; train on from it without --resume, or give -o"
        )
    return entry


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
    from napari_unet.models.library import Library

    library = Library()
    resume_entry = _resumed_library_model(args, library)
    start_path = None if args.start in ("default", "scratch") else model_path(args.start)
    out = _model_output(args, start_path)
    # paths before torch (seconds to import): a missing input is answered at once
    input_spec(args.images, "images")
    input_spec(args.labels, "labels")
    parse_label_map(args.label_map)
    _check_context(args)
    from napari_unet.models.library import readable_name
    from napari_unet.training.recipes import AUTO_RECIPE, resolve_recipe
    from napari_unet.training.train import Trainer

    # numbers first: a bad option is reported before the data is read (for either recipe of "auto")
    for new_classes in (True, False):
        _train_config(args, out, new_classes).check()
    images, labels = _training_data(args)
    model, new_classes = _train_start_model(args, labels)
    pretrained = args.start != "scratch"
    resumed = _interrupted_run(model) if args.resume else None
    if resumed is not None:  # the run goes on as it started, not as its checkpoint would start one
        new_classes, pretrained = resumed
    cfg = _train_config(args, out, new_classes, pretrained)
    if args.recipe == AUTO_RECIPE:
        why = "a class is new" if new_classes else "no class is new"
        why = "as the run it resumes" if resumed is not None else why
        print(f"recipe: {resolve_recipe(args.recipe, new_classes)} ({why})", file=sys.stderr)
    steps, minutes = _run_length(args)
    record = {
        "source": "command line",
        "start_model": _start_label(args.start, library),
        "image": input_spec(args.images, "images")[0].name,
        "recipe": resolve_recipe(args.recipe, new_classes),
        "planned": {"steps": steps, "minutes": minutes},
    }
    if model.context:
        record["context"] = model.context
    name = args.name or readable_name(record["start_model"], record["image"])
    entry = None
    if out is None:  # the library's file is the checkpoint: a killed run stays there as unfinished
        entry = library.resume(resume_entry) if resume_entry is not None else library.create(name, **record)
        cfg.checkpoint_path = str(entry.path)
    try:
        trainer = Trainer(model, images, labels, cfg, resume_from=start_path if args.resume else None)
    except BaseException:
        if entry is not None:
            library.finish(entry, None)  # a new entry goes, a resumed one stays unfinished
        raise
    interrupted = _run_with_progress(trainer, library, entry)
    _report_training(trainer, "stopped" if interrupted else "finished", out, library, entry, (name, record))
    return 0


def _model_output(args: argparse.Namespace, start_path: Path | None) -> Path | None:
    """The checked ``-o`` model file (None: the model library keeps the model), and ``--resume``
    checked against ``--from``; all before any data is read."""
    out = Path(args.output) if args.output is not None else None
    if out is not None:
        if out.suffix != ".safetensors":
            raise UserInputError(f"model output {out} must end in .safetensors")
        resume_same = args.resume and start_path is not None and start_path.resolve() == out.resolve()
        if not resume_same:
            check_output(out, args.overwrite, "model output")
        _check_writable(out)
    elif args.overwrite:
        raise UserInputError("--overwrite needs -o/--output: the model library never replaces a model")
    if args.resume and start_path is None:
        raise UserInputError("--resume needs --from with the model file or library model to go on from")
    return out


def _run_length(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """(steps, minutes) the run is planned for: --steps and --max-minutes, or the default minutes."""
    steps, minutes = args.steps, args.max_minutes
    if steps is None and minutes is None:
        minutes = DEFAULT_TRAIN_MINUTES
    return steps, minutes


def _train_config(
    args: argparse.Namespace, out: Path | None, new_classes: bool, pretrained: bool | None = None
) -> TrainConfig:
    """The TrainConfig of the recipe ``--recipe`` resolves to for ``new_classes``, with the single
    settings the options override; ``pretrained`` defaults to "not --from scratch"."""
    from napari_unet.training.recipes import recipe_config

    if pretrained is None:
        pretrained = args.start != "scratch"
    steps, minutes = _run_length(args)
    lr = args.lr
    if lr is None and args.optimizer is not None:
        lr = 1e-4 if args.optimizer == "adam" else 0.001
    cfg = recipe_config(
        args.recipe,
        new_classes=new_classes,
        pretrained=pretrained,
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
        checkpoint_path=None if out is None else str(out),
        seed=args.seed,
        context=args.context,
        device=args.device,
        precision=args.precision,
    )
    if steps is None:
        cfg.steps = None
    if args.no_augment:
        cfg.augment = None
    return cfg


def _training_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) read, the labels mapped with --label-map; shapes checked against each other."""
    images = read_array(args.images, "images")
    labels = apply_label_map(read_array(args.labels, "labels"), parse_label_map(args.label_map))
    if images.ndim not in (2, 3):
        raise UserInputError(f"images have shape {images.shape}; expected one grey image or a stack")
    if images.shape != labels.shape:
        raise UserInputError(f"images have shape {images.shape} but labels have shape {labels.shape}")
    if labels.dtype.kind == "f":
        labels = labels.astype(np.int64)
    return images, labels


def _run_with_progress(trainer: Any, library: Any, entry: Any) -> bool:
    """Run ``trainer`` under a progress bar (into the library ``entry`` when there is one); the
    first Ctrl-C stops after the current step, a second aborts. True when it was stopped."""
    import signal

    from napari_unet.models.library import keep_training

    interrupted = []

    def on_sigint(signum, frame):  # first Ctrl-C: stop after this step; second: abort
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        trainer.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with progress() as bar:
            task = bar.add_task("train", total=None, completed=0, info="")  # steps, when --steps caps the run
            control = {"trainer": trainer}
            events = trainer.run() if entry is None else keep_training(trainer.run(), control, library, entry)
            for ev in events:
                info = f"step {ev.step}"
                info += f"  loss {ev.loss:.4f}" if ev.loss is not None else ""
                if ev.remaining is not None:
                    info += f"  {clock(ev.remaining)} left"
                bar.update(task, total=ev.total_steps or None, completed=ev.step, info=info)
                if ev.kind == "validation" and ev.metrics:
                    bar.console.print(
                        f"step {ev.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items())
                    )
    finally:
        signal.signal(signal.SIGINT, previous)
    return bool(interrupted)


def _report_training(
    trainer: Any, how: str, out: Path | None, library: Any, entry: Any, named: tuple[str, dict]
) -> None:
    """The closing lines: where the model went (a -o file is added to the library under ``named``,
    its name and record), which step's weights were kept, and the verdict against the start model."""
    kept = "kept in the model library as '{}' ('napari-unet models' lists it)"
    if out is not None:
        print(f"{how} after {trainer.step} steps; model -> {out}", file=sys.stderr)
        if trainer.step > 0:
            name, record = named
            print(kept.format(library.add_file(out, name, **record).name), file=sys.stderr)
    elif entry is not None and entry.path.is_file():
        print(f"{how} after {trainer.step} steps; " + kept.format(entry.name), file=sys.stderr)
    else:
        print(f"{how} after {trainer.step} steps; no model was made", file=sys.stderr)
    if trainer.kept_step is not None and trainer.kept_step != trainer.step:
        print(f"kept the weights of step {trainer.kept_step}: they validated best", file=sys.stderr)
    if trainer.start_units and trainer.last_units:
        verdict = trainer.verdict()
        prefix = "verdict" if verdict.kind == "better" else "warning"
        print(f"{prefix}: {verdict.text}", file=sys.stderr)
