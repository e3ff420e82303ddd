"""One configurable GPT for Parameter Golf, built from a `ModelConfig`.

Shape names: B batch, T sequence, H query heads, K key/value heads, D head_dim, d model_dim.

The network runs a *virtual layer sequence* of physical block indices (`layer_sequence`), so a
block can be applied several times (depth recurrence) without adding parameters. U-Net skips
connect the first half of that sequence to the second half in reverse order (`GPT.forward`).
Parameter shapes follow from the architecture alone, never from evaluation settings, so any
state dict loads into a model built with any `eval_loops`. Parameters stay float32; on CUDA the
caller wraps the forward in `torch.autocast(bfloat16)`.

With `doc_max_len`, a row is a packed stream of documents: attention stays inside each segment
(cut at BOS and every doc_max_len tokens, `golfctl.attention.segment_starts`, computed here from
the token ids), while rotary positions count along the whole row. The 2026-04-27 record's pieces
(SmearGate, the sparse attention gate, the two-lane decoder) are off unless their keys are set.

`parameter_roles` is the one place that decides what a parameter is (its `Role`): its optimizer
group, whether the quantizer puts it on an integer grid, its quantization report group and its
test-time-training parameter set.

`GPT.forward(lora=…)` adds low-rank adapters (golfctl/lora.py) for phased test-time training: per
application of a block, deltas on q, k, v, the attention output and the MLP output, and one on the
head's logits, where the 2026-04-27 record's `forward_ttt` adds them. Without `lora` nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from golfctl.attention import causal_attention, document_attention, segment_starts
from golfctl.config import ModelConfig
from golfctl.shards import BOS_ID


def layer_sequence(cfg: ModelConfig, loops: int) -> list[int]:
    """Physical block indices in the order the forward applies them.

    loop_start == -1 repeats the whole stack `loops` times; otherwise only blocks
    loop_start..loop_end (inclusive) repeat, between an unlooped prefix and suffix.
    """
    if loops < 1:
        raise ValueError(f"loops must be >= 1, got {loops}")
    if cfg.loop_start == -1:
        return list(range(cfg.num_layers)) * loops
    looped = list(range(cfg.loop_start, cfg.loop_end + 1))
    return list(range(cfg.loop_start)) + looped * loops + list(range(cfg.loop_end + 1, cfg.num_layers))


def skip_rows(cfg: ModelConfig) -> int:
    """Rows of `skip_weights`: the U-Net pairs at the training depth (num_loops is architecture;
    eval_loops is not, so it never changes a shape). Fewer loops need fewer pairs."""
    if not cfg.unet_skips:
        return 0
    return len(layer_sequence(cfg, cfg.num_loops)) // 2


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dim, without a learned weight."""
    return F.rms_norm(x, (x.size(-1),))


