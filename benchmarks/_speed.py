"""Shared by the speed benchmarks: the CPU's name, its measured peak, and GFLOP/s against it.

The peak is measured in the same run as the figures it judges: bare 3x3 convolutions (channels_last,
same-size padding, batch 1) at the network's channel widths, fp32 and bf16, and a large matmul.
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
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def conv_peak(widths: list[int], dtype: torch.dtype, work: float = 2e9, repeats: int = 2) -> dict[int, float]:
    """GFLOP/s of a bare 3x3 convolution (c -> c channels, channels_last) per width ``c``.

    The image side is chosen so one call is about ``work`` FLOPs; a dtype the CPU has no fast
    kernels for (bf16 without AVX512-BF16/AMX) gets 1/16 of the work so the run stays short.
    """
    out = {}
    for c in widths:
        side = max(32, int((work / (2 * 9 * c * c)) ** 0.5))
        x = torch.randn(1, c, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = best_time(lambda x=x, w=w: F.conv2d(x, w, padding=1), repeats)
        out[c] = 2 * 9 * c * c * side * side / t / 1e9
    return out


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 2) -> float:
    """GFLOP/s of an n x n by n x n matrix product."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    t = best_time(lambda: a @ b, repeats)
    return 2 * n**3 / t / 1e9


def measure_peak(widths: list[int], fast_bf16: bool) -> dict[str, float]:
    """The machine's peak in this run: best conv GFLOP/s over ``widths`` for fp32 and bf16, matmuls."""
    fp32 = conv_peak(widths, torch.float32)
    bf16 = conv_peak(widths, torch.bfloat16, work=2e9 if fast_bf16 else 1.25e8)
    peak = {
        "conv_fp32": max(fp32.values()),
        "conv_bf16": max(bf16.values()),
        "matmul_fp32": matmul_peak(torch.float32),
        "matmul_bf16": matmul_peak(torch.bfloat16, n=2048 if fast_bf16 else 512),
    }
    print("peak, bare 3x3 convolutions (channels_last, batch 1), GFLOP/s per width:")
    for c in widths:
        print(f"  {c:4d} -> {c:<4d} fp32 {fp32[c]:7.1f}   bf16 {bf16[c]:7.1f}")
    print(
        f"  matmul fp32 {peak['matmul_fp32']:.1f}, bf16 {peak['matmul_bf16']:.1f} GFLOP/s; "
        f"peak used below: conv fp32 {peak['conv_fp32']:.1f}, conv bf16 {peak['conv_bf16']:.1f}"
    )
    return peak


def rate_row(name: str, seconds: float, flops: float, peak: float, extra: str = "") -> str:
    """One table row: seconds, GFLOP/s and the share of ``peak``."""
    g = flops / seconds / 1e9
    return f"{name:46s} {seconds:8.3f} {g:8.1f} {100 * g / peak:7.1f} %  {extra}"
