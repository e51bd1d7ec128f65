"""Shared by the speed benchmarks: the machine's name, its measured peak, and GFLOP/s against it.

The peak is measured in the same run as the figures it judges, on the device the figures come from:
bare 3x3 convolutions (channels_last, same-size padding) at the network's channel widths, fp32 and
bf16 (and fp16 on a GPU), and a large matmul. GPU work is timed with the device synchronised.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: CPU flags that decide which kernels torch can use
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_line() -> str:
    """'<lscpu model name>, <cores>, flags ..., torch <version>, <threads> threads' for every table."""
    name, flags = "unknown CPU", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                name = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.SubprocessError):
        pass
    have = " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)
    return (
        f"{name}, {os.cpu_count()} logical CPUs, flags: {have}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def device_line(device: torch.device) -> str:
    """The GPU's name, memory and compute capability with the CUDA and torch versions; the CPU otherwise."""
    if device.type != "cuda":
        return f"CPU: {cpu_line()}"
    props = torch.cuda.get_device_properties(device)
    return (
        f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
        f"compute capability {props.major}.{props.minor}; CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, torch {torch.__version__}; host CPU: {cpu_line()}"
    )


def sync() -> None:
    """Wait for queued GPU work, so a wall-clock time covers it (a no-op without CUDA in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def load_line() -> str:
    """The 1/5/15-minute load averages, printed beside the figures (the machine may be shared)."""
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f}"


def best_time(fn: Callable[[], object], repeats: int, warm: bool = True) -> float:
    """Best wall time of ``repeats`` calls, after one untimed warm-up call when ``warm``."""
    if warm:
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def conv_peak(
    widths: list[int],
    dtype: torch.dtype,
    work: float = 2e9,
    repeats: int = 2,
    device: torch.device | str = "cpu",
) -> dict[int, float]:
    """GFLOP/s of a bare 3x3 convolution (c -> c channels, channels_last) per width ``c``.

    The image side is chosen so one call is about ``work`` FLOPs; a dtype the CPU has no fast
    kernels for (bf16 without AVX512-BF16/AMX) gets 1/16 of the work so the run stays short. On a
    GPU the batch is 8 and the work 100x, so the chip is full and a call outlasts its launch.
    """
    device = torch.device(device)
    batch = 8 if device.type == "cuda" else 1
    work = work * 100 if device.type == "cuda" else work
    out = {}
    for c in widths:
        side = max(32, int((work / (2 * 9 * c * c * batch)) ** 0.5))
        x = torch.randn(batch, c, side, side, device=device).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = best_time(lambda x=x, w=w: F.conv2d(x, w, padding=1), repeats)
        out[c] = 2 * 9 * c * c * side * side * batch / t / 1e9
    return out


def matmul_peak(
    dtype: torch.dtype, n: int = 2048, repeats: int = 2, device: torch.device | str = "cpu"
) -> float:
    """GFLOP/s of an n x n by n x n matrix product."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = best_time(lambda: a @ b, repeats)
    return 2 * n**3 / t / 1e9


def measure_peak(widths: list[int], fast_bf16: bool, device: torch.device | str = "cpu") -> dict[str, float]:
    """The machine's peak in this run: best conv GFLOP/s over ``widths`` for fp32 and bf16, matmuls.

    On a GPU fp32 convolutions run as cuDNN runs them by default (TF32 tensor cores where allowed),
    and fp16 is measured too; bf16 is what ``precision="auto"`` computes in there.
    """
    device = torch.device(device)
    gpu = device.type == "cuda"
    fast_bf16 = fast_bf16 or gpu
    n = 8192 if gpu else 2048
    fp32 = conv_peak(widths, torch.float32, device=device)
    bf16 = conv_peak(widths, torch.bfloat16, work=2e9 if fast_bf16 else 1.25e8, device=device)
    peak = {
        "conv_fp32": max(fp32.values()),
        "conv_bf16": max(bf16.values()),
        "matmul_fp32": matmul_peak(torch.float32, n=n, device=device),
        "matmul_bf16": matmul_peak(torch.bfloat16, n=n if fast_bf16 else 512, device=device),
    }
    fp16 = conv_peak(widths, torch.float16, device=device) if gpu else {}
    if gpu:
        peak["conv_fp16"] = max(fp16.values())
    where = "GPU, batch 8" if gpu else "batch 1"
    print(f"peak, bare 3x3 convolutions (channels_last, {where}), GFLOP/s per width:")
    for c in widths:
        half = f"   fp16 {fp16[c]:9.1f}" if gpu else ""
        print(f"  {c:4d} -> {c:<4d} fp32 {fp32[c]:9.1f}   bf16 {bf16[c]:9.1f}{half}")
    print(
        f"  matmul {n}: fp32 {peak['matmul_fp32']:.1f}, bf16 {peak['matmul_bf16']:.1f} GFLOP/s; "
        f"peak used below: conv fp32 {peak['conv_fp32']:.1f}, conv bf16 {peak['conv_bf16']:.1f}"
    )
    return peak


def rate_row(name: str, seconds: float, flops: float, peak: float, extra: str = "") -> str:
    """One table row: seconds, GFLOP/s and the share of ``peak``."""
    g = flops / seconds / 1e9
    return f"{name:46s} {seconds:8.3f} {g:8.1f} {100 * g / peak:7.1f} %  {extra}"
