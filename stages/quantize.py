"""Stage `quantize`: a model (or checkpoint) → `artifact.bin` that fits the byte budget.

1. Calibrate: Hessians of every block matrix's input and of the tied head's input over
   training tokens, at the model's evaluation depth (collected once).
2. Quantize every parameter whose `Role` (golfctl.model.parameter_roles) is quantized, with
   per-row SDClip scales (block matrices `bits` with `clip_sigmas`, or the MLP's and attention's
   own `mlp_clip_sigmas` / `attn_clip_sigmas`; the tied embedding `embed_bits` with
   `embed_clip_sigmas`), by GPTQ or RTN. The sparse attention gates (role "gate") go on a
   `gate_bits` absmax grid, one scale per head row; the other control tensors stay float16.
3. LQER (golfctl.lqer, `lqer_top_k` > 0): the matrices with the largest ‖W − Ŵ‖_F get a low-rank
   correction of their error, stored next to them.
4. Entropy-code the integers (`codec`), write the artifact, check artifact + code bytes
   against the budget. `fit` bisects the matrix clip_sigmas on the real compressed size for
   the smallest value (finest grid) that fits.

The 2026-04-27 record (the `frontier` preset) quantizes with
`--embed-bits 7 --embed-clip-sigmas 14 --mlp-clip-sigmas 11.5 --attn-clip-sigmas 13 --clip-sigmas 12.85
--calib-batches 16 --calib-batch-seqs 48 --gate-bits 8 --lqer-top-k 3 --lqer-rank 4 --lqer-asym
--lqer-group 64 --lqer-factor-bits 4` (its log's embed_bits 7, embed_clip_sigmas 14.0, mlp_clip_sigmas 11.5,
attn_clip_sigmas 13.0, matrix_clip_sigmas 12.85, gptq_calibration_batches 16 of 786,432 / 8 ranks =
48 sequences of 2,048 tokens, gated_attn_quant_gate True, lqer_top_k 3, lqer_rank 4, lqer_asym_enabled
True, lqer_asym_group 64, lqer_factor_bits 4).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from golfctl.artifact import (AUTO, CODEC_CHOICES, LQER_SUFFIX, Float16Tensor, IntFactor, LowRankCorrection,
                              QuantizedTensor, Stored, decode_artifact, encode_artifact, write_artifact)
from golfctl.budget import DEFAULT_BUDGET, Budget, OverBudget, budget_for, chain_settings
from golfctl.calibration import calibration_batches, collect_hessians
from golfctl.codec import entropy_bound_bytes
from golfctl.dataset import open_dataset
from golfctl.errors import UserError, refuse_problems
from golfctl.gptq import (NotPositiveDefinite, dequantize, output_error, quantize_absmax, quantize_gptq, quantize_rtn,
                          sdclip_scales, weight_error)
from golfctl.lqer import Factor, largest_errors, lqer_correction
from golfctl.model import GATE, ROLES, Role, parameter_roles
from golfctl.fileio import atomic_write_bytes
from golfctl.outputs import ARTIFACT, JSON, QUANTIZE_REPORT_FORMAT, check_output_file, quantize_report_path
from golfctl.validation import check_model_tokenizer, load_validation_set, score_weights
from golfctl.weights import Weights, build_model, load_weights, refuse_non_finite

METHODS = ("gptq", "rtn")
FIT_RANGE = (2.0, 64.0)  # matrix clip_sigmas searched by --fit
DAMP_RAISES = 3  # GPTQ retries a matrix at 10×, 100×, 1000× --damp before giving up
FIT_PROBES = 8  # bisection steps: the choice is within (range / 2**8) of the smallest fitting value
PASSTHROUGH = "fp16"  # the report group of the tensors stored as float16
LQER = "lqer"  # the report group of the LQER corrections, reported as tensors NAME + LQER_SUFFIX
REPORT_GROUPS = (*(role.name for role in ROLES.values() if role.quantized), GATE.name, LQER, PASSTHROUGH)  # row order


@dataclass(frozen=True)
class QuantizeConfig:
    model: Path = dataclasses.field(metadata={"argument": True})
    data: Path = dataclasses.field(metadata={
        "help": "Dataset folder: calibration reads its training tokens (and --eval its validation tokens)."})
    out: Path = dataclasses.field(metadata={"help": "Artifact to write (artifact.bin)."})
    method: str = dataclasses.field(default="gptq", metadata={
        "choices": METHODS, "help": "GPTQ (error feedback through calibration Hessians) or round to nearest."})
    bits: int = dataclasses.field(default=6, metadata={"help": "Bits of the block matrices."})
    embed_bits: int = dataclasses.field(default=8, metadata={"help": "Bits of the tied embedding."})
    clip_sigmas: float = dataclasses.field(default=12.85, metadata={
        "help": "SDClip k of the block matrices: row scale = k·std(row)/qmax."})
    embed_clip_sigmas: float = dataclasses.field(default=20.0, metadata={"help": "SDClip k of the embedding."})
    mlp_clip_sigmas: float = dataclasses.field(default=0.0, metadata={
        "help": "SDClip k of the MLP matrices; 0 = --clip-sigmas."})
    attn_clip_sigmas: float = dataclasses.field(default=0.0, metadata={
        "help": "SDClip k of the attention matrices; 0 = --clip-sigmas."})
    gate_bits: int = dataclasses.field(default=8, metadata={
        "help": "Bits of the sparse attention gates: absmax, one scale per head row; 0 keeps them float16."})
    lqer_top_k: int = dataclasses.field(default=0, metadata={
        "help": "LQER: correct the K matrices with the largest quantization error ‖W − Ŵ‖_F by a low-rank A·B; "
                "0 = none."})
    lqer_rank: int = dataclasses.field(default=4, metadata={"help": "LQER rank of A·B."})
    lqer_asym: bool = dataclasses.field(default=True, metadata={
        "help": "LQER factors as A int2 in [-2, 1] with one scale, B int4 in [-8, 7] with one scale per "
                "--lqer-group values; otherwise (or when the group does not divide B) both --lqer-factor-bits "
                "with one scale per row."})
    lqer_group: int = dataclasses.field(default=64, metadata={
        "help": "LQER: values of B per scale (with --lqer-asym)."})
    lqer_factor_bits: int = dataclasses.field(default=4, metadata={
        "help": "LQER: bits of both factors when they are not asymmetric."})
    budget: int = dataclasses.field(default=DEFAULT_BUDGET, metadata={"help": "Bytes for artifact + code."})
    fit: bool = dataclasses.field(default=False, metadata={
        "help": "Bisect --clip-sigmas for the finest grid that fits the budget."})
    codec: str = dataclasses.field(default=AUTO, metadata={
        "choices": CODEC_CHOICES, "help": "Integer codec: auto picks the smallest per tensor."})
    damp: float = dataclasses.field(default=0.01, metadata={
        "help": f"GPTQ dampening: damp·mean(diag H) is added to H's diagonal; raised ×10 up to {DAMP_RAISES} times "
                "for a matrix whose H is not positive definite."})
    calib_batches: int = dataclasses.field(default=16, metadata={"help": "Calibration batches of training tokens."})
    calib_batch_seqs: int = dataclasses.field(default=8, metadata={"help": "Sequences per calibration batch."})
    evaluate: bool = dataclasses.field(default=False, metadata={
        "option": "eval", "help": "Also report validation BPB before and after quantization."})
    tokenizer: Path | None = dataclasses.field(default=None, metadata={
        "help": "Tokenizer .model for datasets that carry none (with --eval)."})

    def problems(self) -> list[str]:
        p = []
        if self.method not in METHODS:
            p.append(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.codec not in CODEC_CHOICES:
            p.append(f"--codec must be one of {CODEC_CHOICES}, got {self.codec!r}")
        p += [f"--{k.replace('_', '-')} must be in 2..8, got {getattr(self, k)}"
              for k in ("bits", "embed_bits", "lqer_factor_bits") if not 2 <= getattr(self, k) <= 8]
        p += [f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
              for k in ("clip_sigmas", "embed_clip_sigmas", "damp", "budget", "calib_batches", "calib_batch_seqs",
                        "lqer_rank", "lqer_group") if getattr(self, k) <= 0]
        p += [f"--{k.replace('_', '-')} must be >= 0, got {getattr(self, k)}"
              for k in ("mlp_clip_sigmas", "attn_clip_sigmas", "lqer_top_k") if getattr(self, k) < 0]
        if self.gate_bits and not 2 <= self.gate_bits <= 8:
            p.append(f"--gate-bits must be 0 (float16) or in 2..8, got {self.gate_bits}")
        if self.fit and self.mlp_clip_sigmas and self.attn_clip_sigmas:
            p.append("--fit bisects --clip-sigmas, which no matrix uses when --mlp-clip-sigmas and "
                     "--attn-clip-sigmas are both set; drop one of them or --fit")
        return p

    def matrix_clip_sigmas(self, role: Role, clip_sigmas: float) -> float:
        """The SDClip k of a quantized role: its own setting, or `clip_sigmas` (the one --fit moves)."""
        if role == ROLES["embed"]:
            return self.embed_clip_sigmas
        own = {"mlp": self.mlp_clip_sigmas, "attn": self.attn_clip_sigmas}.get(role.name, 0.0)
        return own or clip_sigmas


@dataclass
class TensorReport:
    name: str
    group: str  # one of REPORT_GROUPS
    bits: int | str  # an LQER correction: "A bits/B bits"
    count: int
    entropy_bytes: float
    weight_error: float = 0.0
    output_error: float | None = 0.0  # None: not measured (a gate whose attention has no c_q Hessian)
    rtn_errors: tuple[float, float] | None = None  # (weight, output) of round-to-nearest on the same grid, under GPTQ
    details: dict = dataclasses.field(default_factory=dict)  # more quantize.json fields (an LQER correction's)


@dataclass
class Quantized:
    clip_sigmas: float
    data: bytes
    reports: list[TensorReport]
    stored: dict[str, Stored]  # tensor → its codecs and payload bytes, read back from `data` (proving it decodes)
    groups: dict[str, str]  # tensor → its report group
    budget: Budget  # this artifact + the train_gpt.py that reproduces it

    def group_bytes(self, part: str) -> dict[str, int]:
        """Payload bytes per report group of each tensor's "data_bytes" or "scale_bytes"."""
        totals: dict[str, int] = {}
        for name, stored in self.stored.items():
            totals[self.groups[name]] = totals.get(self.groups[name], 0) + getattr(stored, part)
        return totals


