"""Training and model configuration: frozen dataclasses, TOML presets, one merge path.

Sources merge in one order: preset < `--config FILE.toml` < `--set key=value`. Every key is
a flat name; unknown keys and values of the wrong type are rejected, all problems reported
at once. The resolved config is written into every artifact, so later stages rebuild the
model from the artifact alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from golfctl.errors import UserError

MLP_ACTIVATIONS = ("relu2", "leaky_relu2")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
# Newton–Schulz coefficient schedules (golfctl.optim.ns_coefficients); polar_express has tuples for 5 steps
NS_SCHEDULES = ("quintic", "polar_express")
POLAR_EXPRESS_STEPS = 5
# Keys that may change when a run resumes: they alter logging, saving and the compile warm-up,
# never the weights. Every other key is part of what the run computes.
RUN_CONTROL_KEYS = frozenset({"log_every", "val_every", "val_max_tokens", "checkpoint_every", "compile_warmup_steps"})


def _key(default: Any, text: str) -> Any:
    """A config key: its default and the help text `golfctl config` prints."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network from its weights."""

    vocab_size: int = _key(1024, "must equal the tokenizer's vocabulary")
    model_dim: int = _key(512, "residual stream width")
    num_layers: int = _key(9, "unique transformer blocks")
    num_heads: int = _key(8, "query heads; head_dim = model_dim / num_heads")
    num_kv_heads: int = _key(4, "key/value heads (grouped-query attention)")
    mlp_mult: float = _key(2.0, "MLP hidden width = mlp_mult × model_dim")
    mlp_activation: str = _key("relu2", "relu2: relu(x)²; leaky_relu2: leaky_relu(x, 0.5)²")
    rope_base: float = _key(10000.0, "RoPE base: the rotation of dimension pair i is position × base^(−2i/dims)")
    rope_dims: int = _key(0, "rotate only the first rope_dims dims of each head (partial RoPE); 0 = all")
    qk_gain_init: float = _key(1.5, "initial learnable per-head gain on the normalized queries")
    logit_softcap: float = _key(30.0, "logits = c·tanh(z/c)")
    tied_embed_init_std: float = _key(0.005, "standard deviation of the tied embedding's normal initialisation")
    unet_skips: bool = _key(True, "skip connections from the first half of the layer sequence to the second")
    parallel_start: int = _key(-1, "blocks from this layer index on are parallel (attn and MLP read the same x); "
                                   "-1 = none")
    num_loops: int = _key(1, "how many times the looped layers run during training")
    loop_start: int = _key(-1, "first looped layer; -1 = loop the whole stack")
    loop_end: int = _key(-1, "last looped layer (inclusive)")
    eval_loops: int = _key(0, "loop count at evaluation; 0 = num_loops")
    rope_reverse: bool = _key(False, "rotate q/k pairs by −θ instead of +θ (the 2026-04-09 record's convention)")
    xsa_last_n: int = _key(0, "XSA on the last N blocks: remove from each head's output its own value direction")
    ln_scale: bool = _key(False, "multiply each block's branch inputs norm(x) by 1/sqrt(layer + 1)")
    skip_gates: bool = _key(False, "U-Net skips mix in by a learned sigmoid gate instead of being added")
    ortho_init: bool = _key(False, "orthogonal init of the non-zero-init block matrices with both sides >= 64")
    smear_gate: bool = _key(False, "SmearGate: emb_t += λ·σ(W·emb_t[:gate_window])·emb_{t−1} before the "
                                   "embedding's norm, skipped where token t is BOS; λ and W start at 0")
    attn_gate: bool = _key(False, "sparse attention output gate: head h's output × σ(attn_gate_scale·W_h·"
                                  "x[:gate_window]), x the attention's input; W starts at 0")
    attn_gate_scale: float = _key(1.0, "the sparse attention gate's pre-sigmoid scale")
    gate_window: int = _key(12, "leading residual dims that drive the smear and attention gates")
    two_lane_start: int = _key(-1, "decoder blocks from this layer index on run two lanes: attention reads lane 0, "
                                   "the MLP lane 1, with learned residual and post scales; the output is their mean; "
                                   "-1 = none")
    doc_max_len: int = _key(0, "attention only within documents: segments start at each BOS and every doc_max_len "
                               "tokens after it; 0 = causal attention over the whole row")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    @property
    def resolved_eval_loops(self) -> int:
        return self.eval_loops or self.num_loops

    def problems(self) -> list[str]:
        p = []
        positive = ("vocab_size", "model_dim", "num_layers", "num_heads", "num_kv_heads", "num_loops")
        p += [f"{k} must be positive, got {getattr(self, k)}" for k in positive if getattr(self, k) <= 0]
        if p:
            return p
        if self.model_dim % self.num_heads:
            p.append(f"model_dim {self.model_dim} is not divisible by num_heads {self.num_heads}")
        elif self.head_dim % 2:
            p.append(f"head_dim {self.head_dim} must be even for RoPE")
        if self.num_heads % self.num_kv_heads:
            p.append(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            p.append(f"mlp_activation must be one of {MLP_ACTIVATIONS}, got {self.mlp_activation!r}")
        if self.mlp_hidden <= 0:
            p.append(f"mlp_mult {self.mlp_mult} gives no MLP width")
        if not 0 <= self.rope_dims <= self.head_dim or self.rope_dims % 2:
            p.append(f"rope_dims must be even and in 0..head_dim ({self.head_dim}), got {self.rope_dims}")
        if self.logit_softcap <= 0:
            p.append(f"logit_softcap must be positive, got {self.logit_softcap}")
        if self.eval_loops < 0:
            p.append(f"eval_loops must be >= 0, got {self.eval_loops}")
        if not 0 <= self.xsa_last_n <= self.num_layers:
            p.append(f"xsa_last_n must be in 0..num_layers ({self.num_layers}), got {self.xsa_last_n}")
        if self.loop_start != -1 or self.loop_end != -1:
            if not 0 <= self.loop_start <= self.loop_end < self.num_layers:
                p.append(f"loop_start..loop_end must satisfy 0 <= {self.loop_start} <= {self.loop_end} "
                         f"< num_layers ({self.num_layers}); -1/-1 loops the whole stack")
        if self.parallel_start < -1 or self.parallel_start >= self.num_layers:
            p.append(f"parallel_start must be -1 or a layer index below num_layers, got {self.parallel_start}")
        p += self._frontier_problems()
        return p

    def _frontier_problems(self) -> list[str]:
        p = []
        if (self.smear_gate or self.attn_gate) and not 1 <= self.gate_window <= self.model_dim:
            p.append(f"gate_window must be in 1..model_dim ({self.model_dim}), got {self.gate_window}")
        if self.doc_max_len < 0:
            p.append(f"doc_max_len must be >= 0, got {self.doc_max_len}")
        if self.two_lane_start == -1:
            return p
        if not 0 <= self.two_lane_start < self.num_layers:
            p.append(f"two_lane_start must be -1 or a layer index below num_layers, got {self.two_lane_start}")
        if self.parallel_start != -1:
            p.append("parallel_start and two_lane_start are two different parallel decoders; set one of them to -1")
        # once the lanes start, every later block must be a two-lane block: no looped block may follow one
        if self.loop_start == -1 and max(self.num_loops, self.eval_loops) > 1:
            p.append("two_lane_start needs loop_start..loop_end when the stack loops (a looped whole stack would "
                     "run one-lane blocks after two-lane ones)")
        elif self.loop_start != -1 and self.two_lane_start <= self.loop_end:
            p.append(f"two_lane_start ({self.two_lane_start}) must be above loop_end ({self.loop_end}): a looped "
                     "block would run after the lanes start")
        return p


@dataclass(frozen=True)
class TrainConfig(ModelConfig):
    """Model plus optimisation, schedule, data and logging settings (all flat keys)."""

    iterations: int = _key(20000, "optimizer steps, unless max_wallclock_seconds stops training first")
    max_wallclock_seconds: float = _key(0.0, "cap on training time (compile warm-up and validation excluded); "
                                             "0 = none")
    gptq_reserve_seconds: float = _key(0.0, "of max_wallclock_seconds, kept for GPTQ calibration and quantization")
    train_batch_tokens: int = _key(524_288, "global tokens per optimizer step, whatever the number of ranks")
    train_seq_len: int = _key(1024, "tokens per training sequence, and per validation window")
    grad_accum: int = _key(8, "micro-batches per step over all ranks; each rank runs grad_accum / world_size")
    seed: int = _key(1337, "seeds the weight initialisation and the order of the training batches")
    val_every: int = _key(0, "validate every N steps (and at the end); 0 = only at the end")
    val_max_tokens: int = _key(0, "periodic validation on the first N validation tokens; 0 = all")
    log_every: int = _key(50, "print and record the training loss every N steps")
    checkpoint_every: int = _key(0, "also write ckpt.safetensors every N steps; 0 = only at the end and on signals")
    ema_decay: float = _key(0.997, "decay of the exponential moving average of the weights, per step")
    ema_start_frac: float = _key(0.0, "start the EMA once this fraction of the run (steps or time) has passed")
    warmup_steps: int = _key(0, "linear learning-rate warm-up")
    warmdown_frac: float = _key(0.2, "linear decay over the last fraction of the run (steps or time budget)")
    min_lr_frac: float = _key(0.0, "learning-rate floor, as a fraction of each group's rate")
    min_lr_clamp: bool = _key(False, "warm-down max(linear to 0, min_lr_frac) (the 04-27 record) instead of linear "
                                     "from 1 to min_lr_frac")
    enable_looping_at: float = _key(0.0, "run the loops only once this fraction of the run has passed")
    compile: bool = _key(True, "torch.compile the model and Newton–Schulz (any device; eval follows it by default)")
    compile_backend: str = _key("inductor", "inductor; aot_eager compiles in seconds (same graphs and guards)")
    compile_warmup_steps: int = _key(20, "when compiled, steps of the timed loop's own step on random tokens before "
                                         "the clock, at least one per loop state; weights, EMA, optimizer and RNG "
                                         "are restored bit-exactly after them")
    embed_lr: float = _key(0.05, "Adam, tied embedding")
    scalar_lr: float = _key(0.04, "Adam, vectors and control tensors")
    matrix_lr: float = _key(0.04, "Muon, 2-D block matrices")
    beta1: float = _key(0.9, "Adam β1")
    beta2: float = _key(0.95, "Adam β2")
    adam_eps: float = _key(1e-8, "Adam ε")
    embed_weight_decay: float = _key(0.0, "AdamW decoupled decay of the tied embedding")
    scalar_weight_decay: float = _key(0.0, "AdamW decoupled decay of vectors and control tensors")
    muon_momentum: float = _key(0.95, "Muon momentum once warmed up")
    muon_momentum_warmup_start: float = _key(0.85, "Muon momentum at step 0, raised linearly to muon_momentum")
    muon_momentum_warmup_steps: int = _key(500, "steps of the Muon momentum warm-up; 0 = none")
    muon_backend_steps: int = _key(5, "Newton–Schulz iterations")
    muon_row_norm: bool = _key(False, "MuonEq-R: unit-norm rows of the momentum direction before Newton–Schulz")
    muon_ns_coeffs: str = _key("quintic", "Newton–Schulz coefficients: quintic (3.4445, −4.7750, 2.0315) at every "
                                          "step, or polar_express: one tuple per step (at most 5)")
    muon_bf16_momentum: bool = _key(False, "round each gradient to bfloat16 and keep Muon's momentum and "
                                           "direction in bfloat16 (the 2026-04-27 record)")
    muon_weight_decay: float = _key(0.0, "Muon decoupled weight decay")
    grad_clip_norm: float = _key(0.0, "clip the global gradient norm to this; 0 = no clipping")
    train_packed_rows: bool = _key(False, "each micro-batch is one row of train_batch_tokens / grad_accum tokens "
                                          "(documents packed end to end; doc_max_len keeps attention inside each) "
                                          "instead of rows of train_seq_len")

    def problems(self) -> list[str]:
        p = super().problems()
        positive = ("iterations", "train_batch_tokens", "train_seq_len", "grad_accum", "log_every")
        p += [f"{k} must be positive, got {getattr(self, k)}" for k in positive if getattr(self, k) <= 0]
        if not p and self.train_batch_tokens % (self.grad_accum * self.train_seq_len):
            p.append(f"train_batch_tokens {self.train_batch_tokens} is not a multiple of grad_accum × train_seq_len "
                     f"({self.grad_accum} × {self.train_seq_len})")
        for k in ("ema_start_frac", "warmdown_frac", "min_lr_frac", "enable_looping_at"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                p.append(f"{k} must be in [0, 1], got {getattr(self, k)}")
        if not 0.0 <= self.ema_decay < 1.0:
            p.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        nonneg = ("max_wallclock_seconds", "gptq_reserve_seconds", "embed_weight_decay", "scalar_weight_decay",
                  "muon_weight_decay", "val_every", "val_max_tokens", "checkpoint_every", "warmup_steps",
                  "compile_warmup_steps", "muon_momentum_warmup_steps", "grad_clip_norm")
        p += [f"{k} must be >= 0, got {getattr(self, k)}" for k in nonneg if getattr(self, k) < 0]
        if self.muon_ns_coeffs not in NS_SCHEDULES:
            p.append(f"muon_ns_coeffs must be one of {NS_SCHEDULES}, got {self.muon_ns_coeffs!r}")
        elif self.muon_ns_coeffs == "polar_express" and self.muon_backend_steps > POLAR_EXPRESS_STEPS:
            p.append(f"muon_backend_steps must be at most {POLAR_EXPRESS_STEPS} with polar_express coefficients "
                     f"(one tuple per step), got {self.muon_backend_steps}")
        if self.compile_backend not in COMPILE_BACKENDS:
            p.append(f"compile_backend must be one of {COMPILE_BACKENDS}, got {self.compile_backend!r}")
        if self.gptq_reserve_seconds and not 0 < self.gptq_reserve_seconds < self.max_wallclock_seconds:
            p.append(f"gptq_reserve_seconds {self.gptq_reserve_seconds} must be below max_wallclock_seconds "
                     f"{self.max_wallclock_seconds} (it is carved out of that cap)")
        return p

    @property
    def train_row_len(self) -> int:
        """Tokens per training row: the whole micro-batch when packed, else train_seq_len."""
        return self.train_batch_tokens // self.grad_accum if self.train_packed_rows else self.train_seq_len

    @property
    def train_seconds(self) -> float:
        """The training clock: the wall-clock cap less the GPTQ reserve; 0 = no cap."""
        return self.max_wallclock_seconds - self.gptq_reserve_seconds if self.max_wallclock_seconds else 0.0

    def model_config(self) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("golfctl.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    resource = resources.files("golfctl.presets") / f"{name}.toml"
    if not resource.is_file():
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return tomllib.loads(resource.read_text(encoding="utf-8"))


def resolve_config(cls: type, preset: str | None = None, config_file: Path | None = None,
                   overrides: tuple[str, ...] = ()) -> Any:
    """Merge preset < config file < `key=value` overrides into a validated `cls` instance."""
    return resolve_sources(cls, preset, config_file, overrides)[0]


def resolve_sources(cls: type, preset: str | None = None, config_file: Path | None = None,
                    overrides: tuple[str, ...] = (), base: dict[str, Any] | None = None,
                    base_source: str = "default") -> tuple[Any, dict[str, str]]:
    """`resolve_config`, over `base` values in place of the defaults (a checkpoint's config on
    resume), and where each field's value came from: "default", `base_source`, "preset NAME",
    "file PATH" or "--set"."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if base:
        _merge(merged, sources, base, base_source)
    if preset:
        _merge(merged, sources, load_preset(preset), f"preset {preset}")
    if config_file:
        _merge(merged, sources, _read_toml(Path(config_file)), f"file {config_file}")
    problems: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            problems.append(f"--set {item!r} is not key=value")
            continue
        _merge(merged, sources, {key.strip(): _parse_value(raw.strip())}, "--set")
    cfg = config_from_dict(cls, merged, sources, problems)
    return cfg, {f.name: sources.get(f.name, "default") for f in fields(cls)}


def config_from_dict(cls: type, values: dict[str, Any], sources: dict[str, str] | None = None,
                     problems: list[str] | None = None) -> Any:
    """Build `cls` from flat values, reporting every unknown key, wrong type and bad value at once."""
    sources = sources or {}
    problems = list(problems or [])
    types = {f.name: f.type for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        where = f" (from {sources[key]})" if key in sources else ""
        if key not in types:
            problems.append(f"unknown key {key!r}{where}")
            continue
        coerced = _coerce(value, types[key])
        if coerced is None:
            problems.append(f"{key} must be {types[key]}, got {value!r}{where}")
        else:
            kwargs[key] = coerced
    if not problems:
        cfg = cls(**kwargs)
        non_finite = [f"{k} must be a finite number, got {v}" + (f" (from {sources[k]})" if k in sources else "")
                      for k, v in kwargs.items() if isinstance(v, float) and not math.isfinite(v)]
        problems += non_finite or cfg.problems()  # range checks say nothing useful about inf or nan
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))
    return cls(**kwargs)


# Keys that earlier golfctl releases wrote into files, and the keys that replaced them.
RENAMED_KEYS = {"adam_weight_decay": ("embed_weight_decay", "scalar_weight_decay")}


def stored_config(values: dict[str, Any]) -> dict[str, Any]:
    """A config read back from a file of any golfctl release, in today's keys: renamed keys mapped
    and every field added since at its default (new fields default to the old behaviour)."""
    current = dict(values)
    for old, new in RENAMED_KEYS.items():
        if old in current:
            value = current.pop(old)
            current.update({key: value for key in new if key not in current})
    return {**dataclasses.asdict(TrainConfig()), **current}


def config_to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def config_lines(cfg: Any) -> list[str]:
    """The resolved config as `key = value` lines, for the console and logs."""
    return [f"  {f.name} = {getattr(cfg, f.name)!r}" for f in fields(cfg)]


def config_table(cfg: TrainConfig, sources: dict[str, str]) -> list[str]:
    """Every key of `cfg` as `key = value  # source  help`, in three groups: model, training, run
    control. The lines are a TOML file that `--config` reads back as the same config."""
    model = {f.name for f in fields(ModelConfig)}
    groups = {
        "model: the network's shape, stored with its weights": lambda k: k in model,
        "training: optimisation, schedule, batches, seed": lambda k: k not in model and k not in RUN_CONTROL_KEYS,
        "run control: logging, validation, checkpoints, warm-up; the only keys train --resume may change":
            lambda k: k in RUN_CONTROL_KEYS,
    }
    rows = [(f.name, toml_value(getattr(cfg, f.name)), sources.get(f.name, "default"), f.metadata.get("help", ""))
            for f in fields(cfg)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines: list[str] = []
    for title, member in groups.items():
        lines += [""] if lines else []
        lines.append(f"# {title}")
        lines += [f"{k:<{widths[0]}} = {v:<{widths[1]}}  # {s:<{widths[2]}}  {h}".rstrip()
                  for k, v, s, h in rows if member(k)]
    return lines


def toml_value(value: Any) -> str:
    """`value` as a TOML literal, the form `--set` and config files take."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)  # int, or float: repr round-trips, and inf/nan are TOML's own spellings


def _merge(merged: dict, sources: dict, new: dict, source: str) -> None:
    for key, value in new.items():
        merged[key] = value
        sources[key] = source


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"config file {path} has tables {nested}; keys are flat (e.g. model_dim = 512)")
    return data


def _parse_value(raw: str) -> Any:
    """`--set` values are TOML literals (1e-3, true, "relu2"); a bare word is taken as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(value: Any, type_name: str) -> Any:
    """The value as the field's type, or None if it is not one (no silent float→int truncation)."""
    if type_name == "bool":
        return value if isinstance(value, bool) else None
    if type_name == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if type_name == "float":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if type_name == "str":
        return value if isinstance(value, str) else None
    raise TypeError(f"unsupported config field type {type_name}")
