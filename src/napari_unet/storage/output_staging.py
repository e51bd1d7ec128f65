"""Litter and swaps: temporaries of dead runs removed, several outputs put in place together.

Temporary names carry this host and process id (``.NAME.partial-HOST-PID-RAND``); a later run
removes those of runs on this host whose process is gone (:func:`clean_stale`). :func:`staged`
writes a run's outputs beside their targets and swaps them all into place only when all are done.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from napari_unet.errors import UserInputError
from napari_unet.storage import atomic
from napari_unet.storage.atomic import exists, host_id, os_error_message, remove, temp_name
from napari_unet.storage.output_checks import check_replaceable

_LITTER = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$"
)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a process we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of ``target`` left by dead runs on this host; returns them.

    A run is provably dead when its name carries this host's id and its process id is not running.
    An old output parked by a swap that was cut short is put back when nothing is at ``target``.
    """
    target = Path(os.path.abspath(target))
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    me = host_id()
    for e in sorted(entries, key=lambda e: e.name):
        m = _LITTER.match(e.name)
        if not m or m["name"] != target.name or m["host"] != me or pid_alive(int(m["pid"])):
            continue
        p = Path(e.path)
        if m["kind"] == "old" and not exists(target):
            try:
                os.replace(p, target)
            except OSError:
                pass  # leave it: it may be the only copy of the old output
            continue
        remove(p)
        removed.append(p)
    return removed


@contextlib.contextmanager
def staged(targets: Iterable[str | os.PathLike | None]) -> Iterator[list[Path | None]]:
    """Yield a staging path per output of one run (None stays None); put them all in place together.

    Each staging path has its output's own name, inside a hidden folder beside it
    (``.NAME.partial-HOST-PID-RAND/NAME``), so a writer that goes by the suffix writes it as it would
    the output. Only when the whole block succeeds are the finished outputs swapped into place; on
    any failure none is, the staging folders are removed, and every output is as it was before.
    Ownership was checked before the work; it is checked again just before each swap.
    """
    finals = [None if t is None else Path(os.fspath(t)) for t in targets]
    folders = [None if t is None else temp_name(t) for t in finals]
    paths: list[Path | None] = []
    try:
        for t, folder in zip(finals, folders, strict=True):
            if t is None or folder is None:
                paths.append(None)
                continue
            folder.mkdir(parents=True)
            paths.append(folder / t.name)
        yield paths
        ready = [(t, p) for t, p in zip(finals, paths, strict=True) if t is not None and p and exists(p)]
        for t, _ in ready:
            check_replaceable(t)
        _commit_all(ready)
    except OSError as exc:
        raise UserInputError(os_error_message(exc, finals[0] or "output")) from None
    except UserInputError as exc:  # a writer's message names its staging path: name the output
        text = str(exc)
        for t, path, folder in zip(finals, paths, folders, strict=False):
            if t is not None and path is not None and folder is not None:
                text = text.replace(str(path), str(t)).replace(str(folder), str(t.parent))
        raise UserInputError(text) from None
    finally:
        for folder in folders:
            if folder is not None:
                remove(folder)


def _commit_all(ready: list[tuple[Path, Path]]) -> None:
    """Swap several finished outputs into place; if one fails, those already swapped are undone.

    Old outputs are parked beside their targets (``.NAME.old-HOST-PID-RAND``, which the next run's
    :func:`clean_stale` puts back should this process be killed) until every new one is in place.
    """
    done: list[tuple[Path, Path | None]] = []
    current = ready[0][0] if ready else Path("output")
    try:
        for target, new in ready:
            current = target
            atomic.fsync_path(new)
            old = None
            if exists(target):
                old = temp_name(target, "old")
                os.replace(target, old)
            done.append((target, old))
            try:
                atomic.swap_into_place(new, target)
            except BaseException:
                if old is not None:
                    os.replace(old, target)
                done.pop()
                raise
            atomic.fsync_path(target.parent)
    except OSError as exc:
        _undo(done)
        raise UserInputError(os_error_message(exc, current)) from None
    except BaseException:
        _undo(done)
        raise
    for _, old in done:
        if old is not None:
            remove(old)


def _undo(done: list[tuple[Path, Path | None]]) -> None:
    for target, old in reversed(done):
        remove(target)
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, target)
