"""What differs between devices beyond kernels and precision: waiting for queued work, and peak memory."""

from __future__ import annotations

import resource
import sys

import torch


def synchronize(device: torch.device) -> None:
    """Wait until the device has run everything queued (CUDA runs asynchronously; CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: tensors allocated on a GPU, or this process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
