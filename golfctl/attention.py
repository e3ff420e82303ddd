"""The causal attention kernel: FlashAttention-3 on Hopper when `flash_attn_interface` is installed,
PyTorch's scaled_dot_product_attention (with grouped-query heads) everywhere else.

The choice is made once per process by `select_attention`, which each stage calls on its device
and prints; a module-level function is a constant to torch.compile, so it costs no guard.

Document attention (`document_attention`) keeps each query inside its segment of a packed row:
segments start at every BOS and every `max_len` tokens after it (`segment_starts`), so one row
holds many documents that never see each other. On Hopper with FA3 it runs FA3's varlen kernel;
elsewhere an exact banded form of the block-diagonal causal mask on SDPA. Both take the segments
as a (B, T) tensor computed from the token ids, so every shape is a function of (B, T) alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

_fa3: Callable | None = None
_fa3_varlen: Callable | None = None


def select_attention(device: torch.device) -> str:
    """Use FA3 on a Hopper GPU where it is installed; return the line that says which kernel runs."""
    global _fa3, _fa3_varlen
    _fa3, _fa3_varlen = _load_fa3(device)
    if _fa3 is not None:
        return "attention: FlashAttention-3 (flash_attn_interface)"
    return "attention: scaled_dot_product_attention"


def _load_fa3(device: torch.device) -> tuple[Callable | None, Callable | None]:
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:  # FA3 is Hopper-only
        return None, None
    try:
        from flash_attn_interface import flash_attn_func, flash_attn_varlen_func
    except ImportError:
        return None, None
    return flash_attn_func, flash_attn_varlen_func


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of q (B, H, T, D) over k, v (B, K, T, D), K dividing H; returns (B, H, T, D)."""
    if _fa3 is not None and q.is_cuda:
        # FA3 takes (B, T, heads, D) in half precision and handles K < H itself
        half = [t.transpose(1, 2).to(torch.bfloat16 if t.dtype == torch.float32 else t.dtype) for t in (q, k, v)]
        out = _fa3(*half, causal=True)
        out = out[0] if isinstance(out, tuple) else out  # some releases also return the log-sum-exp
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))


def segment_starts(input_ids: Tensor, bos_id: int, max_len: int) -> Tensor:
    """(B, T) → (B, T): the position where each token's segment starts. A document runs from a BOS
    (or from the row's start) to the next BOS; it is cut every `max_len` tokens from its start."""
    positions = torch.arange(input_ids.size(-1), device=input_ids.device)
    doc_start = torch.where(input_ids == bos_id, positions, 0).cummax(dim=-1).values  # last BOS at or before t
    return doc_start + (positions - doc_start) // max_len * max_len


def document_attention(q: Tensor, k: Tensor, v: Tensor, starts: Tensor, max_len: int) -> Tensor:
    """Causal attention of q (B, H, T, D) over k, v (B, K, T, D) where a query sees only keys of its own
    segment (`starts` (B, T) from `segment_starts`, segments at most `max_len` long); returns (B, H, T, D)."""
    if _fa3_varlen is not None and q.is_cuda:
        return _varlen_attention(q, k, v, starts, max_len)
    return _banded_attention(q, k, v, starts, max_len)


def _banded_attention(q: Tensor, k: Tensor, v: Tensor, starts: Tensor, max_len: int) -> Tensor:
    """SDPA on tiles of L = min(max_len, T) queries. A query's segment starts less than max_len tokens
    back, so tile i needs only the keys of tiles i−1 and i: the mask is exact, and its memory is
    T·2L rather than T²."""
    B, H, T, D = q.shape
    L = min(max_len, T)
    n = -(-T // L)  # tiles
    back = L if n > 1 else 0  # keys each tile reads before its own queries
    pad = n * L - T
    # padded positions: queries past T are dropped; keys before 0 are in segment −1, which matches no query
    starts = F.pad(starts, (back, pad), value=-1)  # (B, back + n·L)
    k, v = (F.pad(t, (0, 0, back, pad)) for t in (k, v))  # (B, K, back + n·L, D)
    q = F.pad(q, (0, 0, 0, pad)).view(B, H, n, L, D).transpose(1, 2)  # (B, n, H, L, D)
    k, v = (t.unfold(2, back + L, L).permute(0, 2, 1, 4, 3) for t in (k, v))  # (B, n, K, back + L, D)
    q_pos = torch.arange(n * L, device=q.device).view(n, L)  # (n, L)
    k_pos = q_pos[:, :1] - back + torch.arange(back + L, device=q.device)  # (n, back + L)
    q_seg = starts[:, back:].view(B, n, L)
    k_seg = starts.unfold(1, back + L, L)  # (B, n, back + L)
    allowed = (k_pos[:, None, :] <= q_pos[:, :, None]) & (k_seg[:, :, None, :] == q_seg[..., None])  # (B, n, L, back+L)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(2), enable_gqa=k.size(2) != H)
    return y.transpose(1, 2).reshape(B, H, n * L, D)[:, :, :T]


def cu_seqlens(starts: Tensor) -> Tensor:
    """FA varlen's segment offsets for the B rows of `starts` (B, T) laid end to end, as int32 of a fixed
    length B·T + 1: the segment starts in order, then B·T in every unused slot (empty segments), so
    the shape never depends on the data and one compiled graph serves every batch."""
    B, T = starts.shape
    flat = torch.arange(B * T, device=starts.device).view(B, T)
    is_start = starts == flat - flat[:, :1]  # a row's first token always starts a segment
    cu = torch.where(is_start, flat, B * T).flatten().sort().values
    return torch.cat((cu, cu.new_full((1,), B * T))).to(torch.int32)


def _varlen_attention(q: Tensor, k: Tensor, v: Tensor, starts: Tensor, max_len: int) -> Tensor:
    """FA3's varlen kernel over the B·T tokens as one packed sequence of segments."""
    B, H, T, D = q.shape
    cu = cu_seqlens(starts)
    packed = [t.transpose(1, 2).reshape(B * T, t.size(1), D) for t in (q, k, v)]  # (B·T, heads, D)
    packed = [t.to(torch.bfloat16) if t.dtype == torch.float32 else t for t in packed]
    out = _fa3_varlen(*packed, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len, max_seqlen_k=max_len,
                      causal=True)
    out = out[0] if isinstance(out, tuple) else out
    return out.view(B, T, H, D).transpose(1, 2)
