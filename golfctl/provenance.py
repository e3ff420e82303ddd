"""What made an artifact: package versions, device, git revision. Recorded in every artifact."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

import golfctl
from golfctl import __version__


def git_revision() -> str | None:
    """The checkout's commit (with `-dirty` if modified), or None outside a git checkout."""
    if golfctl.EXPORTED:  # the exported train_gpt.py has no checkout: the revision it came from
        return golfctl.EXPORTED["revision"]
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev or None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def provenance(device: torch.device, world_size: int) -> dict:
    return {
        "golfctl": __version__,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "world_size": world_size,
    }
