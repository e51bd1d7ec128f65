"""Output safety: replace only what napari-unet wrote, never an input, one writer per output.

Every writer (the CLI, the napari writer, the Save dock, the block-by-block runner) goes through
these rules before it writes a byte:

- **Ownership.** ``overwrite`` replaces a file or folder only if napari-unet wrote it, recognised
  by a marker: the TIFF ``Software`` tag ``napari-unet``, the ``napari_unet`` key in a zarr store's
  root attributes or a JSON document, a ``.napari-unet`` file in a folder that holds nothing but
  numbered PNG slices, or a napari-unet header in a ``.safetensors`` model. Anything else is
  refused with one line. Markers that only a writer above this module knows (a model's header, an
  export's metadata) are recognised by the function that writer registers (:func:`register_marker`).
- **Inputs are never outputs.** An output equal to an input, inside an input folder, or a folder
  that holds an input is refused.
- **One writer.** :class:`OutputLock` holds ``.NAME.lock`` beside the output (an advisory
  ``flock``: the kernel drops it when the process dies, so a killed run never blocks the next one);
  a second run to the same output is refused with one line naming the first.
- **Litter.** Temporary names carry this host and process id (``.NAME.partial-HOST-PID-RAND``);
  a later run removes those of runs on this host whose process is gone (:func:`clean_stale`).
- **Not a pipe.** A named pipe, device or socket is refused as an input or an output before any
  work (opening one would wait forever).
- **One message.** A full disk, a read-only file system or a folder without permission is said in
  one line naming the output (:func:`os_error_message`).
- **Swaps.** A finished folder replaces an old one by one atomic exchange (Linux
  ``renameat2(RENAME_EXCHANGE)``), so the path always holds the old or the new output; where the
  exchange is not available, a cut-short swap is undone by the next run's :func:`clean_stale`.

:func:`safe_output` applies all of these around one write; every writer of the package (labels,
probabilities, models, exports, metrics, the demo, OME-Zarr labels) goes through it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import atomic
from .atomic import exists as exists  # the primitives below are atomic's, re-exported for writers
from .atomic import host_id as host_id
from .atomic import human_bytes as human_bytes
from .atomic import os_error_message as os_error_message
from .atomic import remove as remove
from .atomic import swap_into_place as swap_into_place
from .atomic import temp_name as temp_name
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
    """"a named pipe", "a device" or "a socket" for such a path (links followed); None otherwise."""
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


@contextlib.contextmanager
def safe_output(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike | None] = (),
    what: str = "output",
    flag: str = "--overwrite",
) -> Iterator[Path]:
    """The one safe output: yield a temporary path to write ``path``'s file or folder to.

    Before: not a pipe or device, not an input, replaced only with ``overwrite`` and only if
    napari-unet wrote it, folder writable. During: the output's lock is held and temporary files
    of dead runs are removed. After: the temporary is swapped into place; on any failure it is
    removed and ``path`` is untouched. A failed write (full disk, read-only) is one line.
    """
    inputs = list(inputs)
    target = check_output(path, overwrite=overwrite, inputs=inputs, what=what, flag=flag)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(os_error_message(exc, target, what)) from None
    with OutputLock(target, what):
        clean_stale(target)
        try:
            with atomic.atomic_write(target) as tmp:
                yield tmp
                if exists(target):  # it may have appeared, or changed hands, while we wrote
                    if not overwrite:
                        raise UserInputError(
                            f"{what} {target} appeared while it was written; nothing was replaced"
                        )
                    check_replaceable(target, what)
        except OSError as exc:
            raise UserInputError(os_error_message(exc, target, what)) from None


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


def write_text(target: str | os.PathLike, text: str, *, overwrite: bool, what: str = "output") -> Path:
    """Write a small text file atomically under the ownership and lock rules."""
    with safe_output(target, overwrite=overwrite, what=what) as tmp:
        tmp.write_text(text)
    return Path(os.fspath(target))
