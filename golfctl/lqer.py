"""LQER: a low-rank correction of a quantized matrix's error, the 2026-04-27 record's way.

(Zhang et al. 2024, "LQER: Low-Rank Quantization Error Reconstruction for LLMs".) For a matrix W
(rows, cols) and its dequantized quantization Ŵ, the error E = W − Ŵ is approximated by its best
rank-r approximation in Frobenius norm (Eckart–Young): E ≈ A·B with, from the SVD E = U·diag(S)·Vᵀ,

    A = U[:, :r]·diag(S[:r])     # (rows, r)
    B = Vᵀ[:r, :]                # (r, cols)

and the model then uses Ŵ + Â·B̂, with Â and B̂ the factors on integer grids (golfctl.gptq
`quantize_absmax`):

- asymmetric (the record's LQER-asym, its default): A int2 in [-2, 1] with one scale for the whole
  matrix (max|A|/1.5); B int4 in [-8, 7] with one scale per `group` consecutive values of B
  flattened row-major (max/7.5). "Asymmetric" is the integer range, one more level below zero;
- symmetric (what the record falls back to when r·cols is not a multiple of `group`, or asym is
  off): A and B in ±qmax of `factor_bits` bits with one scale per row.

Only the `top_k` matrices with the largest ‖E‖_F (absolute, not relative, among every
GPTQ-quantized matrix, the embedding included) are corrected. The SVD runs in float32 on the CPU,
as the record's: singular vectors are defined up to sign, and the int2 range is not symmetric, so
another SVD routine could store a different (equally good) correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from golfctl.gptq import dequantize_absmax, quantize_absmax

ASYM_A_BITS, ASYM_B_BITS = 2, 4  # the record's LQER-asym factor widths (fixed, whatever factor_bits says)


@dataclass(frozen=True)
class Factor:
    """One factor on its grid: q int8 (rows, cols), scales float16, one per `group` values flattened row-major."""

    q: Tensor
    scales: Tensor
    bits: int
    group: int
    symmetric: bool

    def dequantize(self) -> Tensor:
        return dequantize_absmax(self.q, self.scales)


@dataclass(frozen=True)
class Correction:
    """Â (rows, rank) and B̂ (rank, cols): the matrix's value becomes Ŵ + Â·B̂."""

    a: Factor
    b: Factor

    def matrix(self) -> Tensor:
        """Â·B̂, float32 (rows, cols)."""
        return self.a.dequantize() @ self.b.dequantize()


def largest_errors(error_norms: dict[str, float], top_k: int) -> list[str]:
    """The `top_k` names with the largest ‖W − Ŵ‖_F, largest first; ties keep the given order."""
    return sorted(error_norms, key=lambda name: -error_norms[name])[:top_k]


def low_rank_factors(E: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(A, B) = (U_r·diag(S_r), V_rᵀ) of E's SVD: the best rank-min(rank, min(rows, cols)) approximation A·B."""
    U, S, Vh = torch.linalg.svd(E.detach().float().cpu(), full_matrices=False)
    r = min(rank, S.numel())
    return (U[:, :r] * S[:r]).contiguous(), Vh[:r, :].contiguous()


def lqer_correction(E: Tensor, rank: int, asym: bool = True, group: int = 64, factor_bits: int = 4) -> Correction:
    """The stored correction of error E (rows, cols): asymmetric factors when `asym` and group divides
    B's size, else symmetric `factor_bits` per row (the module docstring gives both)."""
    A, B = low_rank_factors(E, rank)
    if asym and B.numel() % group == 0:
        return Correction(_factor(A, ASYM_A_BITS, A.numel(), symmetric=False),
                          _factor(B, ASYM_B_BITS, group, symmetric=False))
    return Correction(_factor(A, factor_bits, A.shape[1], symmetric=True),
                      _factor(B, factor_bits, B.shape[1], symmetric=True))


def _factor(X: Tensor, bits: int, group: int, symmetric: bool) -> Factor:
    q, scales = quantize_absmax(X, bits, group, symmetric)
    return Factor(q, scales, bits, group, symmetric)
