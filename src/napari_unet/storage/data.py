"""Sample data: the ISBI 2012 EM stacks (fetched, hash-verified, cached) and a synthetic EM stack.

The ISBI 2012 files are the PNG export of the challenge data published in the GitHub repository
zhixuhao/unet. Every file is checked against the sha256 in ``resources/isbi2012.tsv`` before it is
used. The synthetic stack needs no network and comes with exact ground truth, so tests and demos can
run anywhere.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from napari_unet.errors import UserInputError

__all__ = [
    "DATA_DIR_ENV",
    "ISBI2012_BASE_URL",
    "data_dir",
    "isbi2012_available",
    "isbi2012_files",
    "load_isbi2012",
    "synthetic_em",
]

#: Environment variable naming the folder that holds (or will hold) downloaded sample data.
DATA_DIR_ENV = "NAPARI_UNET_DATA_DIR"
#: Files are fetched from here + the upstream path listed in the manifest.
ISBI2012_BASE_URL = "https://raw.githubusercontent.com/zhixuhao/unet/master/"
_SUBDIR = "isbi2012"
_SPLITS = ("train", "test")
#: Training slices used when no indices are given; slices 20-29 are kept for held-out evaluation.
_DEFAULT_INDICES = {"train": tuple(range(20)), "test": tuple(range(30))}


# --------------------------------------------------------------------------------------------
# ISBI 2012
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _manifest() -> dict[str, tuple[str, str]]:
    """Map local path (e.g. ``train/images/00.png``) -> (upstream path, sha256)."""
    text = resources.files("napari_unet").joinpath("resources/isbi2012.tsv").read_text("utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return {r["local_path"]: (r["upstream_path"], r["sha256"]) for r in rows}


def data_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$NAPARI_UNET_DATA_DIR``, else the OS cache.

    ISBI 2012 files live below it at ``isbi2012/<split>/<images|labels>/<NN>.png``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-unet"))


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise UserInputError(f"Unknown ISBI 2012 split {split!r}; use 'train' or 'test'.")


def _indices(split: str, indices: Iterable[int] | int | None) -> list[int]:
    if indices is None:
        return list(_DEFAULT_INDICES[split])
    if isinstance(indices, (int, np.integer)):
        indices = [int(indices)]
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i < 30]
    if bad:
        raise UserInputError(f"ISBI 2012 slice index {bad[0]} is out of range; use 0-29.")
    if not out:
        raise UserInputError("No ISBI 2012 slice indices given; pass at least one (0-29).")
    return out


def isbi2012_files(split: str = "train", indices: Iterable[int] | int | None = None) -> list[str]:
    """Local file names (relative to ``<cache>/isbi2012``) of a split, images then labels.

    For ``split="train"`` without indices these are slices 0-19; slices 20-29 (the held-out
    evaluation slices) are only listed when asked for by index.
    """
    _check_split(split)
    idx = _indices(split, indices)
    names = [f"{split}/images/{i:02d}.png" for i in idx]
    if split == "train":
        names += [f"train/labels/{i:02d}.png" for i in idx]
    return names


def _file_ok(path: Path, sha256: str) -> bool:
    import pooch

    return path.is_file() and pooch.file_hash(str(path), alg="sha256") == sha256


def isbi2012_available(
    split: str = "train", indices: Iterable[int] | int | None = None, *, cache_dir=None
) -> bool:
    """True when every file of the split is in the cache with the right sha256 (no network)."""
    root = data_dir(cache_dir) / _SUBDIR
    manifest = _manifest()
    return all(
        _file_ok(root / name, manifest[name][1]) for name in isbi2012_files(split, indices)
    )


def _fetch(name: str, root: Path, download: bool) -> Path:
    """Return the verified local path of one manifest file, downloading it when allowed."""
    upstream, sha256 = _manifest()[name]
    path = root / _SUBDIR / name
    if _file_ok(path, sha256):
        return path  # present and valid: never write, the folder may be read-only
    state = "has the wrong sha256" if path.exists() else "is missing"
    if not download:
        raise UserInputError(
            f"ISBI 2012 file {path} {state} and downloading is off; allow downloading, or set "
            f"{DATA_DIR_ENV} (or cache_dir) to a folder that holds isbi2012/{name}."
        )
    import pooch
    import requests

    url = ISBI2012_BASE_URL + upstream
    try:
        pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=f"{_SUBDIR}/{name}", path=root)
    except (requests.exceptions.RequestException, OSError, ValueError) as exc:
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            reason = "no connection"
        else:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserInputError(
            f"Could not fetch ISBI 2012 file {name} from {url} into {root} ({reason}); when "
            f"offline, set {DATA_DIR_ENV} (or cache_dir) to a folder that holds isbi2012/{name}."
        ) from None
    return path


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def load_isbi2012(
    split: str = "train",
    indices: Iterable[int] | int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ISBI 2012 slices as uint8 stacks ``(N, 512, 512)``: images, and labels for "train".

    Labels are as stored: 0 = membrane, 255 = cell. ``indices`` are slice numbers 0-29 of the
    volume; without them "train" gives slices 0-19 (20-29 are the held-out evaluation slices,
    fetched only when asked for) and "test" all 30. Files are looked up in :func:`data_dir`
    (``cache_dir``, else ``$NAPARI_UNET_DATA_DIR``, else the OS cache) and, if missing and
    ``download`` is true, fetched with pooch; every file is verified by sha256.
    Raises UserInputError when a file is unavailable.
    """
    _check_split(split)
    idx = _indices(split, indices)
    root = data_dir(cache_dir)
    images = np.stack([_read_png(_fetch(f"{split}/images/{i:02d}.png", root, download))
                       for i in idx])
    if split != "train":
        return images, None
    labels = np.stack([_read_png(_fetch(f"train/labels/{i:02d}.png", root, download))
                       for i in idx])
    return images, labels


