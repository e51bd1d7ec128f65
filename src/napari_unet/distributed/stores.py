"""The partial output stores: creation, completion markers, resume checks, and the swap into place;
a run's stores are prepared (created, or an earlier run's resumed) by :func:`prepare_stores`."""

from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.distributed.block import cpu_cores, read_block_input, window_digest
from napari_unet.distributed.geometry import Block, BlockPlan
from napari_unet.errors import UserInputError
from napari_unet.network.model import UNet

#: Folder inside the partial labels store that holds one empty file per finished block.
MARKER_DIR = ".napari-unet-blocks"


#: Key of this package's entry in the output stores' attributes.
ATTRS_KEY = "napari_unet"


def partial_path(path: str | os.PathLike) -> Path:
    """The hidden sibling where an output is built (and resumed) before it is renamed into place."""
    p = Path(path)
    return p.parent / f".{p.name}.partial"


def store_attrs(path: Path) -> dict | None:
    import zarr

    try:
        return dict(zarr.open_array(str(path), mode="r").attrs.get(ATTRS_KEY) or {})
    except Exception:  # noqa: BLE001 - anything unreadable is simply not resumable
        return None


def create_store(
    path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, attrs: dict
) -> None:
    import zarr

    kwargs: dict[str, Any] = {
        "mode": "w", "shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": 0,
    }  # fmt: skip
    if int(str(zarr.__version__).split(".")[0]) >= 3:
        kwargs["zarr_format"] = 2  # the same format io.write_labels writes
    arr = zarr.open_array(str(path), **kwargs)
    arr.attrs[ATTRS_KEY] = attrs


def remove_store(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def swap_into_place(tmp: Path, target: Path) -> None:
    """Put a finished store at ``target`` (an atomic exchange where the system can); an old output
    napari-unet wrote is deleted only after the swap, anything else is never replaced."""
    from napari_unet.storage.atomic import commit
    from napari_unet.storage.outputs import check_replaceable

    check_replaceable(target)
    commit(tmp, target)


def verify_done(image: Any, plan: BlockPlan, markers: Path, done: set[str], workers: int) -> set[str]:
    """The finished blocks whose input is unchanged: each one's window is read again and its hash
    compared with the one stored at completion; a changed (or unrecorded) block loses its marker."""

    def same(block: Block) -> tuple[str, bool]:
        try:
            stored = (markers / block.key).read_text().strip()
        except OSError:
            stored = ""
        return block.key, bool(stored) and stored == window_digest(read_block_input(image, plan, block))

    blocks = [b for b in plan.blocks() if b.key in done]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = dict(pool.map(same, blocks))
    for key, ok in results.items():
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                (markers / key).unlink()
    return {k for k, ok in results.items() if ok}


def image_identity(image: Any) -> str:
    """A name for the input that is stable across runs (file path, dask name or content hash)."""
    name = getattr(image, "name", None)
    if hasattr(image, "dask") and isinstance(name, str):
        return f"dask:{name}"
    store = getattr(image, "store", None)
    if store is not None and hasattr(image, "path"):
        return f"zarr:{store}:{image.path}"
    from dask.base import tokenize

    return f"token:{tokenize(image)}"


# ------------------------------------------------------------------- a run's partial stores, resume


@dataclass(frozen=True)
class PartialStores:
    """The hidden partial stores of a run and the folder of its blocks' completion markers."""

    labels: Path
    probabilities: Path | None
    markers: Path
    #: the stores are an earlier run's with the same fingerprint, kept with their markers
    resumed: bool


def prepare_stores(
    model: UNet, image: Any, plan: BlockPlan, out: Path, prob_out: Path | None, fingerprint: str
) -> PartialStores:
    """Reuse the partial stores of an earlier run with the same fingerprint, else create them."""
    tmp = partial_path(out)
    tmp_p = partial_path(prob_out) if prob_out is not None else None
    markers = tmp / MARKER_DIR
    old = store_attrs(tmp) if tmp.exists() else None
    old_p = store_attrs(tmp_p) if tmp_p is not None and tmp_p.exists() else None
    resumable = (
        old is not None
        and old.get("fingerprint") == fingerprint
        and markers.is_dir()
        and (tmp_p is None or (old_p is not None and old_p.get("fingerprint") == fingerprint))
    )
    stores = PartialStores(tmp, tmp_p, markers, resumable)
    if not resumable:
        _create_stores(model, image, plan, stores, fingerprint)
    return stores


def _create_stores(model: UNet, image: Any, plan: BlockPlan, stores: PartialStores, fingerprint: str) -> None:
    """Fresh, empty partial stores (removing any earlier ones) and an empty marker folder."""
    k = model.n_classes
    shape = tuple(int(s) for s in image.shape)
    info = {
        "fingerprint": fingerprint,
        "complete": False,
        "tile_shape": list(plan.tiles.tile_shape),
        "chunks": list(plan.chunks),
        "n_classes": k,
        "class_names": [str(c) for c in (model.metadata.get("classes") or [])],
    }
    for p in (stores.labels, stores.probabilities):
        if p is not None and (p.exists() or p.is_symlink()):
            remove_store(p)
    try:
        create_store(stores.labels, shape, plan.output_chunks, np.uint8, {**info, "kind": "labels"})
        if stores.probabilities is not None:
            create_store(
                stores.probabilities,
                (k, *shape),
                (k, *plan.output_chunks),
                np.float32,
                {**info, "kind": "probabilities"},
            )
        stores.markers.mkdir()
    except OSError as exc:
        raise UserInputError(
            f"cannot create {stores.labels} ({exc.strerror or exc}); check the folder and free space"
        ) from None


def blocks_done(
    image: Any, plan: BlockPlan, stores: PartialStores, workers: int | None
) -> tuple[set[str], int]:
    """Keys of the blocks an earlier run finished on the same input, and how many changed since.

    Only blocks whose input is unchanged are resumed; the others are computed again.
    """
    if not stores.resumed:
        return set(), 0
    recorded = {p.name for p in stores.markers.iterdir()}
    if not recorded:
        return set(), 0
    done = verify_done(image, plan, stores.markers, recorded, int(workers or min(4, cpu_cores())))
    return done, len(recorded) - len(done)

