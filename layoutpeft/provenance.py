"""What produced a result: library versions, device and git commit (recorded with every run)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

import torch

from layoutpeft.hardware import simd_flags

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "seqeval", "dvc")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# The code that decides a result. params.yaml is left out on purpose: `dvc exp run -S` always
# edits it, and its values are recorded with every run anyway.
CODE_PATHS = ("stages", "dvc.yaml", "benchmarks")


def code_modified() -> bool | None:
    """True when the code differs from the recorded commit (the commit alone would then mislead)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> dict:
    info = {
        "device": device.type,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_flags": simd_flags(),  # what decides CPU matmul speed (bf16 units, AMX): a CPU figure needs them
        "git_commit": git_commit(),
        "code_modified": code_modified(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = info["cpu_model"]
    for package in PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info
