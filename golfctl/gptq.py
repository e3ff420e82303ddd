"""GPTQ with fixed per-row SDClip scales: the algorithm only, no model walking.

Shapes follow `nn.Linear.weight`: W is (rows, cols) = (out_features, in_features), the layer
computes Y = X·Wᵀ for activations X (N, cols), and H = XᵀX is (cols, cols). Integers are
symmetric in [-qmax, qmax] with qmax = 2**(bits-1) - 1, one float scale per row:
Ŵ[r, c] = q[r, c]·s[r].

Scales (`sdclip_scales`) are chosen before any rounding, s = k·std(row)/qmax (sample std): values beyond
k standard deviations are clipped to ±qmax. The artifact stores them as float16, so they are
returned already rounded through float16; quantising with them and dequantising from the
stored copy then give the same Ŵ.

Round-to-nearest (`quantize_rtn`) rounds each weight on its own. GPTQ (`quantize_gptq`,
Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") minimises the layer's output error ‖(W − Ŵ)Xᵀ‖² instead. It quantises one
column at a time; the rounding error of column j is pushed onto the not-yet-quantised columns
through the inverse Hessian, so later columns compensate for it (optimal brain surgeon, one
weight per row per step, all rows at once since they share H). With U the upper Cholesky
factor of H⁻¹ (H⁻¹ = UᵀU), the update after quantising column j is

    err = (W[:, j] − Ŵ[:, j]) / U[j, j]          # (rows,)
    W[:, j+1:] −= err ⊗ U[j, j+1:]               # (rows, cols − j − 1)

Row j of U is exactly the inverse Hessian of the remaining columns that OBS would recompute
after each step, so the factor is computed once. Updates are applied lazily: within a block
of `block_size` columns they touch only the block; the block's stacked errors then update all
trailing columns in one matmul (same result, memory-bound work cut by ~block_size).
Act-order quantises columns by descending H[j, j] (the most active inputs first, while there
are many columns left to absorb their error) and un-permutes the result.

`quantize_absmax` is the other grid, with no clipping and no Hessian: one float16 scale per group
of values, max|group|/divisor (the 2026-04-27 record's int8 gate rows and LQER factors).

`HessianAccumulator` sums XᵀX over calibration batches; `weight_error` and `output_error` are
the relative errors used to compare the two quantisers. A driver that hooks a model's linear
layers lives elsewhere; everything here is a pure function of its tensor arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor

# float16's positive normal range: the stored scales must survive .half() unchanged.
FP16_MIN_NORMAL = 2.0**-14
FP16_MAX = 65504.0


def qmax(bits: int) -> int:
    """Largest integer magnitude of a symmetric `bits`-bit code: int6 → 31, int8 → 127."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8] (stored as int8), got {bits}")
    return 2 ** (bits - 1) - 1


def sdclip_scales(W: Tensor, bits: int, k: float) -> Tensor:
    """Per-row SDClip scale s = k·std(row)/qmax, float16-exact; shape (rows,). std is the sample
    standard deviation (divisor cols − 1, torch.std's default), as the 2026-04-09 record computes it.

    A constant row (std 0) gets max|row|/qmax, so it maps to ±qmax; an all-zero row gets 1.0.
    Scales are clamped into float16's positive normal range and rounded through float16, so
    `dequantize(q, s)` equals `dequantize(q, s.half().float())` bit for bit.
    """
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (rows, cols), got shape {tuple(W.shape)}")
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    qm = qmax(bits)
    W = W.detach().float()
    std = W.std(dim=1, correction=1)  # (rows,); NaN for one column, which falls to absmax below
    absmax = W.abs().amax(dim=1)  # (rows,)
    scales = torch.where(std > 0, k * std / qm, absmax / qm)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    return scales.clamp(FP16_MIN_NORMAL, FP16_MAX).half().float()


def dequantize(q: Tensor, scales: Tensor) -> Tensor:
    """Ŵ = q·s per row: q (rows, cols) integers, scales (rows,) → float32 (rows, cols)."""
    return q.float() * scales.float()[:, None]


