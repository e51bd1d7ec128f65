"""What a block-by-block run is asked for (:class:`BlockRun`) and what it reports: an event per
finished block (:class:`BlockEvent`) and, at the end, what it wrote (:class:`SegmentResult`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_unet.arrays.normalize import Normalizer


@dataclass(frozen=True)
class BlockRun:
    """A run's outputs and settings, beyond the model and the image; they travel together from
    :func:`~napari_unet.distributed.segment_blocks` to the checks, the fingerprint and the blocks.

    ``output`` is the labels store (uint8 class ids 1..K, chunks ``(1, cy, cx)``), written as zarr
    format 2; ``probabilities`` an optional second store for float32 probabilities shaped
    (K, [Z,] H, W). Both are absolute paths.
    """

    output: Path
    probabilities: Path | None = None
    #: ``"threads"`` (default), ``"sync"``, ``"local"``, a scheduler address, or a Client
    scheduler: Any = None
    #: output chunk (y, x), a multiple of 2**depth; default: the input's chunking if it is such a
    #: multiple, else 512
    chunks: int | Sequence[int] | None = None
    #: network input tile; default: the largest whose stride divides the chunk (700 for 512)
    tile_shape: int | Sequence[int] | None = None
    #: device, precision and batch size as for :func:`~napari_unet.prediction.inference.predict_tiles`,
    #: resolved on each worker ("auto" uses a worker's GPU when it has one)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    #: replace existing outputs (only once the new ones are complete)
    overwrite: bool = False
    #: threads for ``"threads"``, processes for ``"local"`` (default: one per core)
    workers: int | None = None
    #: seconds to wait for a scheduler address (default ``CONNECT_TIMEOUT_S``)
    connect_timeout: float | None = None
    #: intensity mapping; default: computed once from the model's stored normalisation on a sample
    #: of the whole volume, shared by every block
    normalizer: Normalizer | None = None
    #: CPU threads per block; default: a host's cores shared among the blocks running on it at once
    #: (no oversubscription). Convolutions round differently with different thread counts (about
    #: 1e-7), so bit-for-bit equality with ``predict`` needs the same count on both sides.
    torch_threads: int | None = None
    #: test-time augmentation, as for :func:`~napari_unet.prediction.inference.predict_tiles`
    tta: str = "none"


@dataclass(frozen=True)
class BlockEvent:
    """Progress: the run is set up (first event, ``region`` None), or one more block finished."""

    #: the finished block's part of the labels array; None for the first event
    region: tuple[slice, ...] | None
    #: blocks finished so far, counting those an earlier, interrupted run had finished
    completed: int
    total: int
    #: seconds the block took on its worker (0 for the first event)
    seconds: float
    #: torch device the block ran on, e.g. "cpu" or "cuda:0" ("" for the first event)
    device: str = ""


@dataclass(frozen=True)
class SegmentResult:
    """What a finished run wrote and how."""

    labels: Path
    probabilities: Path | None
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    tile_shape: tuple[int, int]
    blocks: int
    skipped: int
    seconds: float
    #: torch devices the blocks of this run ran on
    devices: tuple[str, ...] = ()
    #: blocks an earlier run had finished but whose input changed since, so they were computed again
    changed: int = 0

