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
probabilities, models, exports, metrics, the demo, OME-Zarr labels) goes through it. The rules live
in modules of their own, whose names are all importable from here: the markers in
:mod:`.ownership`, the checks before a write in :mod:`.output_checks`, the lock in
:mod:`.output_lock`, litter and several outputs swapped together in :mod:`.output_staging`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from napari_unet.errors import UserInputError
from napari_unet.storage import atomic
from napari_unet.storage.atomic import (
    exists as exists,  # the primitives below are atomic's, re-exported for writers
)
from napari_unet.storage.atomic import host_id as host_id
from napari_unet.storage.atomic import human_bytes as human_bytes
from napari_unet.storage.atomic import os_error_message as os_error_message
from napari_unet.storage.atomic import remove as remove
from napari_unet.storage.atomic import swap_into_place as swap_into_place
from napari_unet.storage.atomic import temp_name as temp_name
from napari_unet.storage.output_checks import (
    check_free_space as check_free_space,  # the parts, re-exported for writers
)
from napari_unet.storage.output_checks import check_name as check_name
from napari_unet.storage.output_checks import check_not_input as check_not_input
from napari_unet.storage.output_checks import check_output as check_output
from napari_unet.storage.output_checks import check_replaceable as check_replaceable
from napari_unet.storage.output_checks import check_writable_folder as check_writable_folder
from napari_unet.storage.output_lock import OutputLock as OutputLock
from napari_unet.storage.output_lock import lock_path as lock_path
from napari_unet.storage.output_lock import locked as locked
from napari_unet.storage.output_staging import clean_stale as clean_stale
from napari_unet.storage.output_staging import pid_alive as pid_alive
from napari_unet.storage.output_staging import staged as staged
from napari_unet.storage.ownership import ATTRS_KEY as ATTRS_KEY
from napari_unet.storage.ownership import FOLDER_MARKER as FOLDER_MARKER
from napari_unet.storage.ownership import TIFF_SOFTWARE as TIFF_SOFTWARE
from napari_unet.storage.ownership import VOXEL_SIDECAR as VOXEL_SIDECAR
from napari_unet.storage.ownership import check_not_special as check_not_special
from napari_unet.storage.ownership import is_ours as is_ours
from napari_unet.storage.ownership import register_marker as register_marker
from napari_unet.storage.ownership import special_kind as special_kind


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


def write_text(target: str | os.PathLike, text: str, *, overwrite: bool, what: str = "output") -> Path:
    """Write a small text file atomically under the ownership and lock rules."""
    with safe_output(target, overwrite=overwrite, what=what) as tmp:
        tmp.write_text(text)
    return Path(os.fspath(target))
