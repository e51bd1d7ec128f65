"""The checks an output gets before any work: not an input, replaceable, writable, room, a plain name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from napari_unet.errors import UserInputError
from napari_unet.storage.atomic import exists, human_bytes
from napari_unet.storage.ownership import check_not_special, is_ours


def _resolved(p: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _within(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def check_not_input(target: Path, inputs: Iterable[str | os.PathLike | None], what: str) -> None:
    """Refuse an output that is an input, lies inside an input folder, or holds an input."""
    out = _resolved(target)
    for src in inputs:
        if src is None:
            continue
        inp = _resolved(Path(src))
        if out == inp:
            raise UserInputError(f"{what} {target} is also an input; choose another output path")
        if _within(out, inp):
            raise UserInputError(f"{what} {target} lies inside the input {src}; choose a path outside it")
        if _within(inp, out):
            raise UserInputError(f"{what} {target} would hold the input {src}; choose another output path")


def check_writable_folder(target: Path, what: str) -> None:
    """Refuse an output whose folder cannot be created or written (probed with a real file)."""
    parent = Path(os.path.abspath(target)).parent
    existing = parent
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"cannot write {what} {target}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-unet-probe-", dir=existing)
    except OSError as exc:
        raise UserInputError(
            f"cannot write {what} {target}: folder {existing} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_name(name: str, what: str = "name") -> str:
    """Refuse a name that is a path: empty, ``.``/``..``, hidden, with a separator, or absolute.

    Checked before anything is created or removed, so a refused name never touches a file.
    """
    text = str(name)
    bad = (
        not text.strip()
        or text in (".", "..")
        or text.startswith(".")
        or "/" in text
        or "\\" in text
        or "\0" in text
        or os.path.isabs(text)
        or any(ord(c) < 32 for c in text)
    )
    if bad:
        raise UserInputError(
            f"{what} {text!r} must be a plain name (letters, digits, '-', '_'; no '/', '..' or "
            "leading '.'), not a path"
        )
    return text


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike | None] = (),
    what: str = "output",
    flag: str = "--overwrite",
) -> Path:
    """Every check an output gets before any work: not an input, replaceable, folder writable."""
    target = Path(os.fspath(path)).expanduser()
    check_not_special(target, what)
    check_not_input(target, inputs, what)
    if exists(target):
        if not overwrite:
            raise UserInputError(f"{what} {target} exists; pass {flag} to replace it")
        check_replaceable(target, what)
    check_writable_folder(target, what)
    return target


def check_replaceable(target: Path, what: str = "output") -> None:
    """Refuse to replace anything napari-unet did not write."""
    if exists(target) and not is_ours(target):
        kind = "folder" if target.is_dir() and not target.is_symlink() else "file"
        raise UserInputError(
            f"{what} {target} is a {kind} napari-unet did not write, so it is never replaced; "
            "remove it yourself or choose another path"
        )


def check_free_space(target: Path, nbytes: int, what: str = "output") -> None:
    """Refuse an output of a known size that the file system has no room for."""
    parent = Path(os.path.abspath(target)).parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:  # pragma: no cover - nothing to estimate with
        return
    if nbytes > free:
        raise UserInputError(
            f"{what} {target} needs {human_bytes(nbytes)} but {parent} has {human_bytes(free)} "
            "free; free some space or choose another location"
        )
