"""``napari-unet models``: list, remove, rename, import and find the models of the model library."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from napari_unet.errors import UserInputError


def add_parser(sub: Any) -> None:
    """The ``models`` subcommand and its actions (``list`` when none is given)."""
    from napari_unet.models.library import CLEAN_AFTER_DAYS, LIBRARY_ENV

    mo = sub.add_parser(
        "models",
        help="the model library: models trained in napari or with 'train' (list, path, remove, ...)",
        description="Every model trained in the Fine-tune dock or with 'train' is kept in the model "
        f"library, in the user's data folder (${LIBRARY_ENV} moves it). Any command's --model (and "
        "train's --from) takes a library model's name, or the start of it, or a shipped model: "
        "default (= fast, em_membrane) or accurate (em_membrane_accurate).",
    )
    actions = mo.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="the library's models, newest first (the default action)")
    ls.add_argument("--json", action="store_true", help="one JSON document with every record")
    pa = actions.add_parser("path", help="the library folder, or the file of the model NAME")
    pa.add_argument("name", nargs="?", default=None)
    rm = actions.add_parser("remove", help="delete models and their records")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rn = actions.add_parser("rename", help="give a model another name")
    rn.add_argument("name")
    rn.add_argument("new_name", metavar="NEW_NAME")
    im = actions.add_parser("import", help="bring a .safetensors model or a bioimage.io package in")
    im.add_argument("file")
    im.add_argument("--name", default=None, help="its name in the library (default: the file's name)")
    cl = actions.add_parser(
        "clean", help="delete unfinished runs older than a few days, and runs that made no checkpoint"
    )
    cl.add_argument(
        "--older-than",
        type=float,
        default=CLEAN_AFTER_DAYS,
        metavar="DAYS",
        help=f"age in days of the unfinished runs to delete (default {CLEAN_AFTER_DAYS:g}; 0: all)",
    )
    mo.set_defaults(func=cmd_models, action=None)


def _shipped_line() -> str:
    """One line naming the shipped models and how --model reaches them."""
    from napari_unet.models import SHIPPED_ALIASES, shipped_models

    parts = []
    for m in shipped_models():
        aliases = [a for a, n in SHIPPED_ALIASES.items() if n == m.name]
        parts.append(f"{m.name} ({m.summary}; --model {' or '.join(aliases or [m.name])})")
    return "shipped models: " + (", ".join(parts) if parts else "none in this installation")


def _list(library: Any, as_json: bool) -> int:
    models = library.models()
    if not as_json:
        print(_shipped_line(), file=sys.stderr)
    if as_json:
        doc = [
            {**m.record, "name": m.name, "status": m.status, "path": str(m.path), "bytes": m.size}
            for m in models
        ]
        print(json.dumps(doc, indent=1, default=str))
        return 0
    from napari_unet.storage.outputs import human_bytes

    if not models:
        print(f"no models yet in {library.root}; train one in the Fine-tune dock or with 'napari-unet train'")
        return 0
    rows = [
        (
            m.name,
            m.created.strftime("%Y-%m-%d %H:%M"),
            m.status,
            m.verdict or "-",
            str(m.steps or "-"),
            human_bytes(m.size),
        )
        for m in models
    ]
    header = ("NAME", "CREATED", "STATUS", "VERDICT", "STEPS", "SIZE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(library.summary(), file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the library (the default), print a path, remove, rename, import or clean up models."""
    from napari_unet.models.library import Library

    library = Library()
    action = args.action or "list"
    if action == "list":
        return _list(library, getattr(args, "json", False))
    if action == "path":
        if args.name is None:
            print(library.root)
            return 0
        from napari_unet.models import shipped_model

        shipped = shipped_model(args.name) if library.find_exact(args.name) is None else None
        found = shipped.path if shipped is not None else None
        print(found if found is not None else library.get(args.name).path)
        return 0
    if action == "remove":
        entries = [library.exact(name) for name in args.names]  # every name checked before any goes
        for entry in entries:
            library.remove(entry.name)
            print(f"removed '{entry.name}'", file=sys.stderr)
        return 0
    if action == "rename":
        entry = library.rename(args.name, args.new_name)
        print(f"'{args.name}' is now '{entry.name}' ({entry.path})", file=sys.stderr)
        return 0
    if action == "import":
        entry = library.import_model(args.file, args.name)
        print(f"imported {args.file} as '{entry.name}' ({entry.path})", file=sys.stderr)
        return 0
    if action == "clean":
        removed = library.clean(args.older_than)
        for entry in removed:
            print(f"removed unfinished '{entry.name}'", file=sys.stderr)
        print(f"{len(removed)} unfinished run(s) removed; {library.summary()}", file=sys.stderr)
        return 0
    raise UserInputError(f"unknown models action {action!r}")  # pragma: no cover - argparse refuses it
