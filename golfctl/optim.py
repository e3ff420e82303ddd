"""Optimisers and schedules: Muon for block matrices, AdamW for the rest, one LR multiplier.

Three parameter groups, each with its own optimiser (`build_optimizers`); which parameter goes
into which is its `Role.optimizer` (golfctl.model.parameter_roles decides):

- ``embed``: AdamW at `embed_lr`, decay `embed_weight_decay`;
- ``matrix``: Muon at `matrix_lr` (it orthogonalises 2-D updates), decay `muon_weight_decay`,
  Newton–Schulz coefficients `muon_ns_coeffs`, momentum in bfloat16 with `muon_bf16_momentum`;
- ``scalar``: AdamW at `scalar_lr`, decay `scalar_weight_decay`.

Checkpoint state is flat named tensors (`Optimizers.state_tensors`), so it goes into a
safetensors file next to the weights with no pickle. Keys, all under `STATE_PREFIX`:

- ``optim.<group>.<param name>.<state key>``: per-parameter state (AdamW `step`, `exp_avg`,
  `exp_avg_sq`; Muon `momentum_buffer`), on CPU, in the state's own dtype;
- ``optim.<group>.lr`` (and ``optim.matrix.momentum``): the scheduled hyper-parameters of
  the last `set_schedule`, as 0-d float64 tensors, so a restored optimiser steps exactly as
  the saved one would have.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from golfctl.config import TrainConfig
from golfctl.distributed import all_reduce_sum_, rank_and_world_size

GROUPS = ("embed", "matrix", "scalar")
STATE_PREFIX = "optim."
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton–Schulz (a, b, c), the same every iteration
# Polar Express (Amsel et al. 2025, "The Polar Express: Optimal Matrix Sign Methods and Their Application
# to the Muon Algorithm"): one (a, b, c) per iteration, each the minimax-optimal odd quintic for the
# singular-value interval the previous ones leave, so 5 iterations land closer to 1 than the fixed quintic.
# The 2026-04-27 record's values (its train_gpt.py lines 1720-1726), in iteration order.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
_ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")
_MUON_STATE = ("momentum_buffer",)


def ns_coefficients(schedule: str, steps: int) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each of `steps` Newton–Schulz iterations: "quintic" repeats NS_COEFFS;
    "polar_express" takes POLAR_EXPRESS_COEFFS in order, which has tuples for at most 5 steps."""
    if schedule == "quintic":
        return (NS_COEFFS,) * steps
    if schedule == "polar_express" and steps <= len(POLAR_EXPRESS_COEFFS):
        return POLAR_EXPRESS_COEFFS[:steps]
    raise ValueError(f"no Newton–Schulz coefficients {schedule!r} for {steps} steps "
                     f"(quintic: any count; polar_express: at most {len(POLAR_EXPRESS_COEFFS)})")


