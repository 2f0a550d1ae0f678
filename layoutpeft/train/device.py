"""Where and in which precision a run computes: the device, the autocast dtype (and why), CPU threads.

Recorded with each run (train_log.json) and shared by training, evaluation, prediction and the benchmarks.
"""

from __future__ import annotations

import contextlib
import os

import torch

from layoutpeft import hardware
from layoutpeft.errors import LayoutpeftError


def resolve_device(spec: str) -> torch.device:
    """auto: CUDA when one is visible, else CPU. A named cuda that is not visible fails here, before any work."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise LayoutpeftError(
            "train.device is cuda, but no CUDA device is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    return torch.device(spec)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. auto: bf16 on CUDA with bf16 support and on CPUs
    with bf16 matrix units (avx512_bf16 or amx_bf16 in /proc/cpuinfo, and a oneDNN build that uses
    them); fp32 elsewhere, where bf16 is emulated and slower. `precision_path` says which applied."""
    if precision == "auto":
        precision = "bf16" if precision_path(device).startswith("bf16") else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_path(device: torch.device) -> str:
    """What `precision: auto` chooses on `device`, and why (recorded with each run)."""
    if device.type == "cuda":
        return "bf16 (CUDA bf16 support)" if torch.cuda.is_bf16_supported() else "fp32 (CUDA without bf16)"
    if device.type == "cpu":
        flags = hardware.bf16_flags()
        if flags and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return f"bf16 (CPU flags {' '.join(flags)})"
        return "fp32 (CPU without avx512_bf16/amx_bf16)"
    return f"fp32 ({device.type})"


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """A warning when bf16 is set explicitly on a CPU without bf16 units: it still runs (a study
    pinned to bf16 keeps its numerics), but emulated, an order of magnitude slower
    (benchmarks/results/2026-11-28-cpu-avx2-precision.md)."""
    if precision != "bf16" or device.type != "cpu" or precision_path(device).startswith("bf16"):
        return None
    flags = " ".join(hardware.simd_flags()) or "no AVX2/AVX-512"
    return (
        f"train.precision is bf16, but this CPU has no avx512_bf16/amx_bf16 (flags: {flags}): bf16 is "
        "emulated here, about 10x slower than fp32 per step; `precision: auto` trains in fp32 (other numerics "
        "than a bf16 study)"
    )


# Methods whose adapters leave the frozen Linear layers to compute base_layer(x) (PEFT 0.21): under bf16
# autocast that product sees the same bf16 weight values whether the weight is held in fp32 (cast at every
# use: autocast caches casts only of weights that need gradients) or in bf16. DoRA, OFT, BOFT, HRA and
# FourierFT compute with the weight matrix itself (norms, rotations) in its own dtype: they keep fp32.
FROZEN_BF16_METHODS = frozenset({"lora", "adalora", "loha", "lokr", "vera", "ia3", "prompt_tuning", "p_tuning", "head", "bitfit"})


def frozen_weights_dtype(setting: str, variant: dict, device: torch.device, dtype: torch.dtype | None):
    """train.frozen_weights: the dtype to hold the frozen Linear weights in (None: as loaded, fp32).
    bf16 only where the run trains under bf16 autocast (bf16 weights under fp32 compute would not
    match) and the method computes through base_layer(x); auto also needs bf16 units (CUDA, or a CPU
    with avx512_bf16/amx_bf16), since emulated bf16 is slower; bf16 forces it wherever training is bf16."""
    if setting == "fp32" or dtype != torch.bfloat16 or variant["method"] not in FROZEN_BF16_METHODS:
        return None
    if setting == "auto" and not precision_path(device).startswith("bf16"):
        return None
    return torch.bfloat16


def hold_frozen_weights(model, dtype: torch.dtype | None) -> int:
    """Cast the frozen weights and biases of nn.Linear layers to `dtype` once, instead of autocast
    casting them at every forward; returns how many tensors were cast (0 for dtype None)."""
    if dtype is None:
        return 0
    cast = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            for param in (module.weight, module.bias):
                if param is not None and not param.requires_grad and param.dtype != dtype:
                    param.data = param.data.to(dtype)
                    cast += 1
    return cast


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int) -> None:
    """train.threads: torch's intra-op CPU threads (0 keeps torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)
