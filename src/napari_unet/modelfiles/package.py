"""Reading back a bioimage.io package napari-unet exported: its description and the model inside.

A package keeps the original ``.safetensors`` as an attachment that ``config.napari_unet`` names,
with its checksum, so :func:`napari_unet.modelfiles.checkpoint.load_model` opens a package like a model file,
without unpickling anything and without bioimage.io libraries. Writing packages is
:mod:`napari_unet.modelfiles.bioimageio`'s; this module sits below the checkpoint so both can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_unet.errors import UserInputError

#: Names a package's description file may have (0.5 writes rdf.yaml; bioimageio.yaml is the newer one).
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Key of napari-unet's entry in the package's ``config``.
CONFIG_KEY = "napari_unet"
#: File name of the original model inside a package.
MODEL_FILE = "model.safetensors"


def _rdf_in_folder(path: Path) -> Path | None:
    for name in RDF_NAMES:
        if (path / name).is_file():
            return path / name
    return None


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a bioimage.io model package (folder, .zip, or its rdf.yaml)."""
    p = Path(os.fspath(path))
    if p.is_dir():
        return _rdf_in_folder(p) is not None
    return p.is_file() and (p.suffix.lower() == ".zip" or p.name in RDF_NAMES)


def _read_package(path: Path) -> tuple[dict, Any]:
    """(description, reader of a file name -> bytes) of a package folder, zip or rdf.yaml."""
    import yaml

    if p_is_zip := (path.is_file() and path.suffix.lower() == ".zip"):
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserInputError(f"model {path} is not a readable zip file ({exc})") from None
        names = [n for n in RDF_NAMES if n in zf.namelist()]
        if not names:
            raise UserInputError(
                f"model {path} is a zip file without rdf.yaml; it is not a bioimage.io package"
            )

        def read(name: str) -> bytes:
            return zf.read(name)

        text = read(names[0])
    else:
        rdf = path if path.is_file() else _rdf_in_folder(path)
        if rdf is None:  # pragma: no cover - is_package said yes
            raise UserInputError(f"model {path} has no rdf.yaml")
        root = rdf.parent

        def read(name: str) -> bytes:
            return (root / name).read_bytes()

        text = rdf.read_bytes()
    del p_is_zip
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserInputError(
            f"model {path}: its rdf.yaml is not valid YAML ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(doc, dict):
        raise UserInputError(f"model {path}: its rdf.yaml is not a description")
    return doc, read


@contextlib.contextmanager
def unpacked(path: str | os.PathLike) -> Iterator[tuple[Path, str | None]]:
    """Yield (a temporary copy of the model file inside the package at ``path``, the package's name).

    The model file must match the checksum the package records; a package from another tool (no
    ``config.napari_unet``) raises UserInputError saying so. The copy is removed afterwards.
    """
    p = Path(os.fspath(path))
    doc, read = _read_package(p)
    entry = (doc.get("config") or {}).get(CONFIG_KEY) if isinstance(doc.get("config"), dict) else None
    if doc.get("type") != "model":
        raise UserInputError(f"{p} is a bioimage.io {doc.get('type', 'resource')!r}, not a model package")
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
        raise UserInputError(
            f"{p} is a bioimage.io model ({doc.get('name', 'unnamed')!r}) that napari-unet did not "
            "export; only packages made with 'napari-unet export' can be used as --model"
        )
    name = entry["model"]
    try:
        data = read(name)
    except (KeyError, OSError):
        raise UserInputError(f"{p}: the package lacks its napari-unet model file {name}") from None
    digest = entry.get("sha256")
    if digest and hashlib.sha256(data).hexdigest() != digest:
        raise UserInputError(f"{p}: the model file {name} in the package is damaged (checksum differs)")
    fd, tmp = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield Path(tmp), doc.get("name")
    finally:
        os.unlink(tmp)
