"""The numeric precision of forward passes: one rule for training and scoring."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere (bf16 matmuls are far slower on CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