def _round_clip(W: Tensor, scales: Tensor, qm: int) -> Tensor:
    """round(W/s) clamped to ±qmax, as float32; W (rows, n), scales (rows,).

    The one rounding rule shared by RTN and GPTQ, so that GPTQ with no error to feed back
    gives RTN's integers bit for bit.
    """
    return torch.round(W / scales[:, None]).clamp_(-qm, qm)


def quantize_rtn(W: Tensor, scales: Tensor, bits: int) -> Tensor:
    """Round-to-nearest: int8 (rows, cols) q = clamp(round(W/s), ±qmax); the clamp is the clip."""
    _check_scales(W, scales)
    W = W.detach().float()
    return _round_clip(W, scales.detach().float().to(W.device), qmax(bits)).to(torch.int8)


def quantize_absmax(X: Tensor, bits: int, group: int, symmetric: bool = True) -> tuple[Tensor, Tensor]:
    """Absmax grid: (q int8 of X's shape, scales float16 (X.numel() // group,)), one scale per `group`
    consecutive values of X flattened row-major (group = row length: one scale per row).

    symmetric: q in [-qmax, qmax], scale = max|group|/qmax. Otherwise the full two's-complement range
    [-qmax-1, qmax] with scale = max|group|/(qmax + 1/2), so ±max lands on the half-way points ±(qmax + ½)
    and rounds to the range's ends (int2: [-2, 1] at max/1.5; int4: [-8, 7] at max/7.5). As the record
    computes it: max|group| floored at 1e-10, divided in float32, rounded to float16, and q =
    clamp(round(X / scale)) with that float16 scale. A scale that rounds to 0 in float16 (a group
    of zeros) gets q = 0, so it dequantizes to 0 as the record's does.
    """
    qm = qmax(bits)
    X = X.detach().float()
    if group < 1 or X.numel() % group:
        raise ValueError(f"group {group} does not divide the {X.numel()} values of shape {tuple(X.shape)}")
    grouped = X.reshape(-1, group)  # (groups, group)
    divisor = qm if symmetric else qm + 0.5
    scales = (grouped.abs().amax(dim=1).clamp_min(1e-10) / divisor).half()  # (groups,)
    s = scales.float()[:, None]
    q = torch.where(s > 0, torch.round(grouped / s), 0.0).clamp_(-qm if symmetric else -qm - 1, qm)
    return q.to(torch.int8).reshape(X.shape), scales


def dequantize_absmax(q: Tensor, scales: Tensor) -> Tensor:
    """float32 of q's shape: q · (its group's scale); the group size is q.numel() // len(scales)."""
    return (q.reshape(scales.numel(), -1).float() * scales.float()[:, None]).reshape(q.shape)


class HessianAccumulator:
    """Running H = Σ xᵀx over calibration activations of one linear layer's input.

    `add(x)` takes x of shape (..., cols) (e.g. (B, T, cols)); leading dimensions are
    flattened into samples. H is unnormalised: GPTQ's result does not depend on H's scale
    (dampening is relative to mean(diag H)), and neither does `output_error`. `count` is the
    number of samples added, for callers that want the mean XᵀX/N.
    """

    def __init__(self, cols: int | None = None, device: torch.device | str | None = None):
        self.cols = cols
        self.count = 0
        self._H: Tensor | None = None
        if cols is not None:
            self._H = torch.zeros(cols, cols, dtype=torch.float32, device=device)

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()  # (N, cols)
        if self._H is None:
            self.cols = x.shape[1]
            self._H = torch.zeros(self.cols, self.cols, dtype=torch.float32, device=x.device)
        if x.shape[1] != self.cols:
            raise ValueError(f"activations have {x.shape[1]} columns, the accumulator {self.cols}")
        self._H.addmm_(x.T.to(self._H.device), x.to(self._H.device))
        self.count += x.shape[0]

    @property
    def hessian(self) -> Tensor:
        """H = Σ xᵀx, float32 (cols, cols); the accumulator's own tensor, not a copy."""
        if self._H is None:
            raise ValueError("no activations added yet")
        return self._H