# --------------------------------------------------------------------------------------------
# Synthetic EM
# --------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    std = field.std()
    return field / std if std > 0 else field


def _organelle_spots(rng: np.random.Generator, to_border: np.ndarray, membrane_width: float) -> np.ndarray:
    """Darkening (H, W) of small organelle-like spots inside cells, away from membranes."""
    h, w = to_border.shape
    n_spots = rng.poisson(h * w / 1400.0)
    cy = rng.uniform(0, h, n_spots)
    cx = rng.uniform(0, w, n_spots)
    radius = rng.uniform(1.5, 4.0, n_spots)
    depth = rng.uniform(70.0, 130.0, n_spots)
    spots = np.zeros((h, w))
    for y0, x0, r, d in zip(cy, cx, radius, depth, strict=True):
        if to_border[int(y0), int(x0)] < r + membrane_width + 2.0:
            continue
        y1, y2 = int(max(0, y0 - 2 * r - 2)), int(min(h, y0 + 2 * r + 3))
        x1, x2 = int(max(0, x0 - 2 * r - 2)), int(min(w, x0 + 2 * r + 3))
        yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float64)
        r2 = (yy - y0) ** 2 + (xx - x0) ** 2
        spots[y1:y2, x1:x2] = np.maximum(spots[y1:y2, x1:x2], d * np.exp(-r2 / (2 * r * r)))
    return spots


