"""The file formats napari-unet reads and writes, each declared once.

Everything that lists formats derives from :data:`FORMATS`: the suffixes :mod:`napari_unet.io`
detects, the error line that names what is readable, the napari reader's filename patterns (in
``napari.yaml``, checked against :func:`reader_patterns` by a test), the Load dock's file-dialog
filter and the label and probability targets of the writers. Adding a format starts here; its
probing, opening and writing live in :mod:`napari_unet.io` under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    """One file format: how it is recognised and what napari-unet does with it."""

    #: the name :mod:`napari_unet.io` dispatches on
    name: str
    #: lower-case file-name suffixes, the first one preferred
    suffixes: tuple[str, ...]
    #: stored as a folder (a zarr store, a folder of slices)
    folder: bool = False
    #: holds several named arrays, chosen as ``PATH:DATASET``
    datasets: bool = False
    #: segmentation labels can be written to it
    labels: bool = False
    #: float probabilities can be written to it
    probabilities: bool = False


TIFF = Format("tiff", (".tif", ".tiff"), labels=True, probabilities=True)
PNG = Format("png", (".png",), labels=True)
ZARR = Format("zarr", (".zarr",), folder=True, datasets=True, labels=True, probabilities=True)
HDF5 = Format("hdf5", (".h5", ".hdf5", ".hdf"), datasets=True)
MRC = Format("mrc", (".mrc", ".mrcs", ".rec", ".map"))
#: a folder of PNG or TIFF slices, one per section, in natural name order
SLICES = Format("slices", (), folder=True)

#: every format, in the order error messages and dialogs list them
FORMATS: tuple[Format, ...] = (TIFF, PNG, ZARR, HDF5, MRC, SLICES)
#: suffixes of the files inside a slice folder
SLICE_SUFFIXES: tuple[str, ...] = PNG.suffixes + TIFF.suffixes


def by_name(name: str) -> Format:
    """The format called ``name`` (KeyError for an unknown one)."""
    for f in FORMATS:
        if f.name == name:
            return f
    raise KeyError(name)


def read_suffixes() -> tuple[str, ...]:
    """Every suffix a readable file or store may have."""
    return tuple(s for f in FORMATS for s in f.suffixes)


def with_datasets() -> tuple[str, ...]:
    """Names of the formats that hold several arrays (``PATH:DATASET``)."""
    return tuple(f.name for f in FORMATS if f.datasets)


def format_of_suffix(path: Path) -> Format | None:
    """The format a path's suffix names, or None."""
    suffix = path.suffix.lower()
    for f in FORMATS:
        if suffix in f.suffixes:
            return f
    return None


def readable_text() -> str:
    """What can be read, for an error line: ".tif, .tiff, ..., or a folder of PNG/TIFF slices"."""
    return ", ".join(read_suffixes()) + ", or a folder of PNG/TIFF slices"


def reader_patterns() -> list[str]:
    """The napari reader's filename patterns: every suffix, and ``*`` for folders of slices."""
    return [f"*{s}" for s in read_suffixes()] + ["*"]


def dialog_filter() -> str:
    """The Load dock's file-dialog filter."""
    return f"EM images ({' '.join(reader_patterns()[:-1])});;All files (*)"


def label_targets() -> tuple[str, ...]:
    """Suffixes of single-file or store label outputs (PNG slices are written to a folder name)."""
    return tuple(s for f in FORMATS if f.labels and f is not PNG for s in f.suffixes)
