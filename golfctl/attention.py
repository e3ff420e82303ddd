"""The causal attention kernel: FlashAttention-3 on Hopper when `flash_attn_interface` is installed,
PyTorch's scaled_dot_product_attention (with grouped-query heads) everywhere else.

The choice is made once per process by `select_attention`, which each stage calls on its device
and prints; a module-level function is a constant to torch.compile, so it costs no guard.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

_fa3: Callable | None = None


def select_attention(device: torch.device) -> str:
    """Use FA3 on a Hopper GPU where it is installed; return the line that says which kernel runs."""
    global _fa3
    _fa3 = _load_fa3(device)
    if _fa3 is not None:
        return "attention: FlashAttention-3 (flash_attn_interface)"
    return "attention: scaled_dot_product_attention"


def _load_fa3(device: torch.device) -> Callable | None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:  # FA3 is Hopper-only
        return None
    try:
        from flash_attn_interface import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of q (B, H, T, D) over k, v (B, K, T, D), K dividing H; returns (B, H, T, D)."""
    if _fa3 is not None and q.is_cuda:
        # FA3 takes (B, T, heads, D) in half precision and handles K < H itself
        half = [t.transpose(1, 2).to(torch.bfloat16 if t.dtype == torch.float32 else t.dtype) for t in (q, k, v)]
        out = _fa3(*half, causal=True)
        out = out[0] if isinstance(out, tuple) else out  # some releases also return the log-sum-exp
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