def synthetic_em(
    n_slices: int = 3,
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    membrane_width: float = 2.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A serial-section-TEM-like uint8 stack ``(Z, H, W)`` with exact labels (1 membrane, 2 cell).

    Cells are a Voronoi tessellation in a gently warped plane whose seeds drift smoothly from slice
    to slice; membranes are the pixels closer than ``membrane_width / 2`` to a cell border. The
    image has grey cells (~150-200) with low-frequency texture and small dark organelle-like spots
    (labelled cell, not membrane), dark membranes (~40-80), a slight blur and noise. Deterministic
    for a given ``seed``; needs no network. Useful for tests and demos with known ground truth.
    """
    n_slices = int(n_slices)
    if n_slices < 1:
        raise UserInputError(f"n_slices must be at least 1, got {n_slices}.")
    if len(shape) != 2 or min(shape) < 8:
        raise UserInputError(f"shape must be two sizes of at least 8 pixels, got {tuple(shape)}.")
    if not membrane_width > 0:
        raise UserInputError(f"membrane_width must be positive, got {membrane_width}.")
    h, w = (int(s) for s in shape)
    rng = np.random.default_rng(seed)

    # Seeds on a jittered grid over a margin around the image (so drifting cells keep the border
    # covered); dropping some seeds gives a spread of cell sizes without sliver-thin cells.
    spacing = 38.0  # pixels; cells then average about 45 px across, as in ISBI 2012 at 512 x 512
    gy, gx = np.mgrid[-spacing : h + 2 * spacing : spacing, -spacing : w + 2 * spacing : spacing]
    seeds0 = np.stack([gy.ravel(), gx.ravel()], axis=1)
    seeds0 = seeds0 + rng.uniform(-0.35, 0.35, seeds0.shape) * spacing
    seeds0 = seeds0[rng.random(len(seeds0)) > 0.3]
    n_seeds = len(seeds0)
    velocity = rng.normal(0.0, 1.0, size=(n_seeds, 2))  # pixels per slice
    phase = rng.uniform(0, 2 * np.pi, size=(n_seeds, 2))
    cell_grey = rng.uniform(160.0, 195.0, size=n_seeds)

    # Smooth warp so that borders curve like membranes rather than straight Voronoi edges.
    warp_amp = 4.0
    warp = _smooth_noise(rng, (2, n_slices + 4, h, w), (0, 2.0, 18.0, 18.0))[:, 2:-2] * warp_amp
    texture = _smooth_noise(rng, (n_slices + 4, h, w), (1.5, 6.0, 6.0))[2:-2]
    grain = _smooth_noise(rng, (n_slices, h, w), (0, 1.2, 1.2))
    staining = _smooth_noise(rng, (n_slices + 4, h, w), (1.5, 10.0, 10.0))[2:-2]

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    images = np.empty((n_slices, h, w), dtype=np.uint8)
    labels = np.empty((n_slices, h, w), dtype=np.uint8)
    k = min(4, n_seeds)
    for z in range(n_slices):
        seeds = seeds0 + velocity * z + 1.5 * np.sin(0.35 * z + phase)
        pts = np.stack([yy + warp[0, z], xx + warp[1, z]], axis=-1).reshape(-1, 2)
        dist, idx = cKDTree(seeds).query(pts, k=k)
        # Distance to the border of the nearest cell: to the bisector with each runner-up seed.
        gap = np.linalg.norm(seeds[idx[:, 1:]] - seeds[idx[:, :1]], axis=-1)
        to_border = ((dist[:, 1:] ** 2 - dist[:, :1] ** 2) / (2 * np.maximum(gap, 1e-9))).min(1)
        to_border = to_border.reshape(h, w)
        owner = idx[:, 0].reshape(h, w)
        membrane = to_border < membrane_width / 2.0

        img = cell_grey[owner] + 9.0 * texture[z] - _organelle_spots(rng, to_border, membrane_width)
        # Membranes: a dark band, anti-aliased over one pixel at its edges.
        # Staining varies along the membranes: some are faint, as in real sections.
        mem_grey = 48.0 + 20.0 * staining[z]
        profile = np.clip(membrane_width / 2.0 + 0.5 - to_border, 0.0, 1.0)
        img = img + (mem_grey - img) * profile
        img = ndi.gaussian_filter(img, 0.7) + 9.0 * grain[z] + rng.normal(0.0, 11.0, (h, w))
        images[z] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        labels[z] = np.where(membrane, 1, 2).astype(np.uint8)
    return images, labels
