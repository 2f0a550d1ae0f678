"""What this machine can do: CPU flags, bf16 capability, and its measured matmul peak.

`precision: auto` asks `cpu_has_bf16()`: bf16 autocast pays off on CPUs whose matrix units
multiply bf16 natively (AVX512-BF16 or AMX-BF16; oneDNN then runs bf16 GEMMs several times
faster than fp32). Elsewhere bf16 is emulated and slower, so auto keeps fp32 there.
"""

from __future__ import annotations

import functools
import time

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first processor's flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_flags() -> list[str]:
    """The bf16 matrix-unit flags this CPU has (for the record: which path `auto` took and why)."""
    return [f for f in BF16_FLAGS if f in cpu_flags()]


def cpu_has_bf16() -> bool:
    return bool(bf16_flags())


def simd_flags() -> list[str]:
    """The flags that decide CPU matmul speed, for benchmark records."""
    keep = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx512_fp16")
    return [f for f in keep if f in cpu_flags()]


def matmul_peak(
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    shape: tuple[int, int, int] = (2048, 384, 1536),
    seconds: float = 1.0,
) -> float:
    """Achieved FLOP/s of one (m x k) @ (k x n) matmul repeated for about `seconds`, best of 3 rounds.

    The default shape is the FFN of MiniLM-L6-H384 at a batch of ~2k tokens: what "peak"
    means for this model (a bigger square matmul would report a higher, unreachable number)."""
    device = torch.device(device)
    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    flop = 2 * m * k * n

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: thread pool, oneDNN kernel selection
        a @ b
    sync()
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            if count % 4 == 0:
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / 3:
                    break
        best = max(best, count * flop / elapsed)
    return best
