"""GPTQ calibration: Hessians H = Σ xᵀx of the inputs of every block matrix and of the tied head.

Forward hooks see every application of a block, so a looped block's Hessian sums over all its
applications at the evaluation depth. The tied embedding is quantized as the output head, so
its Hessian is that of the final normed hidden states feeding the head. Calibration reads
training tokens only, never validation tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from golfctl.dataset import Split
from golfctl.gptq import HessianAccumulator
from golfctl.loader import TokenStream
from golfctl.model import GPT

EMBEDDING = "tok_emb.weight"


def calibration_batches(split: Split, batches: int, batch_seqs: int, seq_len: int) -> list[torch.Tensor]:
    """`batches` input batches (batch_seqs, seq_len), taken at evenly spaced places of the training stream."""
    stream = TokenStream(split)
    count = batches * batch_seqs
    usable = stream.size - seq_len
    if usable < count:
        raise ValueError(f"the training split ({stream.size:,} tokens) is too short for {count} calibration sequences")
    starts = np.linspace(0, usable, num=count, dtype=np.int64)
    seqs = torch.from_numpy(np.stack([stream.read(int(s), seq_len) for s in starts]))
    return list(seqs.split(batch_seqs))


@torch.no_grad()
def collect_hessians(model: GPT, batches: list[torch.Tensor], loops: int) -> dict[str, torch.Tensor]:
    """Hessian per quantized weight name: every block nn.Linear weight and the tied embedding."""
    accumulators: dict[str, HessianAccumulator] = {}
    handles = []

    def record(name: str, x: torch.Tensor) -> None:
        accumulators.setdefault(name, HessianAccumulator()).add(x.detach().float())

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("blocks."):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=f"{name}.weight": record(name, args[0])))
    handles.append(model.final_norm.register_forward_hook(lambda m, args, out: record(EMBEDDING, out)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for batch in batches:
            model(batch.to(device), loops=loops)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: acc.hessian for name, acc in accumulators.items()}
