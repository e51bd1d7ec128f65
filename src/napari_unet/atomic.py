"""Atomic writing, the one way every output, checkpoint and sidecar reaches the disk.

Work goes to a hidden sibling named after this host and process (so a later run can prove it stale
and remove it), is flushed to disk, renamed onto the target (an old output is removed only after
the swap) and the folder entry is flushed too. A crash at any moment leaves the old file or the
new one at the target, never half of one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from . import outputs
from .errors import UserInputError


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
        outputs.swap_into_place(tmp, target)
    except OSError as exc:
        raise UserInputError(outputs.os_error_message(exc, target, what)) from None
    fsync_path(target.parent)


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s file or folder to; put it in place on success.

    On success: fsync the temporary, swap it onto ``target``, fsync the parent folder. On any
    exception the temporary is removed and the exception propagates; ``target`` is untouched.
    Ownership checks and locks are the caller's (see :mod:`napari_unet.outputs`).
    """
    target = Path(target)
    tmp = outputs.temp_name(target)
    try:
        yield tmp
        commit(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            outputs.remove(tmp)
        raise
