"""Ownership: whether napari-unet wrote a file or folder, so that ``overwrite`` may replace it.

Recognised by a marker: the TIFF ``Software`` tag ``napari-unet``, the ``napari_unet`` key in a zarr
store's root attributes or a JSON document, a ``.napari-unet`` file in a folder that holds nothing
but numbered PNG slices; markers only a writer above this module knows (a model's header, an
export's metadata) by the recogniser that writer registers (:func:`register_marker`). Named pipes,
devices and sockets are told apart here too (:func:`special_kind`): they are never ours.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from napari_unet.errors import UserInputError

#: File inside a PNG-slice folder that napari-unet wrote.
FOLDER_MARKER = ".napari-unet"
#: File inside a PNG-slice folder that keeps the voxel size, which PNG files cannot hold.
VOXEL_SIDECAR = "voxel_size.json"
#: Key of napari-unet's entry in zarr attributes and JSON documents.
ATTRS_KEY = "napari_unet"
#: TIFF ``Software`` tag of napari-unet outputs.
TIFF_SOFTWARE = "napari-unet"

_SLICE_NAME = re.compile(r"^\d+\.png$")


def _zarr_attrs(p: Path) -> dict | None:
    for name in (".zattrs", "zarr.json"):
        f = p / name
        if f.is_file():
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                return None
            if name == "zarr.json":
                doc = doc.get("attributes") or {} if isinstance(doc, dict) else {}
            return doc if isinstance(doc, dict) else None
    return None


_ZARR_META = (".zattrs", ".zgroup", ".zarray", "zarr.json", ".zmetadata")
_CHUNK_NAME = re.compile(r"^(c|\d+([._]\d+)*)$")
#: Folders napari-unet keeps inside a store it writes block by block.
_OWN_FOLDERS = (".napari-unet-blocks",)


def _is_zarr_node(p: Path) -> bool:
    return any((p / n).is_file() for n in _ZARR_META)


def _chunks_only(folder: Path) -> bool:
    """Whether a zarr array's folder holds only chunks (no group or array someone added inside)."""
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if here != folder and _is_zarr_node(here):
            return False
        if any(not _CHUNK_NAME.match(d) for d in dirs if here != folder or d not in _OWN_FOLDERS):
            return False
        if here != folder and any(not _CHUNK_NAME.match(f) for f in files):
            return False
    return True


def _zarr_store_ours(p: Path) -> bool:
    """A zarr store napari-unet wrote, holding nothing else: our marker at its root, and only
    chunks (a plain array) or only the levels its multiscales metadata lists (an OME-Zarr label
    image). A group or array the user added inside makes it theirs, so it is never replaced whole."""
    attrs = _zarr_attrs(p)
    if not attrs or ATTRS_KEY not in attrs:
        return False
    try:
        entries = list(os.scandir(p))
    except OSError:
        return False
    if any(e.is_symlink() for e in entries):
        return False
    files = [e.name for e in entries if e.is_file()]
    folders = [e.name for e in entries if e.is_dir()]
    if any(f not in _ZARR_META and not _CHUNK_NAME.match(f) for f in files):
        return False
    is_array = (p / ".zarray").is_file() or _v3_node_type(p) == "array"
    if is_array:
        return _chunks_only(p)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    try:
        levels = {str(d["path"]) for d in ms[0]["datasets"]}
    except (TypeError, KeyError, IndexError):
        return not folders
    return all(f in levels and _chunks_only(p / f) for f in folders)


def _v3_node_type(p: Path) -> str | None:
    try:
        doc = json.loads((p / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return doc.get("node_type") if isinstance(doc, dict) else None


def special_kind(path: str | os.PathLike) -> str | None:
    """ "a named pipe", "a device" or "a socket" for such a path (links followed); None otherwise."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def check_not_special(path: str | os.PathLike, what: str) -> None:
    """Refuse a named pipe, device or socket before it is opened: reading or writing one waits forever."""
    kind = special_kind(path)
    if kind is not None:
        raise UserInputError(
            f"{what} {path} is {kind}, not a file or folder; napari-unet reads and writes files only"
        )


def is_ours(path: str | os.PathLike) -> bool:
    """Whether napari-unet wrote ``path`` (see the module notes for the markers)."""
    p = Path(path)
    if p.is_symlink() or not p.exists() or special_kind(p) is not None:
        return False
    if p.is_dir():
        if _is_zarr_node(p):
            return _zarr_store_ours(p)
        if (p / FOLDER_MARKER).is_file() and any((p / n).is_file() for n in ("rdf.yaml", "bioimageio.yaml")):
            return _marked(p)  # a bioimage.io package folder: its writer knows its marker
        try:
            entries = list(os.scandir(p))
        except OSError:
            return False
        if not any(e.name == FOLDER_MARKER and e.is_file(follow_symlinks=False) for e in entries):
            return False
        return all(
            e.name in (FOLDER_MARKER, VOXEL_SIDECAR)
            or (_SLICE_NAME.match(e.name) and e.is_file(follow_symlinks=False))
            for e in entries
        )
    suffix = p.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                return tif.pages[0].software == TIFF_SOFTWARE
        if suffix == ".png":
            from PIL import Image

            with Image.open(p) as im:
                return im.info.get("Software") == TIFF_SOFTWARE
        if suffix == ".json":
            doc = json.loads(p.read_text())
            return isinstance(doc, dict) and ATTRS_KEY in doc
    except Exception:  # noqa: BLE001 - unreadable means "not recognisably ours"
        return False
    return _marked(p)  # a model file, ONNX, TorchScript or a zipped package, by its contents


#: Recognisers of the files whose markers only their writers know (a model's header, an export's
#: metadata); each writing module registers its own when it loads (:func:`register_marker`).
_MARKERS: list[Callable[[Path], bool]] = []


def register_marker(recognise: Callable[[Path], bool]) -> Callable[[Path], bool]:
    """Let :func:`is_ours` recognise what a module above this one writes; returns ``recognise``.

    Ownership matters only when something is about to be replaced, and whatever writes such a file
    has imported its writer, so the writer's recogniser is registered by then.
    """
    if recognise not in _MARKERS:
        _MARKERS.append(recognise)
    return recognise


def _marked(p: Path) -> bool:
    """Whether a registered recogniser knows ``p`` as napari-unet's; an unreadable file is not."""
    for recognise in _MARKERS:
        try:
            if recognise(p):
                return True
        except Exception:  # noqa: BLE001 - unreadable means "not recognisably ours"
            continue
    return False
