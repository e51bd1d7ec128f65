"""One writer per output: :class:`OutputLock` holds ``.NAME.lock`` beside it while it is written.

The lock is an advisory ``flock``: the kernel drops it when the process dies, so a killed run never
blocks the next one; a second run to the same output is refused with one line naming the first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from napari_unet.errors import UserInputError
from napari_unet.storage.atomic import os_error_message
from napari_unet.storage.ownership import special_kind

_held: dict[str, list] = {}
_held_guard = threading.Lock()


def lock_path(target: Path) -> Path:
    """The lock file of an output: ``.NAME.lock`` beside it."""
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}.lock"


def _describe(lock: Path) -> str:
    try:
        doc = json.loads(lock.read_text())
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(doc["started"])))
        return f"pid {int(doc['pid'])} on {doc['host']}, since {when}"
    except Exception:  # noqa: BLE001 - the message still names the lock file
        return "another process"


def _lock_file_is_ours(fd: int) -> bool | None:
    """True for a lock file an earlier napari-unet run left, False for an empty file (used as a lock
    but kept), None for anything else (refused: it is someone's file)."""
    import stat

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
        return None
    if st.st_size == 0:
        return False
    try:
        doc = json.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and {"pid", "host", "started"} <= set(doc):
        return True
    return None


class OutputLock:
    """Holds ``.NAME.lock`` while an output is written; a second holder is refused with one line.

    Re-entrant within a process (a CLI command and the writer it calls may both take it). The lock
    is an advisory ``flock`` on the file, released by the kernel when the process ends, so a killed
    run leaves at most an unlocked lock file that the next run takes over and removes.
    """

    def __init__(self, target: str | os.PathLike, what: str = "output") -> None:
        self.target = Path(os.fspath(target))
        self.path = lock_path(self.target)
        self.what = what

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise UserInputError naming the run that holds it."""
        import fcntl

        key = str(self.path)
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserInputError(
                    f"cannot create folder {self.path.parent} ({exc.strerror or exc}); choose another "
                    "output location"
                ) from None
            for _ in range(10):
                created = False
                try:
                    try:
                        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                        created = True
                    except FileExistsError:
                        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
                except FileNotFoundError:
                    continue  # removed between the two opens: try again
                except OSError as exc:
                    if exc.errno == errno.ELOOP or special_kind(self.path) is not None:
                        raise UserInputError(
                            f"{self.path} is not a napari-unet lock file, and napari-unet locks "
                            f"{self.target} there while writing it; rename it or choose another output"
                        ) from None
                    raise UserInputError(
                        f"cannot write {self.what} {self.target} ({exc.strerror or exc}); check the "
                        "folder's permissions"
                    ) from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise UserInputError(
                            f"another napari-unet run ({_describe(self.path)}) is writing {self.target}; "
                            "wait for it to finish or choose another output"
                        ) from None
                    raise UserInputError(
                        f"cannot lock {self.path} ({exc.strerror or exc}); choose another output location"
                    ) from None
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # the previous holder removed the file between open and flock
                    os.close(fd)
                    continue
                owned = created or _lock_file_is_ours(fd)
                if owned is None:
                    os.close(fd)
                    raise UserInputError(
                        f"{self.path} is a file napari-unet did not write, kept where napari-unet "
                        f"locks {self.target} while writing it; rename that file or choose another output"
                    )
                if owned:
                    doc = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
                    try:
                        os.ftruncate(fd, 0)
                        os.write(fd, json.dumps(doc).encode())
                    except OSError as exc:  # a full disk: the lock file is ours, so it goes
                        with contextlib.suppress(OSError):
                            os.unlink(self.path)
                        os.close(fd)
                        raise UserInputError(os_error_message(exc, self.target, self.what)) from None
                _held[key] = [fd, 1, owned]
                return
            raise UserInputError(f"cannot take the lock {self.path}; try again")  # pragma: no cover

    def release(self) -> None:
        """Drop one hold; the last removes the lock file (while still holding it) and unlocks."""
        key = str(self.path)
        with _held_guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[key]
            if entry[2]:  # only a lock file of ours is removed, never a file someone else keeps there
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            os.close(entry[0])


@contextlib.contextmanager
def locked(targets: Iterable[str | os.PathLike | None], what: str = "output") -> Iterator[None]:
    """Hold the locks of several outputs (None entries are skipped) for the duration of a block."""
    with contextlib.ExitStack() as stack:
        for t in targets:
            if t is not None:
                stack.enter_context(OutputLock(t, what))
        yield
