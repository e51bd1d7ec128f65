"""Scale-out segmentation: a volume of any size, block by block on dask, into chunked zarr stores.

Strategy
--------
The output is cut into blocks that are exactly the chunks of the output zarr store (``(1, cy, cx)``
for a stack, ``(cy, cx)`` for an image), so every block is written by one task and no two tasks
touch the same chunk. The overlap tiles come from one plan for the *whole* image, the same plan
:func:`napari_unet.prediction.inference.predict_tiles` uses: output tiles start at multiples of
``2**depth`` in image coordinates. The tile is chosen so that its stride divides the chunk size, so a
block owns whole tiles; only the last tile along an axis (shifted to end at the border) may straddle two
blocks, and both compute it. Each block reads one input window (its tiles plus the
``margin / 2`` context, mirrored at the image border) from the source with
:func:`~napari_unet.arrays.tiling.read_mirrored`, runs the network on its tiles exactly as
``predict_tiles`` does and writes labels (and optionally probabilities) into its chunk. The result
therefore equals in-process ``predict`` with the same tile shape bit for bit in fp32.

The intensity normaliser is computed once for the whole volume and sent with every block, and the
model travels once per worker (safetensors bytes, scattered before the blocks are submitted).
Output goes to hidden ``.NAME.partial`` stores that record which blocks are finished; a rerun with
the same arguments skips those, and the stores are renamed into place only when every block is
done.

Schedulers: ``"threads"`` (default: dask's threaded scheduler in this process), ``"sync"`` (one
block after the other, for debugging), ``"local"`` (a ``LocalCluster`` of worker processes on this
machine), an address such as ``"tcp://host:8786"`` (a running ``dask.distributed`` scheduler, e.g.
one started by dask-jobqueue or dask-kubernetes), or a ``distributed.Client``.

This package's public face is here; its parts live beside it: a run from start to end
(:mod:`.runner`: :func:`segment_blocks`), what a run is asked for and reports (:mod:`.request`:
:class:`BlockRun`, :class:`BlockEvent`, :class:`SegmentResult`), the checks and the fingerprint
before it (:mod:`.checks`), block geometry (:mod:`.geometry`), the model's journey to the workers
(:mod:`.payload`), one block's work (:mod:`.block`), the schedulers (:mod:`.schedulers`), the
partial stores and resume (:mod:`.stores`), whether to go block by block (:mod:`.choice`) and an
OME-Zarr output (:mod:`.ome`).
"""

from __future__ import annotations

from napari_unet.distributed.block import Done, Job, Shipped, address_host, cpu_cores, run_block
from napari_unet.distributed.choice import needs_blockwise
from napari_unet.distributed.geometry import Block, BlockPlan, plan_blocks
from napari_unet.distributed.ome import blocks_path, finish_ome_zarr
from napari_unet.distributed.payload import ModelPayload, forget_model
from napari_unet.distributed.request import BlockEvent, BlockRun, SegmentResult
from napari_unet.distributed.runner import run_blocks, segment_blocks, segment_volume
from napari_unet.distributed.schedulers import (
    CONNECT_TIMEOUT_S,
    GRAPH_BLOCKS,
    SCHEDULER_HELP,
    dask_client,
    is_address,
    run_client,
    run_inline,
    run_threads,
)
from napari_unet.distributed.stores import (
    ATTRS_KEY,
    MARKER_DIR,
    PartialStores,
    create_store,
    image_identity,
    partial_path,
    prepare_stores,
    remove_store,
    store_attrs,
    swap_into_place,
    verify_done,
)
from napari_unet.prediction.tileplan import DEFAULT_CHUNK, default_chunks, tile_for_chunk

__all__ = [
    "ATTRS_KEY",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_CHUNK",
    "GRAPH_BLOCKS",
    "MARKER_DIR",
    "SCHEDULER_HELP",
    "Block",
    "BlockEvent",
    "BlockPlan",
    "BlockRun",
    "Done",
    "Job",
    "ModelPayload",
    "PartialStores",
    "SegmentResult",
    "Shipped",
    "address_host",
    "blocks_path",
    "cpu_cores",
    "create_store",
    "dask_client",
    "default_chunks",
    "finish_ome_zarr",
    "forget_model",
    "image_identity",
    "is_address",
    "needs_blockwise",
    "partial_path",
    "plan_blocks",
    "prepare_stores",
    "remove_store",
    "run_block",
    "run_blocks",
    "run_client",
    "run_inline",
    "run_threads",
    "segment_blocks",
    "segment_volume",
    "store_attrs",
    "swap_into_place",
    "tile_for_chunk",
    "verify_done",
]