class NotPositiveDefinite(ValueError):
    """The dampened Hessian (or its inverse, in float32) has no Cholesky factor: more damping may help."""


@torch.no_grad()
def quantize_gptq(
    W: Tensor,
    H: Tensor,
    scales: Tensor,
    bits: int,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
) -> Tensor:
    """GPTQ with fixed per-row scales: int8 q (rows, cols) minimising ‖(W − q·s)Xᵀ‖ for H = XᵀX.

    W (rows, cols) and H (cols, cols) are not modified. Dead inputs (H[j, j] == 0) never reach
    the output: their weights are set to 0 and H[j, j] to 1 so the Cholesky factor exists.
    `damp`·mean(diag H) is added to the diagonal. The math is float32 on W's device, and the
    result is deterministic for given inputs on a given device.
    """
    _check_scales(W, scales)
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}) for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    qm = qmax(bits)
    device = W.device
    W = W.detach().float().clone()  # (rows, cols): updated in place as errors are fed back
    H = H.detach().to(device=device, dtype=torch.float32).clone()  # (cols, cols)
    s = scales.detach().float().to(device)  # (rows,)

    dead = torch.diagonal(H) == 0  # (cols,)
    torch.diagonal(H)[dead] = 1.0
    W[:, dead] = 0.0

    perm = None
    if act_order:
        # stable: equal diagonals (e.g. H = I) keep their order, so runs are reproducible
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)  # (cols,)
        W = W[:, perm]
        H = H[perm][:, perm]

    # The mean in float64 so that it does not depend on the summation order of the
    # (possibly permuted) diagonal.
    diag = torch.diagonal(H)
    diag += damp * diag.double().mean().float()
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise NotPositiveDefinite(f"H + {damp}·mean(diag H)·I is not positive definite; raise damp")
    Hinv = torch.cholesky_inverse(L)  # (cols, cols) = H⁻¹
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)  # H⁻¹ = UᵀU, U upper triangular
    if int(info) != 0:
        raise NotPositiveDefinite(f"H⁻¹ lost positive definiteness in float32; raise damp (now {damp})")

    Q = torch.zeros(rows, cols, dtype=torch.float32, device=device)
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        W1 = W[:, b0:b1]  # (rows, B) view: updates land in W
        U1 = U[b0:b1, b0:b1]  # (B, B)
        Err1 = torch.zeros(rows, b1 - b0, dtype=torch.float32, device=device)  # scaled errors
        for j in range(b1 - b0):
            w = W1[:, j]  # (rows,)
            q = _round_clip(w[:, None], s, qm)[:, 0]  # (rows,)
            Q[:, b0 + j] = q
            err = (w - q * s) / U1[j, j]  # (rows,)
            W1[:, j + 1:].addr_(err, U1[j, j + 1:], alpha=-1.0)  # within the block, now
            Err1[:, j] = err
        if b1 < cols:
            W[:, b1:].addmm_(Err1, U[b0:b1, b1:], alpha=-1.0)  # trailing columns, once per block

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.int8)


def weight_error(W: Tensor, W_hat: Tensor) -> float:
    """Relative weight error ‖W − Ŵ‖_F / ‖W‖_F, in float64."""
    W, W_hat = W.detach().double(), W_hat.detach().double().to(W.device)
    return float(torch.linalg.norm(W - W_hat) / torch.linalg.norm(W))


def output_error(W: Tensor, W_hat: Tensor, H: Tensor) -> float:
    """Relative output error sqrt(tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ)) = ‖(W − Ŵ)Xᵀ‖_F / ‖WXᵀ‖_F for H = XᵀX."""
    W = W.detach().double()
    D = W - W_hat.detach().double().to(W.device)  # (rows, cols)
    H = H.detach().double().to(W.device)  # (cols, cols)
    return float(torch.sqrt(((D @ H) * D).sum() / ((W @ H) * W).sum()))


def _check_scales(W: Tensor, scales: Tensor) -> None:
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (rows, cols), got shape {tuple(W.shape)}")
    if scales.shape != (W.shape[0],):
        raise ValueError(f"scales must have shape ({W.shape[0]},), got {tuple(scales.shape)}")