def run_quantize(cfg: QuantizeConfig) -> dict:
    refuse_problems(cfg.problems())
    check_output_file(cfg.out, ARTIFACT, inputs=(cfg.model, cfg.data, cfg.tokenizer))
    report_path = check_output_file(quantize_report_path(cfg.out), JSON, inputs=(cfg.model, cfg.data, cfg.tokenizer))
    weights = load_weights(cfg.model)
    refuse_non_finite(weights)
    _say(f"quantize: {cfg.model}: {weights.origin}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(weights, device)
    dataset = open_dataset(cfg.data)
    if dataset.vocab_size is not None and dataset.vocab_size != weights.config.vocab_size:
        raise UserError(f"{cfg.data} has vocab {dataset.vocab_size} but the model {weights.config.vocab_size}; "
                        "calibrate on the dataset the model was trained on")
    check_model_tokenizer(dataset, weights.tokenizer_sha256, cfg.tokenizer)
    start = time.perf_counter()
    batches = calibration_batches(dataset.splits["train"], cfg.calib_batches, cfg.calib_batch_seqs,
                                  weights.config.train_seq_len)
    hessians = collect_hessians(model, batches, loops=weights.config.resolved_eval_loops)
    _say(f"quantize: calibrated {len(hessians)} Hessians on {sum(b.numel() for b in batches):,} training tokens "
         f"in {time.perf_counter() - start:.1f}s")
    make = functools.partial(_quantize, weights, hessians, parameter_roles(model), cfg)  # clip_sigmas → Quantized
    result = _fit(make, cfg) if cfg.fit else make(cfg.clip_sigmas)
    budget = result.budget
    _report(result, budget)
    if not budget.fits:
        raise OverBudget(
            f"the artifact is {-budget.headroom:,} bytes over the {budget.budget:,}-byte budget "
            f"(model {budget.model_bytes:,} + code {budget.code_bytes:,}); raise --clip-sigmas "
            f"(now {result.clip_sigmas:g}), lower --bits / --embed-bits, or pass --fit; nothing was written")
    write_artifact(cfg.out, result.data)
    summary = {"out": str(cfg.out), "artifact_bytes": len(result.data), "code_bytes": budget.code_bytes,
               "total_bytes": budget.total, "clip_sigmas": result.clip_sigmas, "method": cfg.method,
               "artifact_sha256": hashlib.sha256(result.data).hexdigest(), "tensors": _tensor_lines(result)}
    atomic_write_bytes(report_path, (json.dumps({"format": QUANTIZE_REPORT_FORMAT, "version": 1, **summary},
                                                indent=1) + "\n").encode())
    _say(f"quantize: wrote {cfg.out} ({len(result.data):,} bytes, clip_sigmas {result.clip_sigmas:g}) and "
         f"{report_path.name}")
    if cfg.evaluate:
        summary.update(_evaluate(weights, cfg))
    return summary


def _tensor_lines(result: Quantized) -> dict[str, dict]:
    """quantize.json's per-tensor entries: group, bits, values, errors (GPTQ's and RTN's under GPTQ;
    none for fp16 tensors, no output error for gates) and the stored bytes with their codecs. An LQER
    correction is the entry NAME + LQER_SUFFIX: its target, rank, factor grids, ‖W − Ŵ‖_F before it, and
    the target's errors with it."""
    lines = {}
    for r in result.reports:
        stored = result.stored[r.name]
        line = {"group": r.group, "bits": r.bits, "values": r.count, "codec": stored.describe(),
                "data_bytes": stored.data_bytes, "scale_bytes": stored.scale_bytes}
        if r.group != PASSTHROUGH:
            line.update(weight_error=r.weight_error)
            if r.output_error is not None:
                line.update(output_error=r.output_error)
            if r.rtn_errors is not None:
                line.update(rtn_weight_error=r.rtn_errors[0], rtn_output_error=r.rtn_errors[1])
        lines[r.name] = {**line, **r.details}
    return lines


def _report_group(role: Role) -> str:
    return role.name if role.quantized else PASSTHROUGH


def _quantize(weights: Weights, hessians: dict[str, torch.Tensor], roles: dict[str, Role], cfg: QuantizeConfig,
              clip_sigmas: float) -> Quantized:
    tensors, reports = [], []
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # matrix → (q, scales), for LQER
    for name, tensor in weights.state.items():
        W = tensor.detach().float()
        role = roles[name]
        if role == GATE and cfg.gate_bits:
            tensors.append(_gate(name, W, cfg.gate_bits, hessians, reports))
            continue
        if not role.quantized:
            values = W.half().numpy()
            tensors.append(Float16Tensor(name, tuple(W.shape), values))
            reports.append(TensorReport(name, PASSTHROUGH, 16, W.numel(), 2.0 * W.numel()))
            continue
        bits = cfg.embed_bits if role == ROLES["embed"] else cfg.bits
        H = hessians[name].to(W.device)
        scales = sdclip_scales(W, bits, cfg.matrix_clip_sigmas(role, clip_sigmas))
        rtn = quantize_rtn(W, scales, bits)
        q = _gptq(name, W, H, scales, bits, cfg.damp) if cfg.method == "gptq" else rtn
        quantized[name] = q, scales
        q_np = q.cpu().numpy()
        tensors.append(QuantizedTensor(name, tuple(W.shape), bits, q_np, scales.half().cpu().numpy()))
        reports.append(TensorReport(name, role.name, bits, W.numel(), entropy_bound_bytes(q_np),
                                    *_errors(W, dequantize(q, scales), H),
                                    _errors(W, dequantize(rtn, scales), H) if q is not rtn else None))
    if cfg.lqer_top_k:
        tensors += _lqer(weights.state, quantized, hessians, cfg, reports)
    source = {"model_sha256": weights.sha256, "weights": weights.kind}
    meta = {"method": cfg.method, "bits": cfg.bits, "embed_bits": cfg.embed_bits, "clip_sigmas": clip_sigmas,
            "embed_clip_sigmas": cfg.embed_clip_sigmas, "damp": cfg.damp, "calib_batches": cfg.calib_batches,
            "calib_batch_seqs": cfg.calib_batch_seqs, "mlp_clip_sigmas": cfg.mlp_clip_sigmas,
            "attn_clip_sigmas": cfg.attn_clip_sigmas, "gate_bits": cfg.gate_bits, "lqer_top_k": cfg.lqer_top_k,
            "lqer_rank": cfg.lqer_rank, "lqer_asym": cfg.lqer_asym, "lqer_group": cfg.lqer_group,
            "lqer_factor_bits": cfg.lqer_factor_bits}
    config = dataclasses.asdict(weights.config)
    data = encode_artifact(tensors, cfg.codec, config, source, meta)
    stored = decode_artifact(data, "the new artifact").stored
    # code bytes: the exported script with these settings and the default eval settings (not known yet)
    budget = budget_for(len(data), chain_settings(config, {**meta, "codec": cfg.codec}), cfg.budget)
    return Quantized(clip_sigmas, data, reports, stored, {r.name: r.group for r in reports}, budget)


def _errors(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> tuple[float, float]:
    return weight_error(W, W_hat), output_error(W, W_hat, H)


def _gate(name: str, W: torch.Tensor, bits: int, hessians: dict[str, torch.Tensor],
          reports: list[TensorReport]) -> QuantizedTensor:
    """A gate (heads, window) on the absmax grid, one scale per head row (the record's int8-per-row gates).

    Its output error is that of the gate logits W·x[:window]: x is the attention's input, which c_q reads
    too, so the Hessian of x[:window] is the leading (window, window) block of c_q's."""
    rows = W.reshape(W.shape[0], -1)  # (heads, window)
    q, scales = quantize_absmax(rows, bits, rows.shape[1])
    W_hat = dequantize(q, scales)
    H = hessians.get(name.removesuffix("out_gate") + "c_q.weight")
    errors = _errors(rows, W_hat, H[:rows.shape[1], :rows.shape[1]]) if H is not None else (
        weight_error(rows, W_hat), None)
    reports.append(TensorReport(name, GATE.name, bits, W.numel(), entropy_bound_bytes(q.numpy()), *errors))
    return QuantizedTensor(name, tuple(W.shape), bits, q.numpy(), scales.numpy())


def _lqer(state: dict[str, torch.Tensor], quantized: dict[str, tuple[torch.Tensor, torch.Tensor]],
          hessians: dict[str, torch.Tensor], cfg: QuantizeConfig,
          reports: list[TensorReport]) -> list[LowRankCorrection]:
    """Corrections of the lqer_top_k matrices with the largest ‖W − Ŵ‖_F (the record's ranking), in that order."""
    def parts(name: str) -> tuple[torch.Tensor, torch.Tensor]:  # (W, q·s), float32 (rows, cols), on the CPU
        return state[name].detach().float().cpu(), dequantize(*quantized[name]).cpu()

    norms = {name: float(torch.sub(*parts(name)).norm()) for name in quantized}
    corrections = []
    for name in largest_errors(norms, cfg.lqer_top_k):
        W, base = parts(name)
        correction = lqer_correction(W - base, cfg.lqer_rank, cfg.lqer_asym, cfg.lqer_group, cfg.lqer_factor_bits)
        W_hat = base + correction.matrix()  # as the artifact dequantizes it
        a, b = correction.a, correction.b
        details = {"target": name, "rank": a.q.shape[1], "a_bits": a.bits, "a_group": a.group, "b_bits": b.bits,
                   "b_group": b.group, "symmetric": a.symmetric, "error_norm": norms[name]}
        reports.append(TensorReport(name + LQER_SUFFIX, LQER, f"{a.bits}/{b.bits}", a.q.numel() + b.q.numel(),
                                    entropy_bound_bytes(a.q.numpy()) + entropy_bound_bytes(b.q.numpy()),
                                    *_errors(W, W_hat, hessians[name].cpu()), details=details))
        corrections.append(LowRankCorrection(name, _int_factor(a), _int_factor(b)))
    return corrections


def _int_factor(f: Factor) -> IntFactor:
    return IntFactor(f.q.numpy(), f.scales.numpy(), f.bits, f.group, f.symmetric)


def _gptq(name: str, W: torch.Tensor, H: torch.Tensor, scales: torch.Tensor, bits: int, damp: float) -> torch.Tensor:
    """GPTQ at `damp`, raised ×10 (at most DAMP_RAISES times, each said) while H is not positive definite."""
    if not torch.isfinite(H).all():
        raise UserError(f"{name}: its calibration Hessian is not finite (the model's activations overflow); "
                        "check the model with golfctl eval, or quantize with --method rtn")
    for _ in range(DAMP_RAISES):
        try:
            return quantize_gptq(W, H, scales, bits, damp=damp)
        except NotPositiveDefinite as exc:
            _say(f"quantize: {name}: {exc}; retrying with damp {damp * 10:g}")
            damp *= 10
    try:
        return quantize_gptq(W, H, scales, bits, damp=damp)
    except NotPositiveDefinite as exc:
        raise UserError(f"{name}: {exc}, even at damp {damp:g} after {DAMP_RAISES} raises; pass a larger --damp "
                        "or --method rtn") from None


def _fit(make, cfg: QuantizeConfig) -> Quantized:
    """Bisect the matrix clip_sigmas for the smallest value whose artifact fits (bigger k → coarser grid → fewer bytes)."""
    lo, hi = FIT_RANGE
    _say(f"quantize --fit: bisecting clip_sigmas in [{lo:g}, {hi:g}] for total ≤ {cfg.budget:,} bytes")
    best = make(hi)
    if not _probe(best):
        raise OverBudget(f"even clip_sigmas {hi:g} gives {best.budget.total:,} bytes, over "
                         f"the {cfg.budget:,}-byte budget; lower --bits or --embed-bits")
    first = make(lo)
    if _probe(first):
        return first
    for _ in range(FIT_PROBES):
        mid = (lo + hi) / 2
        probe = make(mid)
        if _probe(probe):
            hi, best = mid, probe
        else:
            lo = mid
    _say(f"quantize --fit: chose clip_sigmas {best.clip_sigmas:g} (smallest fitting value is in ({lo:g}, {hi:g}])")
    return best


def _probe(result: Quantized) -> bool:
    budget = result.budget
    _say(f"  probe clip_sigmas {result.clip_sigmas:8.4f}: total {budget.total:>12,} bytes "
         f"{'fits' if budget.fits else 'over'}")
    return budget.fits


def _report(result: Quantized, budget: Budget) -> None:
    _say("quantize: tensor groups (coded bytes against the order-0 entropy bound Σ n·H(q) of the integers)")
    _say(f"  {'group':<7}{'tensors':>8}{'values':>12}{'bits':>6}{'coded bytes':>14}{'entropy bound':>15}{'ratio':>8}"
         f"{'scale bytes':>13}")
    total_coded = total_bound = 0.0
    coded_bytes, scale_bytes = result.group_bytes("data_bytes"), result.group_bytes("scale_bytes")
    for group in REPORT_GROUPS:
        rows = [r for r in result.reports if r.group == group]
        if not rows:
            continue
        coded = coded_bytes.get(group, 0)
        bound = sum(r.entropy_bytes for r in rows)
        if group != PASSTHROUGH:
            total_coded, total_bound = total_coded + coded, total_bound + bound
        bits = "/".join(sorted({str(r.bits) for r in rows}))
        _say(f"  {group:<7}{len(rows):>8}{sum(r.count for r in rows):>12,}{bits:>6}{coded:>14,}{bound:>15,.0f}"
             f"{coded / bound if bound else 0:>8.4f}{scale_bytes.get(group, 0):>13,}")
    if total_bound:
        _say(f"  total coded integers / entropy bound: {total_coded:,.0f} / {total_bound:,.0f} = "
             f"{total_coded / total_bound:.4f}")
    _say("quantize: per tensor: relative weight error, Hessian-weighted output error ‖ΔW·X‖/‖W·X‖, and the "
         "codecs picked (integers+scales)")
    for r in result.reports:
        if r.group != PASSTHROUGH:
            output = "" if r.output_error is None else f"  output {r.output_error:.4f}"
            _say(f"  {r.name:<34} int{r.bits}  weight {r.weight_error:.4f}{output}  {result.stored[r.name].describe()}")
    passthrough = Counter(result.stored[r.name].describe() for r in result.reports if r.group == PASSTHROUGH)
    if passthrough:
        _say("  fp16 tensors: " + ", ".join(f"{codec} ×{n}" for codec, n in sorted(passthrough.items())))
    _say("quantize: budget (code: the exported train_gpt.py, counted with the default eval settings)")
    for line in budget.table():
        _say(line)


def _evaluate(weights: Weights, cfg: QuantizeConfig) -> dict:
    """Plain validation BPB of the unquantized weights and of the artifact just written."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    val = load_validation_set(open_dataset(cfg.data), cfg.tokenizer, weights.config.vocab_size, 1, device,
                              model_tokenizer_sha256=weights.tokenizer_sha256)
    before = score_weights(weights, val, device)
    after = score_weights(load_weights(cfg.out), val, device)
    _say(f"quantize --eval: val_bpb unquantized {before.bpb:.4f}, quantized {after.bpb:.4f}, "
         f"gap {after.bpb - before.bpb:+.4f} ({after.tokens:,} tokens)")
    return {"val_bpb_unquantized": before.bpb, "val_bpb_quantized": after.bpb}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
