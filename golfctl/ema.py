"""Exponential moving average of all weights, kept in float32 whatever the compute dtype."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module):
        self.names = [name for name, _ in model.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """shadow ← decay·shadow + (1 − decay)·weights; decay 0 copies the weights (EMA not started)."""
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(self.shadow, params, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(tensors))
        if missing:
            raise ValueError(f"EMA state lacks {missing}")
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(tensors[name])
