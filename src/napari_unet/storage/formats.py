"""The registry of file formats: each format is declared once, with the functions that handle it.

A format is one :class:`Format` entry, declared by its module in :mod:`napari_unet.storage.io` (``FORMAT``
there) and registered by :mod:`napari_unet.storage.io` in the order messages and dialogs list formats.
This module sits below ``io`` and never imports it: the built-in formats are here once ``io`` is
imported, so a caller that asks the registry imports ``napari_unet.storage.io`` first (every reader and
writer does).

:mod:`napari_unet.storage.io` finds everything through this registry: which format a path is (by suffix,
or for a folder by asking each folder format), how to probe and open it, and how to write labels
or probabilities to it. The error line that names what is readable, the napari reader's filename
patterns (in ``napari.yaml``, checked against :func:`reader_patterns` by a test), the Load dock's
file-dialog filter and the writers' list of targets derive from the same entries.

Adding a format: a module in ``io/`` that declares its ``FORMAT`` (with ``save_as`` when the Save
masks dock should offer it), its name in the registration list of ``io/__init__.py``, the new
patterns in ``napari.yaml`` and a row in docs/formats.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Format",
    "all_formats",
    "by_name",
    "dialog_filter",
    "format_of_suffix",
    "label_targets",
    "read_suffixes",
    "readable_text",
    "reader_patterns",
    "register",
    "save_choices",
    "target_format",
    "targets_text",
    "unregister",
    "with_datasets",
]

#: ``probe(path, dataset, check_all) -> napari_unet.storage.io._common.ProbeResult``: shape, dtype,
#: calibration and files from metadata alone (``check_all``: check every file of a multi-file format)
Probe = Callable[[Path, "str | None", bool], Any]
#: ``open(path, dataset) -> (array, handle)``: an array-like read on demand and what keeps it open
Opener = Callable[[str, "str | None"], tuple[Any, Any]]
#: ``read(probe, lazy) -> array``: pixels for a probe, for formats not read through ``open``
Reader = Callable[[Any, bool], Any]
#: ``write_labels(tmp, labels, target, *, voxel_size, unit, class_names)``: write into ``tmp``
LabelWriter = Callable[..., None]
#: ``write_probabilities(tmp, probabilities)``: write float32 probabilities into ``tmp``
ProbabilityWriter = Callable[[Path, Any], None]


@dataclass(frozen=True)
class Format:
    """One file format: how it is recognised, read and written, and how it is offered to users."""

    #: the name probes and messages use ("tiff", "zarr", ...)
    name: str
    #: lower-case file-name suffixes, the first one preferred; none for a plain folder of files
    suffixes: tuple[str, ...]
    #: metadata without pixels; see :data:`Probe`
    probe: Probe
    #: a lazily read array (wrapped in a dask array by :mod:`napari_unet.storage.io`); see :data:`Opener`
    open: Opener | None = None
    #: pixels for formats that are not read through ``open`` (PNG, slice folders); see :data:`Reader`
    read: Reader | None = None
    #: stored as a folder: ``claims(path)`` says whether a folder is one of these
    folder: bool = False
    claims: Callable[[Path], bool] | None = None
    #: a stricter ``claims`` for the napari reader, which must decline a folder it cannot read so
    #: that other plugins get it (default: ``claims``)
    recognises: Callable[[Path], bool] | None = None
    #: holds several named arrays, chosen as ``PATH:DATASET``; ``list_datasets(path)`` lists them
    list_datasets: Callable[[Path], list[tuple[str, tuple[int, ...], str]]] | None = None
    #: the dask chunks are the opened array's own (TIFF tiles), not the probe's
    chunks_on_open: bool = False
    #: writers; None when the format cannot hold labels or probabilities
    write_labels: LabelWriter | None = None
    write_probabilities: ProbabilityWriter | None = None
    #: suffixes of output paths ("" for a name without suffix); default: ``suffixes``
    target_suffixes: tuple[str, ...] | None = None
    #: what the Save masks dock offers for it: (choice shown, output suffix; "" = a folder named
    #: without suffix) pairs, in the order shown; none when the dock does not offer it
    save_as: tuple[tuple[str, str], ...] = ()
    #: how messages name the format: as a readable folder, and as a labels / probabilities target
    description: str = ""
    labels_text: str = ""
    probabilities_text: str = ""

    def offers_folder(self, path: Path) -> bool:
        """Whether the napari reader should open folder ``path`` as this format."""
        test = self.recognises or self.claims
        return self.folder and test is not None and test(path)

    @property
    def datasets(self) -> bool:
        """True when the format holds several named arrays (``PATH:DATASET``)."""
        return self.list_datasets is not None

    @property
    def labels(self) -> bool:
        """True when segmentation labels can be written to it."""
        return self.write_labels is not None

    @property
    def probabilities(self) -> bool:
        """True when float probabilities can be written to it."""
        return self.write_probabilities is not None

    @property
    def outputs(self) -> tuple[str, ...]:
        """Suffixes of output paths ("" for a name without suffix)."""
        return self.suffixes if self.target_suffixes is None else self.target_suffixes

    @property
    def reader_patterns(self) -> tuple[str, ...]:
        """napari reader filename patterns: ``*SUFFIX`` per suffix, ``*`` for a plain folder."""
        return tuple(f"*{s}" for s in self.suffixes) or ("*",)


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the registry (after the formats already there) and return it.

    A name or suffix that another registered format already has is refused (ValueError), so one
    suffix always means one format.
    """
    if fmt.name in _REGISTRY and _REGISTRY[fmt.name] is not fmt:
        raise ValueError(f"a format called {fmt.name!r} is registered already")
    taken = {s: f.name for f in _REGISTRY.values() if f is not fmt for s in f.suffixes}
    clash = [s for s in fmt.suffixes if s in taken]
    if clash:
        raise ValueError(f"suffix {clash[0]!r} of {fmt.name!r} belongs to {taken[clash[0]]!r}")
    if any(s != s.lower() or not s.startswith(".") for s in fmt.suffixes):
        raise ValueError(f"suffixes of {fmt.name!r} must be lower case and start with a dot")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove the format called ``name`` from the registry (KeyError for an unknown one)."""
    del _REGISTRY[name]


def all_formats() -> tuple[Format, ...]:
    """Every registered format, in the order error messages and dialogs list them."""
    return tuple(_REGISTRY.values())


def save_choices() -> dict[str, str]:
    """What the Save masks dock offers: choice shown -> output suffix, in registration order."""
    return {text: suffix for fmt in _REGISTRY.values() for text, suffix in fmt.save_as}


def by_name(name: str) -> Format:
    """The format called ``name`` (KeyError for an unknown one)."""
    return _REGISTRY[name]


def read_suffixes() -> tuple[str, ...]:
    """Every suffix a readable file or store may have."""
    return tuple(s for f in all_formats() for s in f.suffixes)


def with_datasets() -> tuple[str, ...]:
    """Names of the formats that hold several arrays (``PATH:DATASET``)."""
    return tuple(f.name for f in all_formats() if f.datasets)


def format_of_suffix(path: Path) -> Format | None:
    """The format a path's suffix names, or None."""
    suffix = path.suffix.lower()
    for f in all_formats():
        if suffix in f.suffixes:
            return f
    return None