class FinalNorm(nn.Module):
    """The norm before the tied head, as a module so calibration can hook the head's input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm(x)


class Rotary(nn.Module):
    """RoPE angles for the first `dims` dims of each head, cached per (seq_len, device).

    The cache is a plain dict, not a buffer, so it never reaches a checkpoint. Under
    torch.compile the angles are computed inside the graph instead: that costs nothing
    next to the matmuls, and a graph run under inference mode would otherwise fill the
    cache with inference tensors, which a later training step cannot save for backward.
    """

    def __init__(self, dims: int, base: float):
        super().__init__()
        self.dims = dims
        self.base = base
        self._cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            return self._angles(seq_len, device)
        key = (seq_len, device)
        if key not in self._cache:
            with torch.inference_mode(False):  # an entry made during eval must still serve training
                self._cache[key] = self._angles(seq_len, device)
        return self._cache[key]

    def _angles(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # one frequency per rotated pair: base^(-2i/dims), i = 0..dims/2-1
        inv_freq = self.base ** (-torch.arange(0, self.dims, 2, dtype=torch.float32, device=device) / self.dims)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)  # (T, dims/2)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Rotate the first 2·cos.size(-1) dims of x (B, H, T, D) in half-split pairs; the rest pass through.

    Pair (x1, x2) at position t turns by +θ_t: (x1·cos − x2·sin, x1·sin + x2·cos); with `reverse`
    by −θ_t: (x1·cos + x2·sin, −x1·sin + x2·cos), the 2026-04-09 record's convention. The two
    give different functions of the same weights (q·k then depends on −(m−n) instead of m−n)."""
    half = cos.size(-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if reverse:
        sin = -sin
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    rotated = (x1 * cos - x2 * sin, x1 * sin + x2 * cos)
    return torch.cat((*rotated, rest) if rest.size(-1) else rotated, dim=-1)


def remove_value_direction(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: each head's output y (B, H, T, D) minus its component along its own kv head's unit
    value vector at the same position (v: (B, K, T, D); query head h reads kv head h // (H/K)).
    The result is orthogonal to that value vector."""
    B, H, T, D = y.shape
    K = v.size(1)
    unit = F.normalize(v, dim=-1).unsqueeze(2)  # (B, K, 1, T, D)
    grouped = y.view(B, K, H // K, T, D)  # (B, K, group, T, D)
    return (grouped - (grouped * unit).sum(-1, keepdim=True) * unit).view(B, H, T, D).to(y.dtype)


def init_matrix(linear: nn.Linear, cfg: ModelConfig) -> None:
    """With `ortho_init`, a (rows, cols) weight with both sides ≥ 64 starts orthogonal (gain 1:
    WᵀW = I on the smaller side); otherwise it keeps nn.Linear's default init."""
    if cfg.ortho_init and min(linear.weight.shape) >= 64:
        nn.init.orthogonal_(linear.weight, gain=1.0)


Adapter = Callable[[torch.Tensor], torch.Tensor]  # (B, T, in) → (B, T, out), a delta added to a projection


@dataclass(frozen=True)
class SlotAdapters:
    """The adapters of one block application; None: no adapter there. Each reads the input of the
    projection it adapts, except `o`, which reads the attention's input (as the record's o-LoRA does),
    and `mlp`, which reads the MLP's input and adds to its output (before `mlp_scale`)."""

    q: Adapter | None = None
    k: Adapter | None = None
    v: Adapter | None = None
    o: Adapter | None = None
    mlp: Adapter | None = None


NO_ADAPTERS = SlotAdapters()


class Adapters(Protocol):
    """What `GPT.forward(lora=…)` takes: `slot(i)`, the adapters of application i of the layer sequence,
    and `head(h)`, a (B, T, V) delta on the logits before the softcap, from the final-normed hidden h."""

    def slot(self, i: int) -> SlotAdapters: ...

    def head(self, h: torch.Tensor) -> torch.Tensor: ...


def _adapted(linear: nn.Linear, x: torch.Tensor, adapter: Adapter | None) -> torch.Tensor:
    out = linear(x)
    return out if adapter is None else out + adapter(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, xsa: bool = False):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.c_k = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.c_v = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        for linear in (self.c_q, self.c_k, self.c_v):
            init_matrix(linear, cfg)
        self.proj = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # each block starts as the identity on the residual stream
        # q and k are unit-RMS per head, so this gain sets the attention temperature
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.rope_reverse = cfg.rope_reverse
        self.xsa = xsa  # remove each head's own value direction from its output (XSA)
        self.doc_max_len = cfg.doc_max_len
        self.gate_window, self.gate_scale = cfg.gate_window, cfg.attn_gate_scale
        # per head, weights on the input's first gate_window dims; sigmoid(0) = 0.5 halves every head at init
        self.out_gate = nn.Parameter(torch.zeros(cfg.num_heads, cfg.gate_window)) if cfg.attn_gate else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                starts: torch.Tensor | None = None, adapters: SlotAdapters = NO_ADAPTERS) -> torch.Tensor:
        """x (B, T, d) → (B, T, d); `starts` (B, T): each token's segment start, for document attention."""
        B, T, _ = x.shape
        q = _adapted(self.c_q, x, adapters.q).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = (_adapted(linear, x, adapter).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
                for linear, adapter in ((self.c_k, adapters.k), (self.c_v, adapters.v)))  # (B, K, T, D) each
        q = apply_rotary(norm(q), cos, sin, self.rope_reverse)
        q = q * self.q_gain.to(q.dtype)[:, None, None]  # (H,) broadcast over (B, H, T, D)
        k = apply_rotary(norm(k), cos, sin, self.rope_reverse)
        y = causal_attention(q, k, v) if starts is None else document_attention(q, k, v, starts, self.doc_max_len)
        if self.xsa:
            y = remove_value_direction(y, v)  # (B, H, T, D)
        if self.out_gate is not None:
            gate = torch.sigmoid(self.gate_scale * F.linear(x[..., :self.gate_window], self.out_gate))  # (B, T, H)
            y = y * gate.transpose(1, 2).unsqueeze(-1)
        out = self.proj(y.transpose(1, 2).reshape(B, T, -1))
        return out if adapters.o is None else out + adapters.o(x)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.model_dim, cfg.mlp_hidden, bias=False)
        init_matrix(self.fc, cfg)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.model_dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.leaky = cfg.mlp_activation == "leaky_relu2"

    def forward(self, x: torch.Tensor, adapter: Adapter | None = None) -> torch.Tensor:
        h = self.fc(x)  # (B, T, mlp_hidden)
        h = F.leaky_relu(h, 0.5) if self.leaky else F.relu(h)
        out = self.proj(h.square())
        return out if adapter is None else out + adapter(x)


class Block(nn.Module):
    """Attention then MLP (sequential), or both reading the same input (parallel), or each reading
    its own lane of the two-lane decoder (`two_lanes`).

    With `ln_scale`, both branch inputs norm(x) are multiplied by 1/sqrt(layer + 1), `layer` being
    the block's physical index (a looped block uses the same factor on every application)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.parallel = 0 <= cfg.parallel_start <= layer
        self.two_lane = 0 <= cfg.two_lane_start <= layer  # in the decoder half only (GPT.forward)
        self.norm_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.attn = CausalSelfAttention(cfg, xsa=layer >= cfg.num_layers - cfg.xsa_last_n)  # the last xsa_last_n
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        # row 0 weighs the residual stream, row 1 the normalized embedding x0; starts as "x only"
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim))))

    def forward(self, x: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                starts: torch.Tensor | None = None, adapters: SlotAdapters = NO_ADAPTERS) -> torch.Tensor:
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0  # (B, T, d)
        if self.parallel:
            h = self._norm(x)  # the two norms have no weights, so one serves both branches
            return (x + self.attn_scale * self.attn(h, cos, sin, starts, adapters)
                    + self.mlp_scale * self.mlp(h, adapters.mlp))
        x = x + self.attn_scale * self.attn(self._norm(x), cos, sin, starts, adapters)
        return x + self.mlp_scale * self.mlp(self._norm(x), adapters.mlp)

    def two_lanes(self, lane0: torch.Tensor, lane1: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, starts: torch.Tensor | None, resid: torch.Tensor,
                  post: torch.Tensor, adapters: SlotAdapters = NO_ADAPTERS) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention reads lane 0 mixed with x0, the MLP reads lane 1 as it is; each lane keeps resid[lane]
        of itself and adds post[branch, lane] of each branch's output (branch 0 attention, 1 MLP)."""
        attn_out = self.attn_scale * self.attn(self._norm(self.resid_mix[0] * lane0 + self.resid_mix[1] * x0),
                                               cos, sin, starts, adapters)
        mlp_out = self.mlp_scale * self.mlp(self._norm(lane1), adapters.mlp)
        return (resid[0] * lane0 + post[0, 0] * attn_out + post[1, 0] * mlp_out,
                resid[1] * lane1 + post[0, 1] * attn_out + post[1, 1] * mlp_out)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return norm(x) * self.norm_scale  # × 1.0 without ln_scale: exact


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.num_layers))
        self.rotary = Rotary(cfg.rope_dims or cfg.head_dim, cfg.rope_base)
        self.final_norm = FinalNorm()
        n_skips = skip_rows(cfg)
        self.skip_weights = nn.Parameter(torch.ones(n_skips, cfg.model_dim)) if n_skips else None
        # sigmoid(0) = 0.5: each gated skip starts as the mean of the stream and the skip
        self.skip_gates = nn.Parameter(torch.zeros(n_skips, cfg.model_dim)) if n_skips and cfg.skip_gates else None
        # SmearGate: λ = 0 and W = 0 start as the identity
        self.smear_gate = nn.Parameter(torch.zeros(1, cfg.gate_window)) if cfg.smear_gate else None
        self.smear_lambda = nn.Parameter(torch.zeros(1)) if cfg.smear_gate else None
        # two-lane decoder: a row per physical layer (the record's layout; rows below two_lane_start are unused)
        lanes = cfg.two_lane_start != -1
        # [layer, lane] and [layer, branch, lane] (branch 0 attention, 1 MLP)
        self.lane_resid_scales = nn.Parameter(torch.full((cfg.num_layers, 2), 1.1)) if lanes else None
        self.lane_post_scales = nn.Parameter(torch.ones(cfg.num_layers, 2, 2)) if lanes else None

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor | None = None, loops: int | None = None,
                reduction: str = "mean", documents: bool = True, lora: Adapters | None = None) -> torch.Tensor:
        """Logits (B, T, V) in float32, or the float32 cross-entropy: a scalar mean, or (B, T) for "none".

        U-Net skips, for any `loops`: the sequence splits at half = len(sequence) // 2 (`unet_layout`),
        and the innermost pairs = min(half, rows of skip_weights) pairs connect: encoder application
        half-1-j feeds decoder application half+j through row j, j = 0..pairs-1. Row j is thus
        always the j-th pair from the middle, whatever the loop count. Up to the training depth
        every encoder application has a pair; deeper runs (eval_loops > num_loops) leave the
        outermost encoder applications without one rather than invent untrained rows. A skip s
        (the encoder output times its row of skip_weights) is added to the stream x, or with
        `skip_gates` mixed in: x ← g·x + (1 − g)·s, g = sigmoid(its row of skip_gates).

        `documents=False` attends causally over the whole row even with doc_max_len (the 04-27 record
        collects GPTQ's Hessians so).

        `lora`: adapters for application i of the layer sequence (`Adapters.slot(i)`) and the head.

        Two-lane decoder: at the first decoder application of a block at or past two_lane_start, both
        lanes start as x; from there skips enter lane 0 only, and the final norm reads the lanes' mean.
        """
        sequence = layer_sequence(self.cfg, self.cfg.num_loops if loops is None else loops)
        half = len(sequence) // 2
        pairs = min(half, self.skip_weights.size(0)) if self.skip_weights is not None else 0
        cos, sin = self.rotary(input_ids.size(1), input_ids.device)  # (T, rope_dims/2) each, along the whole row
        starts = segment_starts(input_ids, BOS_ID, self.cfg.doc_max_len) if self.cfg.doc_max_len and documents else None
        x = self.tok_emb(input_ids)  # (B, T, d)
        if self.smear_gate is not None:
            x = self._smear(x, input_ids)
        x = x0 = norm(x)
        skips = []
        lanes = None
        for i, layer in enumerate(sequence):
            block = self.blocks[layer]
            if lanes is None and i >= half and block.two_lane:
                lanes = (x, x)
            if half <= i < half + pairs:
                if lanes is None:
                    x = self._add_skip(x, skips.pop(), i - half)
                else:
                    lanes = (self._add_skip(lanes[0], skips.pop(), i - half), lanes[1])
            adapters = NO_ADAPTERS if lora is None else lora.slot(i)
            if lanes is None:
                x = block(x, x0, cos, sin, starts, adapters)
            else:
                lanes = block.two_lanes(*lanes, x0, cos, sin, starts, self.lane_resid_scales[layer],
                                        self.lane_post_scales[layer], adapters)
            if half - pairs <= i < half:
                skips.append(x)
        if lanes is not None:
            x = 0.5 * (lanes[0] + lanes[1])
        h = self.final_norm(x)
        logits = F.linear(h, self.tok_emb.weight)  # (B, T, V), tied head
        if lora is not None:
            logits = logits + lora.head(h)
        logits = logits.float()
        c = self.cfg.logit_softcap
        logits = c * torch.tanh(logits / c)
        if target_ids is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction)
        return loss.view(target_ids.shape) if reduction == "none" else loss

    def _smear(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """x_t += λ·σ(W·x_t[:gate_window])·x_{t−1} for t ≥ 1 (x the raw embedding, (B, T, d)), except where
        token t is BOS: a document's first token takes nothing from the one before it."""
        gate = self.smear_lambda * torch.sigmoid(F.linear(x[:, 1:, :self.cfg.gate_window], self.smear_gate))
        not_bos = (input_ids[:, 1:] != BOS_ID).to(x.dtype).unsqueeze(-1)  # (B, T−1, 1)
        return torch.cat((x[:, :1], x[:, 1:] + gate * x[:, :-1] * not_bos), dim=1)

    def _add_skip(self, x: torch.Tensor, encoder_out: torch.Tensor, row: int) -> torch.Tensor:
        skip = self.skip_weights[row] * encoder_out
        if self.skip_gates is None:
            return x + skip
        return torch.lerp(skip, x, torch.sigmoid(self.skip_gates[row]))


def unet_layout(cfg: ModelConfig, loops: int) -> tuple[list[int], list[int]]:
    """(encoder, decoder): the physical blocks of the first and second half of the layer sequence."""
    sequence = layer_sequence(cfg, loops)
    return sequence[:len(sequence) // 2], sequence[len(sequence) // 2:]


@dataclass(frozen=True)
class Role:
    """What a parameter is, for every stage that treats parameters differently."""

    name: str  # the quantization report group and the TTT parameter set: "mlp", "attn", "scalar" or "embed"
    optimizer: str  # "embed" (AdamW at embed_lr), "matrix" (Muon at matrix_lr) or "scalar" (AdamW at scalar_lr)
    quantized: bool  # integers on a per-row grid; False: a control tensor, stored as float16


# in the order the TTT parameter sets are listed
ROLES = {role.name: role for role in (
    Role("mlp", optimizer="matrix", quantized=True),  # the Linear weights of a block's MLP
    Role("attn", optimizer="matrix", quantized=True),  # the Linear weights of a block's attention
    Role("scalar", optimizer="scalar", quantized=False),  # gains, scales, residual mixes, skip weights
    Role("embed", optimizer="embed", quantized=True),  # the tied embedding, also the output head
)}
TTT_PARAM_SETS = ("all", *ROLES)  # what `ttt_parameters` selects from
# The sparse attention gates (`out_gate`): AdamW like the scalars, but stored as integers with one
# absmax scale per head row (the 2026-04-27 record's int8-per-row gate path), not as float16.
# Not a TTT parameter set of its own: "all" selects them.
GATE = Role("gate", optimizer="scalar", quantized=False)


def parameter_roles(model: GPT) -> dict[str, Role]:
    """Every parameter name → its Role, in `named_parameters` order; the only place that decides it."""
    matrices: dict[str, Role] = {}  # the weight of every Linear inside an attention or an MLP, and the gates
    for owner_name, owner in model.named_modules():
        if isinstance(owner, (CausalSelfAttention, MLP)):
            role = ROLES["attn"] if isinstance(owner, CausalSelfAttention) else ROLES["mlp"]
            matrices.update((f"{owner_name}.{name}.weight", role)
                            for name, child in owner.named_children() if isinstance(child, nn.Linear))
        if isinstance(owner, CausalSelfAttention) and owner.out_gate is not None:
            matrices[f"{owner_name}.out_gate"] = GATE
    return {name: ROLES["embed"] if p is model.tok_emb.weight else matrices.get(name, ROLES["scalar"])
            for name, p in model.named_parameters()}


def parameter_groups(model: GPT) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Optimizer group ("embed", "matrix", "scalar") → its (name, parameter) pairs, in `named_parameters` order."""
    roles = parameter_roles(model)
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        groups.setdefault(roles[name].optimizer, []).append((name, p))
    return groups


def ttt_parameters(model: GPT, selection: str) -> list[nn.Parameter]:
    """The parameters test-time training updates: `selection` is a comma-separated subset of
    TTT_PARAM_SETS, each a role name, or "all". Raises ValueError for an empty or unknown one."""
    wanted = {s.strip() for s in selection.split(",") if s.strip()}
    if not wanted or not wanted <= set(TTT_PARAM_SETS):
        raise ValueError(f"TTT parameter selection {selection!r}: choose from {', '.join(TTT_PARAM_SETS)} "
                         "(comma-separated)")
    roles = parameter_roles(model)
    return [p for name, p in model.named_parameters() if "all" in wanted or roles[name].name in wanted]


def model_flops_per_token(cfg: ModelConfig, seq_len: int, loops: int) -> float:
    """Training FLOPs per token (forward + backward), the usual 6·N + 12·L·d·T estimate.

    N counts the matmul weights one token passes through: every block application of the
    virtual sequence (a looped block counts once per application) plus the tied head (V·d);
    the embedding lookup, norms and element-wise ops are left out. Attention adds, per
    application, 2·T·d for q·kᵀ and 2·T·d for the weighted sum of v in the forward, tripled
    for forward + backward: 12·d·T. The causal mask's halving is ignored (full T).
    """
    d, kv_dim = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    per_block = d * d + 2 * d * kv_dim + d * d + 2 * d * cfg.mlp_hidden  # q, k, v, proj, fc, mlp proj
    applications = len(layer_sequence(cfg, loops))
    matmul_params = applications * per_block + cfg.vocab_size * d
    return 6.0 * matmul_params + 12.0 * applications * d * seq_len
