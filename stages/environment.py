"""What produced a result: library versions, device and git commit (recorded with every run)."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata

import torch

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "seqeval", "dvc")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe(device: torch.device) -> dict:
    info = {"device": device.type, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "git_commit": git_commit()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    for package in PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info