def readable_text() -> str:
    """What can be read, for an error line: ".tif, .tiff, ..., or a folder of PNG/TIFF slices"."""
    folders = [f.description for f in all_formats() if not f.suffixes and f.description]
    return ", ".join(read_suffixes()) + "".join(f", or {d}" for d in folders)


def reader_patterns() -> list[str]:
    """The napari reader's filename patterns: every suffix, and ``*`` for folders of slices."""
    return [p for f in all_formats() for p in f.reader_patterns]


def dialog_filter() -> str:
    """The Load dock's file-dialog filter: every suffix pattern, then all files."""
    patterns = [p for p in reader_patterns() if p != "*"]
    return f"EM images ({' '.join(patterns)});;All files (*)"


def label_targets() -> tuple[str, ...]:
    """Suffixes of single-file or store label outputs (PNG slices are written to a folder name)."""
    return tuple(s for f in all_formats() if f.labels for s in f.outputs if s)


def _writes(fmt: Format, what: str) -> bool:
    """Whether ``fmt`` can hold ``what`` ("labels" or "probabilities")."""
    return fmt.labels if what == "labels" else fmt.probabilities


def targets_text(what: str) -> str:
    """The outputs ``what`` ("labels" or "probabilities") can go to, for an error line or help.

    Targets named without a suffix (a folder of PNG slices) come last.
    """
    writers = [f for f in all_formats() if _writes(f, what)]
    writers.sort(key=lambda f: "" in f.outputs)
    texts = [f.labels_text if what == "labels" else f.probabilities_text for f in writers]
    if len(texts) <= 2:
        return " or ".join(texts)
    return ", ".join(texts[:-1]) + ", or " + texts[-1]


def target_format(path: Path, what: str) -> Format | None:
    """The format that writes ``what`` ("labels" or "probabilities") to ``path``, by its suffix."""
    suffix = path.suffix.lower()
    for f in all_formats():
        if _writes(f, what) and suffix in f.outputs:
            return f
    return None
