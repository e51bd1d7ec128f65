"""Atomic writing, the one way every output, checkpoint and sidecar reaches the disk.

Work goes to a hidden sibling named after this host and process (so a later run can prove it stale
and remove it), is flushed to disk, renamed onto the target (an old output is removed only after
the swap) and the folder entry is flushed too. A crash at any moment leaves the old file or the
new one at the target, never half of one.

This is the bottom of the storage layer: temporary names, the swap and the one line a failed write
becomes. Ownership, locks and the checks before a write are :mod:`napari_unet.storage.outputs`, built on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from napari_unet.errors import UserInputError


def host_id() -> str:
    """Eight hex digits naming this machine in temporary file names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(target: Path, kind: str = "partial") -> Path:
    """A hidden sibling of ``target`` for work in progress, named after this host and process."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{host_id()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def exists(p: Path) -> bool:
    """True for anything at ``p``, a dangling symlink included."""
    return p.exists() or p.is_symlink()


def remove(p: Path) -> None:
    """Delete a file, link or folder; missing is fine."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(tmp: Path, target: Path) -> None:
    """Put a finished ``tmp`` at ``target``; an old output is removed only after the swap.

    Files are renamed over the old one; folders are exchanged atomically where the system can, so
    a kill at any moment leaves either the old or the new output at ``target``.
    """
    if not exists(target):
        os.replace(tmp, target)
        return
    if tmp.is_file() and target.is_file() and not target.is_symlink():
        os.replace(tmp, target)
        return
    if _exchange(tmp, target):
        remove(tmp)  # now the old output
        return
    old = temp_name(target, "old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    remove(old)


def human_bytes(n: float) -> str:
    """A size as people read it: "0 bytes", "812 bytes", "3.4 KiB", "1.20 GiB"."""
    n = max(float(n), 0.0)
    if n < 1024:
        return f"{int(n)} bytes"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)):
        if n < scale * 1024 or unit == "TiB":
            return f"{n / scale:.1f} {unit}" if unit != "GiB" else f"{n / scale:.2f} {unit}"
    return f"{n} bytes"  # pragma: no cover


def _free_text(target: Path) -> str:
    parent = Path(os.path.abspath(target)).parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    try:
        return f"it needs more than the {human_bytes(shutil.disk_usage(parent).free)} free in {parent}"
    except OSError:
        return f"no space is left in {parent}"


def os_error_message(exc: BaseException, target: str | os.PathLike, what: str = "output") -> str:
    """One line for a failed write: a full disk, a read-only file system, no permission, or else."""
    err = getattr(exc, "errno", None)
    folder = Path(os.path.abspath(target)).parent
    if err in (errno.ENOSPC, errno.EDQUOT):
        reason = getattr(exc, "strerror", None) or "No space left on device"
        return (
            f"cannot write {what} {target}: {reason} ({_free_text(Path(target))}); free some "
            "space or choose another location"
        )
    if err == errno.EROFS:
        return (
            f"cannot write {what} {target}: {folder} is on a read-only file system; choose another "
            "location"
        )
    if err in (errno.EACCES, errno.EPERM):
        return (
            f"cannot write {what} {target}: permission denied in {folder}; check the folder's "
            "permissions or choose another location"
        )
    lines = str(exc).strip().splitlines()
    text = getattr(exc, "strerror", None) or (lines[0] if lines else type(exc).__name__)
    return f"cannot write {what} {target} ({text}); check free disk space and permissions"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to disk; a system that cannot is not an error."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(tmp: Path, target: Path, what: str = "output") -> None:
    """Put a finished temporary file or folder at ``target``, flushed to disk before and after.

    A failed swap (a full disk, a read-only folder) is one line naming ``target``.
    """
    fsync_path(tmp)
    try:
        swap_into_place(tmp, target)
    except OSError as exc:
        raise UserInputError(os_error_message(exc, target, what)) from None
    fsync_path(target.parent)


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s file or folder to; put it in place on success.

    On success: fsync the temporary, swap it onto ``target``, fsync the parent folder. On any
    exception the temporary is removed and the exception propagates; ``target`` is untouched.
    Ownership checks and locks are the caller's (see :mod:`napari_unet.storage.outputs`).
    """
    target = Path(target)
    tmp = temp_name(target)
    try:
        yield tmp
        commit(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            remove(tmp)
        raise