def newton_schulz5(G: Tensor, steps: int, schedule: str = "quintic") -> Tensor:
    """Approximately orthogonalise each matrix of G (..., rows, cols): U·Vᵀ of its SVD, singular
    values pushed towards 1 (into ~[0.7, 1.2] by the fixed quintic).

    Iteration i computes X ← aᵢX + (bᵢA + cᵢA²)X with A = XXᵀ, i.e. it maps every singular value
    σ to aᵢσ + bᵢσ³ + cᵢσ⁵ (`ns_coefficients(schedule, steps)` gives the tuples). The fixed quintic
    maximises the slope at zero, so small singular values grow fast; the price is that they
    oscillate around 1 instead of converging. Each matrix
    is first scaled by its Frobenius norm so that every singular value starts ≤ 1. Tall matrices
    are transposed so that A is the smaller (min(rows, cols))² Gram matrix. A stack of matrices of
    one shape is one batched computation (and, compiled, one graph).

    Computes in bfloat16 on CUDA (tensor cores; NS tolerates the precision) and in float32
    elsewhere, where CPU bfloat16 matmuls are ~90x slower. Returns that dtype.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz5 takes matrices, got shape {tuple(G.shape)}")
    coefficients = ns_coefficients(schedule, steps)
    X = G.to(_ns_dtype(G.device))
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # eps: a zero gradient gives a zero update, not NaN
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    for a, b, c in coefficients:
        A = X @ X.mT  # (..., r, r), r = min(rows, cols)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def muon_update(direction: Tensor, steps: int, row_norm: bool, schedule: str = "quintic") -> Tensor:
    """The Muon step direction (before the learning rate) for momentum directions (..., rows, cols).

    With `row_norm` (MuonEq-R, in the 2026-04-09 record's order), every row of the direction is
    first scaled to unit L2 norm (an all-zero row stays zero), so no row dominates the
    orthogonalisation (in the direction's dtype, as the record divides). Then Newton–Schulz with
    the `schedule`'s coefficients, and the result times max(1, rows/cols)**0.5, so that
    entries have RMS ≈ 1/sqrt(cols) whatever the aspect ratio (an orthogonal tall matrix has
    smaller entries, RMS 1/sqrt(rows)).
    """
    if row_norm:
        direction = direction / direction.float().norm(dim=-1, keepdim=True).clamp_min(1e-7).to(direction.dtype)
    update = newton_schulz5(direction, steps, schedule)
    rows, cols = update.shape[-2:]
    return update * max(1.0, rows / cols) ** 0.5


class Muon(torch.optim.Optimizer):
    """SGD momentum (Nesterov by default) whose step is orthogonalised by Newton–Schulz; 2-D params only.

    Per parameter: buf ← momentum·buf + g; direction = g + momentum·buf (Nesterov) or buf;
    p ← p·(1 − lr·weight_decay) − lr·muon_update(direction) (decoupled decay).

    Distributed: gradients must already be averaged over ranks, so every rank holds the same
    gradients and updates every momentum buffer (cheap, and it keeps the full state on rank 0
    for checkpoints). Only the expensive orthogonalisation is split: parameter i is done on rank
    i % world_size into its slice of one flat buffer, zeros elsewhere, and one all-reduce (sum)
    hands every rank all updates, so all ranks apply identical steps. A rank orthogonalises its
    parameters of one shape as one stack, through `orthogonalize` (`muon_update`, or that
    function compiled: then one graph per shape).

    With `momentum_dtype` (bfloat16 in the 2026-04-27 record, which casts each gradient to bfloat16
    before its momentum update), the gradient is rounded to that dtype first and the buffer and the
    direction are kept in it; None keeps the gradient's own dtype.

    The caller warms up momentum by setting group["momentum"] (see `muon_momentum`).
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True,
                 backend_steps: int = 5, row_norm: bool = False, weight_decay: float = 0.0,
                 ns_schedule: str = "quintic", momentum_dtype: torch.dtype | None = None,
                 orthogonalize: Callable[[Tensor, int, bool, str], Tensor] = muon_update):
        if lr < 0 or not 0.0 <= momentum < 1.0 or backend_steps < 1 or weight_decay < 0:
            raise ValueError(f"bad Muon settings: lr={lr}, momentum={momentum}, "
                             f"backend_steps={backend_steps}, weight_decay={weight_decay}")
        ns_coefficients(ns_schedule, backend_steps)  # refuses an unknown schedule or too many steps now
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, backend_steps=backend_steps,
                        row_norm=row_norm, weight_decay=weight_decay, ns_schedule=ns_schedule)
        super().__init__(params, defaults)
        self.momentum_dtype = momentum_dtype
        self.orthogonalize = orthogonalize
        shapes = [tuple(p.shape) for g in self.param_groups for p in g["params"] if p.ndim != 2]
        if shapes:
            raise ValueError(f"Muon takes 2-D parameters only, got shapes {shapes}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world_size = rank_and_world_size()
        for group in self.param_groups:
            self._step_group(group, rank, world_size)
        return loss

    def _step_group(self, group: dict, rank: int, world_size: int) -> None:
        # Parameters without a gradient are left alone; all ranks agree on which those are.
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                           dtype=_ns_dtype(params[0].device))
        offsets = list(itertools.accumulate((p.numel() for p in params), initial=0))
        mine: dict[tuple[int, ...], list[int]] = {}  # shape → this rank's parameter indices
        for i, p in enumerate(params):
            self._update_momentum(p, group["momentum"])
            if i % world_size == rank:
                mine.setdefault(tuple(p.shape), []).append(i)
        for indices in mine.values():
            directions = torch.stack([self._direction(params[i], group) for i in indices])  # (n, rows, cols)
            updates = self.orthogonalize(directions, group["backend_steps"], group["row_norm"], group["ns_schedule"])
            for i, update in zip(indices, updates):
                flat[offsets[i]:offsets[i + 1]] = update.flatten()
        all_reduce_sum_(flat)  # exact: each slice is non-zero on one rank only
        lr, decay = group["lr"], group["weight_decay"]
        for i, p in enumerate(params):
            if decay:
                p.mul_(1.0 - lr * decay)
            p.add_(flat[offsets[i]:offsets[i + 1]].view_as(p).to(p.dtype), alpha=-lr)

    def _direction(self, p: Tensor, group: dict) -> Tensor:
        buf = self.state[p]["momentum_buffer"]
        return self._grad(p).add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    def _update_momentum(self, p: Tensor, momentum: float) -> None:
        state = self.state[p]
        grad = self._grad(p)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        state["momentum_buffer"].mul_(momentum).add_(grad)

    def _grad(self, p: Tensor) -> Tensor:
        return p.grad if self.momentum_dtype is None else p.grad.to(self.momentum_dtype)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts loaded state to each parameter's dtype; a bfloat16 buffer goes back to bfloat16
        (exactly: it was bfloat16 when saved), so a resumed run steps as an uninterrupted one."""
        super().load_state_dict(state_dict)
        if self.momentum_dtype is not None:
            for state in self.state.values():
                state["momentum_buffer"] = state["momentum_buffer"].to(self.momentum_dtype)


class Optimizers:
    """The per-group optimisers driven as one: schedule, clip, step, checkpoint state."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer],
                 named_params: dict[str, list[tuple[str, nn.Parameter]]], cfg: TrainConfig):
        self.optimizers = optimizers  # group name -> optimiser; empty groups have none
        self.named_params = named_params  # group name -> (name, param), in optimiser order
        self.cfg = cfg

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def set_schedule(self, lr_mult: float, step: int) -> None:
        """Every group's lr = its base lr × lr_mult; Muon momentum from its warm-up at `step`."""
        momentum = muon_momentum(step, self.cfg)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_mult
                if isinstance(opt, Muon):
                    group["momentum"] = momentum

    def clip_grad_norm_(self, max_norm: float) -> Tensor | None:
        """Clip the global gradient norm over all groups; returns the norm before clipping (None if off)."""
        if max_norm <= 0:
            return None
        params = [p for named in self.named_params.values() for _, p in named]
        return nn.utils.clip_grad_norm_(params, max_norm)

    def state_tensors(self) -> dict[str, Tensor]:
        """All optimiser state as named CPU tensors (layout in the module docstring)."""
        out: dict[str, Tensor] = {}
        for group_name, opt in self.optimizers.items():
            prefix = f"{STATE_PREFIX}{group_name}."
            for hyper in _scheduled_keys(opt):
                out[prefix + hyper] = torch.tensor(opt.param_groups[0][hyper], dtype=torch.float64)
            for name, p in self.named_params[group_name]:
                for key, value in opt.state.get(p, {}).items():
                    out[f"{prefix}{name}.{key}"] = value.detach().to("cpu", copy=True)
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what `state_tensors` returned, replacing all current state.

        Raises ValueError naming every missing, unexpected or mis-shaped key. A parameter may
        have no state at all (saved before its first step), but not part of it.
        """
        problems = self._state_problems(tensors)
        if problems:
            raise ValueError("optimizer state does not fit these optimizers: " + "; ".join(problems))
        for group_name, opt in self.optimizers.items():
            prefix = f"{STATE_PREFIX}{group_name}."
            keys = _state_keys(opt)
            state = {}
            for i, (name, _) in enumerate(self.named_params[group_name]):
                if f"{prefix}{name}.{keys[0]}" in tensors:
                    # clone: torch keeps same-device tensors as they are, and steps update them in place
                    state[i] = {k: tensors[f"{prefix}{name}.{k}"].clone() for k in keys}
            saved = opt.state_dict()
            for hyper in _scheduled_keys(opt):
                saved["param_groups"][0][hyper] = tensors[prefix + hyper].item()
            opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})

    def _state_problems(self, tensors: dict[str, Tensor]) -> list[str]:
        missing, shapes = [], []
        unexpected = set(tensors)
        for group_name, opt in self.optimizers.items():
            prefix = f"{STATE_PREFIX}{group_name}."
            for hyper in _scheduled_keys(opt):
                key = prefix + hyper
                if key in unexpected:
                    unexpected.discard(key)
                else:
                    missing.append(key)
            for name, p in self.named_params[group_name]:
                keys = {k: f"{prefix}{name}.{k}" for k in _state_keys(opt)}
                present = {k: full for k, full in keys.items() if full in tensors}
                unexpected -= set(present.values())
                if present:
                    missing += [full for full in keys.values() if full not in tensors]
                shapes += [f"{full} has shape {tuple(tensors[full].shape)}, parameter {tuple(p.shape)}"
                           for k, full in present.items() if k != "step" and tensors[full].shape != p.shape]
        problems = [f"missing {missing}"] if missing else []
        problems += [f"unexpected {sorted(unexpected)}"] if unexpected else []
        return problems + shapes


def build_optimizers(named_groups: dict[str, list[tuple[str, nn.Parameter]]], cfg: TrainConfig,
                     device: torch.device | str,
                     orthogonalize: Callable[[Tensor, int, bool, str], Tensor] = muon_update) -> Optimizers:
    """AdamW for "embed" and "scalar", Muon (orthogonalising with `orthogonalize`, which may be
    `muon_update` compiled) for "matrix"; a group that is absent or empty gets none."""
    unknown = sorted(set(named_groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown parameter groups {unknown}; expected {list(GROUPS)}")
    fused = torch.device(device).type == "cuda"  # fused AdamW kernels exist for CUDA only
    adam = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    named_params: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for group_name in GROUPS:
        named = list(named_groups.get(group_name, []))
        if not named:
            continue
        names = [name for name, _ in named]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in group {group_name!r}")
        params = [p for _, p in named]
        if group_name == "matrix":
            opt = Muon(params, lr=cfg.matrix_lr, momentum=muon_momentum(0, cfg),
                       backend_steps=cfg.muon_backend_steps, row_norm=cfg.muon_row_norm,
                       weight_decay=cfg.muon_weight_decay, ns_schedule=cfg.muon_ns_coeffs,
                       momentum_dtype=torch.bfloat16 if cfg.muon_bf16_momentum else None,
                       orthogonalize=orthogonalize)
        else:
            lr, decay = ((cfg.embed_lr, cfg.embed_weight_decay) if group_name == "embed"
                         else (cfg.scalar_lr, cfg.scalar_weight_decay))
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=decay, **adam)
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]  # set_schedule scales this
        optimizers[group_name] = opt
        named_params[group_name] = named
    return Optimizers(optimizers, named_params, cfg)


def lr_multiplier(step: int, progress: float, cfg: TrainConfig) -> float:
    """Factor on every group's base learning rate.

    `progress` in [0, 1] is the fraction of the run done. The caller passes
    max(step / iterations, elapsed / train_seconds) (the second term only under a wall-clock
    cap), so under a cap the warm-down starts and ends by time, never by the nominal iteration
    count that the cap stops short of.

    - warm-up: (step + 1) / warmup_steps for step < warmup_steps, so step 0 already moves;
    - then 1.0;
    - warm-down: once progress > 1 − warmdown_frac, linear to min_lr_frac at progress 1; with
      min_lr_clamp, linear to 0 floored at min_lr_frac (the 04-27 record's `lr_mul`).

    The two ramps combine by min, for runs so short that they overlap; min_lr_frac floors only
    the warm-down.
    """
    warmup = (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else 1.0
    progress = min(max(progress, 0.0), 1.0)
    start = 1.0 - cfg.warmdown_frac
    if progress <= start:
        return warmup
    left = (1.0 - progress) / cfg.warmdown_frac  # in [0, 1); warmdown_frac > 0 here; exactly 0 at the end
    if cfg.min_lr_clamp:
        return min(warmup, max(left, cfg.min_lr_frac))
    return min(warmup, cfg.min_lr_frac + left * (1.0 - cfg.min_lr_frac))


def muon_momentum(step: int, cfg: TrainConfig) -> float:
    """Linear from muon_momentum_warmup_start at step 0 to muon_momentum at muon_momentum_warmup_steps."""
    if cfg.muon_momentum_warmup_steps == 0:
        return cfg.muon_momentum
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1.0 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def _scheduled_keys(opt: torch.optim.Optimizer) -> tuple[str, ...]:
    return ("lr", "momentum") if isinstance(opt, Muon) else ("lr",)


def _state_keys(opt: torch.optim.Optimizer) -> tuple[str, ...]:
    return _MUON_STATE if isinstance(opt, Muon) else _ADAM_STATE


def _ns_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32
