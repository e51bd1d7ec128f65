"""Device and precision choice: cuda > mps > cpu, bf16 autocast where the hardware has it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from napari_unet.errors import UserInputError

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``name``; "auto" (or None) picks cuda, then mps, then cpu."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise UserInputError(
                "device 'mps' was requested but Apple MPS is not available; use --device cpu"
            )
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UserInputError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    checks = []
    cpu_mod = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu_mod, name, None) or getattr(getattr(torch._C, "_cpu", None), name, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                checks.append(bool(fn()))
    return any(checks)


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``: float32 or bfloat16."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to ``dtype`` when it is not float32; a no-op otherwise."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def preferred_memory_format(
    device: torch.device, dtype: torch.dtype = torch.float32, training: bool = False
) -> torch.memory_format:
    """The faster layout for the network's tensors, as measured by the speed benchmarks.

    channels_last on CUDA, and on a CPU for bf16 and for fp32 prediction (oneDNN's channels_last
    convolutions: about 1.7x for the shipped base-16 network on a Zen 3 core); plain NCHW for fp32
    training on a CPU (its backward pass ran 0.87x as fast in channels_last there) and on MPS.
    """
    if device.type == "cuda":
        return torch.channels_last
    if device.type == "cpu" and (dtype != torch.float32 or not training):
        return torch.channels_last
    return torch.contiguous_format


def memory_budget_bytes(device: torch.device) -> int:
    """Memory one forward pass may use: part of free GPU memory, or of available host memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        import os

        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 * 2**30
    return int(min(avail * 0.25, 4 * 2**30))
