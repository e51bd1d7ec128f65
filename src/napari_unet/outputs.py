"""Output safety: replace only what napari-unet wrote, never an input, one writer per output.

Every writer (the CLI, the napari writer, the Save dock, the block-by-block runner) goes through
these rules before it writes a byte:

- **Ownership.** ``overwrite`` replaces a file or folder only if napari-unet wrote it, recognised
  by a marker: the TIFF ``Software`` tag ``napari-unet``, the ``napari_unet`` key in a zarr store's
  root attributes or a JSON document, a ``.napari-unet`` file in a folder that holds nothing but
  numbered PNG slices, or a napari-unet header in a ``.safetensors`` model. Anything else is
  refused with one line.
- **Inputs are never outputs.** An output equal to an input, inside an input folder, or a folder
  that holds an input is refused.
- **One writer.** :class:`OutputLock` holds ``.NAME.lock`` beside the output (an advisory
  ``flock``: the kernel drops it when the process dies, so a killed run never blocks the next one);
  a second run to the same output is refused with one line naming the first.
- **Litter.** Temporary names carry this host and process id (``.NAME.partial-HOST-PID-RAND``);
  a later run removes those of runs on this host whose process is gone (:func:`clean_stale`).
- **Swaps.** A finished folder replaces an old one by one atomic exchange (Linux
  ``renameat2(RENAME_EXCHANGE)``), so the path always holds the old or the new output; where the
  exchange is not available, a cut-short swap is undone by the next run's :func:`clean_stale`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UserInputError

#: File inside a PNG-slice folder that napari-unet wrote.
FOLDER_MARKER = ".napari-unet"
#: File inside a PNG-slice folder that keeps the voxel size, which PNG files cannot hold.
VOXEL_SIDECAR = "voxel_size.json"
#: Key of napari-unet's entry in zarr attributes and JSON documents.
ATTRS_KEY = "napari_unet"
#: TIFF ``Software`` tag of napari-unet outputs.
TIFF_SOFTWARE = "napari-unet"

_SLICE_NAME = re.compile(r"^\d+\.png$")
_LITTER = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$"
)


# ------------------------------------------------------------------------------ identities
def host_id() -> str:
    """Eight hex digits naming this machine in temporary file names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(target: Path, kind: str = "partial") -> Path:
    """A hidden sibling of ``target`` for work in progress, named after this host and process."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{host_id()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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


def file_mode() -> int:
    """Permission bits a new file gets under the current umask (0o644 under umask 022)."""
    umask = None
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    if umask is None:  # pragma: no cover - not Linux
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


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


# ------------------------------------------------------------------------------ ownership
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


def is_ours(path: str | os.PathLike) -> bool:
    """Whether napari-unet wrote ``path`` (see the module notes for the markers)."""
    p = Path(path)
    if p.is_symlink() or not p.exists():
        return False
    if p.is_dir():
        if any((p / n).exists() for n in (".zattrs", ".zgroup", ".zarray", "zarr.json")):
            attrs = _zarr_attrs(p)
            return bool(attrs) and ATTRS_KEY in attrs
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
        if suffix == ".safetensors":
            from .checkpoint import read_header

            read_header(p)
            return True
    except Exception:  # noqa: BLE001 - unreadable means "not recognisably ours"
        return False
    return False


# ------------------------------------------------------------------------------ checks
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
            f"{what} {target} needs {nbytes / 2**30:.2f} GiB but {parent} has {free / 2**30:.2f} GiB "
            "free; free some space or choose another location"
        )


# ------------------------------------------------------------------------------ the lock
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
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as exc:
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
                doc = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(doc).encode())
                _held[key] = [fd, 1]
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


# ------------------------------------------------------------------------------ litter and swaps
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


def write_text(target: str | os.PathLike, text: str, *, overwrite: bool, what: str = "output") -> Path:
    """Write a small text file atomically under the ownership and lock rules."""
    target = Path(os.fspath(target))
    with OutputLock(target, what):
        if exists(target):
            if not overwrite:
                raise UserInputError(f"{what} {target} exists; pass --overwrite to replace it")
            check_replaceable(target, what)
        clean_stale(target)
        from .atomic import atomic_write

        try:
            with atomic_write(target) as tmp:
                tmp.write_text(text)
        except OSError as exc:
            raise UserInputError(
                f"cannot write {what} {target} ({exc.strerror or exc}); check free disk space and permissions"
            ) from None
    return target
