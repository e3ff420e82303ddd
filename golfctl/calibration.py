"""GPTQ calibration: Hessians H = Σ xᵀx of the input of every quantized parameter (its `Role`).

Forward hooks see every application of a block, so a looped block's Hessian sums over all its
applications at the evaluation depth. The tied embedding is quantized as the output head, so
its Hessian is that of the final normed hidden states feeding the head. Calibration reads
training tokens only, never validation tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from golfctl.dataset import Split
from golfctl.gptq import HessianAccumulator
from golfctl.loader import TokenStream
from golfctl.model import GPT, ROLES, parameter_roles


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
    """Hessian per quantized parameter name (`Role.quantized`)."""
    accumulators: dict[str, HessianAccumulator] = {}
    handles = []

    def record(name: str, x: torch.Tensor) -> None:
        accumulators.setdefault(name, HessianAccumulator()).add(x.detach().float())

    for name, role in parameter_roles(model).items():
        if role == ROLES["embed"]:  # used as the head: its input is the final norm's output
            handles.append(model.final_norm.register_forward_hook(lambda m, args, out, name=name: record(name, out)))
        elif role.quantized:  # a Linear weight: its input is the Linear's input
            linear = model.get_submodule(name.removesuffix(".weight"))
            handles.append(linear.register_forward_pre_hook(lambda m, args, name=name: record(name, args[0])))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for batch in batches:
            model(batch.to(device), loops=loops, documents=False)  # as the 04-27 record calibrates
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: acc.hessian for name, acc in accumulators.items()}
