"""Stage `train`: shards → `RUNDIR/ckpt.safetensors` (weights, EMA, optimizer, loader, step).

Runs as one process or under `torchrun --nproc_per_node=N`. The global batch is fixed in
tokens and split into `grad_accum` micro-batches shared out over the ranks, so the number of
ranks changes nothing but speed. The run's progress is the larger of step/iterations and
elapsed over the training clock (max_wallclock_seconds less gptq_reserve_seconds); the
warm-down, the EMA start and the switch to looping are defined on that progress, so a
wall-clock cap can never leave them unreached or misplaced.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from golfctl.attention import select_attention
from golfctl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from golfctl.compile import Compiler
from golfctl.config import RUN_CONTROL_KEYS, TrainConfig, config_lines
from golfctl.dataset import dataset_identity, open_dataset
from golfctl.device import peak_memory_bytes, synchronize
from golfctl.distributed import (DistContext, agree, all_reduce_float64, all_reduce_gradients, mean_over_ranks,
                                 on_main, run_distributed)
from golfctl.ema import EMA
from golfctl.errors import UserError, refuse_problems
from golfctl.fileio import append_line
from golfctl.loader import TrainBatches, micro_batch
from golfctl.model import GPT, parameter_groups, unet_layout
from golfctl.optim import Optimizers, build_optimizers, lr_multiplier, muon_momentum, muon_update
from golfctl.outputs import check_output_folder
from golfctl.progress import format_duration, utc_now
from golfctl.provenance import provenance
from golfctl.precision import autocast
from golfctl.scoring import Sums, score_plain
from golfctl.validation import load_validation_set

CHECKPOINT_NAME = "ckpt.safetensors"
METRICS_NAME = "metrics.jsonl"
LOG_NAME = "train.log"  # the console lines, as a records folder ships them


@dataclass(frozen=True)
class TrainRun:
    # Resolved from --preset < --config < --set by the CLI: hyper-parameters never become options.
    cfg: TrainConfig = field(metadata={"cli": False})
    data: Path = field(metadata={"help": "Dataset folder (golfctl or official)."})
    out: Path = field(metadata={"help": "Run folder (ckpt.safetensors, metrics.jsonl)."})
    resume: bool = field(default=False, metadata={"help": "Continue the checkpoint in --out exactly where it stopped."})
    tokenizer: Path | None = field(default=None, metadata={
        "help": "Tokenizer .model for datasets that carry none (official challenge folders)."})
    stop_after_steps: int = field(default=0, metadata={
        "help": "Checkpoint and stop after N steps of this invocation (pre-emptible jobs); 0 runs to the end."})

    def problems(self) -> list[str]:
        return [f"--stop-after-steps must be >= 0, got {self.stop_after_steps}"] if self.stop_after_steps < 0 else []


def run_train(run: TrainRun) -> dict:
    """Train (or resume) a run; return a summary of where and why it stopped."""
    refuse_problems(run.problems())
    check_output_folder(run.out, inputs=(run.data, run.tokenizer))
    return run_distributed(lambda ctx: _Trainer(run, ctx).train())


class _Trainer:
    def __init__(self, run: TrainRun, ctx: DistContext):
        self.run, self.cfg, self.ctx = run, run.cfg, ctx
        self.dataset = open_dataset(run.data)
        self.val = load_validation_set(self.dataset, run.tokenizer, self.cfg.vocab_size, self.cfg.train_seq_len,
                                       ctx.device)
        self.batches = TrainBatches(self.dataset.splits["train"], self.cfg.train_batch_tokens, self.cfg.train_row_len,
                                    self.cfg.grad_accum, self.cfg.seed, ctx.rank, ctx.world_size,
                                    vocab_size=self.cfg.vocab_size)
        self.out = Path(run.out)
        self.ckpt_path = self.out / CHECKPOINT_NAME
        agree(ctx, "config, dataset or run folder", json.dumps(
            [dataclasses.asdict(self.cfg), dataset_identity(self.dataset), str(self.out.resolve()), run.resume]))
        self._check_run_folder()
        torch.manual_seed(self.cfg.seed)
        self.model = GPT(self.cfg.model_config()).to(ctx.device)
        self.compiler = Compiler(self.cfg.compile, self.cfg.compile_backend)
        self.forward = self.compiler(self.model)
        self.optimizers: Optimizers = build_optimizers(parameter_groups(self.model), self.cfg, ctx.device,
                                                       self.compiler(muon_update))
        self.ema = EMA(self.model)
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, across resumes
        self.stop_signal = 0
        self.loops = 0  # the loop count of the last step run (0: none yet)
        self.reported_recompiles = 0
        self.phases_logged: set[str] = set()  # per process: after a resume, readers keep each phase's first record
        if run.resume:
            self._restore()
        self._say(select_attention(ctx.device))
        self._warm_up()

    # ---- set-up -------------------------------------------------------------------------

    def _check_run_folder(self) -> None:
        if self.run.resume and not self.ckpt_path.is_file():
            raise UserError(f"--resume: {self.ckpt_path} does not exist; start the run without --resume")
        if not self.run.resume and self.ckpt_path.exists():
            raise UserError(f"{self.out} already holds a checkpoint; pass --resume to continue it or choose another --out")
        on_main(self.ctx, lambda: self.out.mkdir(parents=True, exist_ok=True), f"creating {self.out}")

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.ckpt_path)
        ours = dataclasses.asdict(self.cfg)
        changed = sorted(k for k in set(ours) | set(ckpt.config)
                         if k not in RUN_CONTROL_KEYS and ours.get(k) != ckpt.config.get(k))
        if changed:
            detail = ", ".join(f"{k}: {ckpt.config.get(k)!r} → {ours.get(k)!r}" for k in changed)
            raise UserError(f"{self.ckpt_path} was trained with another config ({detail}); "
                            "resume with the same preset and --set values, or start a new --out")
        if ckpt.dataset != dataset_identity(self.dataset):
            raise UserError(f"{self.ckpt_path} was trained on another dataset than {self.run.data}; "
                            "resume with the same --data")
        if ckpt.loader != self.batches.state.as_dict():
            raise UserError(f"{self.ckpt_path} has loader state {ckpt.loader}, this data gives "
                            f"{self.batches.state.as_dict()}; resume with the same --data")
        self.model.load_state_dict(ckpt.tensors["model"])
        self.ema.load_state_dict(ckpt.tensors["ema"])
        self.optimizers.load_state_tensors({f"optim.{k}": v for k, v in ckpt.tensors["optim"].items()})
        torch.set_rng_state(ckpt.tensors["rng"]["torch"])
        self.step, self.elapsed = ckpt.step, ckpt.elapsed_seconds
        self._say(f"train: resumed {self.ckpt_path} at step {self.step} ({format_duration(self.elapsed)} trained)")
        # records a pre-empted run logged after this checkpoint are replayed from here: readers drop them
        self._metrics({"kind": "resume", "step": self.step, "elapsed_s": self.elapsed})

    def _warm_up(self) -> None:
        """Compile before the clock: the timed loop's own step (`_train_step` on `micro_batch` views,
        so the same shapes, strides, dtypes, grad flags and autocast) on random tokens, in every
        loop state the run will use; then weights, EMA, optimizer state and RNG are restored
        bit-exactly, so a run with warm-up trains exactly as one without."""
        cfg = self.cfg
        if not self.compiler.enabled or not cfg.compile_warmup_steps:
            self._say("train: compile off" if not self.compiler.enabled else
                      "train: no compile warm-up (compile_warmup_steps = 0): graphs compile inside the clock")
            return
        weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        ema = {k: v.clone() for k, v in self.ema.state_dict().items()}
        optimizer = self.optimizers.state_tensors()
        rng = torch.get_rng_state()
        progress_by_state = {self._loops(p): p for p in (1.0, 0.0)}  # one progress value per loop state
        generator = torch.Generator().manual_seed(cfg.seed + 1)

        def random_batches():
            for _ in range(self.batches.local_micro_batches):
                tokens = torch.randint(0, cfg.vocab_size, (self.batches.micro_tokens + 1,), generator=generator)
                yield micro_batch(tokens, cfg.train_row_len, self.ctx.device)

        def run():
            states = list(progress_by_state.items())
            for i in range(max(cfg.compile_warmup_steps, len(states))):
                loops, progress = states[i % len(states)]
                self._train_step(loops, progress, random_batches())

        self.compiler.warm_up(run, self.ctx.device)
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(ema)
        self.optimizers.load_state_tensors(optimizer)
        torch.set_rng_state(rng)
        self._say(f"train: compile warm-up done: {self.compiler.describe()} "
                  f"(loop states {sorted(progress_by_state)}; weights, optimizer and RNG restored)")
        self._metrics({"kind": "compile", **self.compiler.stats()})

    # ---- the loop -------------------------------------------------------------------------

    def train(self) -> dict:
        cfg = self.cfg
        self._say("train: resolved config\n" + "\n".join(config_lines(cfg)))
        self._say(f"train: {sum(p.numel() for p in self.model.parameters()):,} parameters on {self.ctx.device} × "
                  f"{self.ctx.world_size} rank(s), {self.batches.local_micro_batches} micro-batch(es) per rank per step")
        previous = self._install_signal_handlers()
        stopped, steps_this_run = "iterations", 0
        log_time, log_step = self.elapsed, self.step
        try:
            while self.step < cfg.iterations:
                progress = self._progress()
                if cfg.train_seconds and self.elapsed >= cfg.train_seconds:
                    stopped = "wallclock"
                    break
                self._log_phases(progress)
                loops = self._loops(progress)
                if loops != self.loops and loops > 1:
                    self._log_looping(loops, progress)
                self.loops = loops
                start = time.perf_counter()
                try:
                    loss = self._train_step(loops, progress, self.batches.micro_batches(self.step, self.ctx.device))
                except _Diverged as diverged:
                    self._stop_diverged(diverged.loss)
                synchronize(self.ctx.device)
                self.elapsed += self._agreed(time.perf_counter() - start)
                self.step += 1
                steps_this_run += 1
                if self.step % cfg.log_every == 0 or self.step == 1:
                    self._log_train(loss, progress, log_time, log_step)
                    log_time, log_step = self.elapsed, self.step
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.iterations:
                    self._validate(limit=cfg.val_max_tokens)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._save()
                if self._stop_requested():
                    stopped = "signal"
                    break
                if self.run.stop_after_steps and steps_this_run >= self.run.stop_after_steps:
                    stopped = "stop_after_steps"
                    break
        finally:
            signal_restore(previous)
        self._save()
        summary = {"step": self.step, "elapsed_seconds": self.elapsed, "stopped": stopped,
                   "signal": self.stop_signal, "checkpoint": str(self.ckpt_path), **self.compiler.stats(),
                   "peak_memory_bytes": peak_memory_bytes(self.ctx.device)}
        if stopped in ("iterations", "wallclock"):
            result = self._validate(limit=0)
            summary.update(val_loss=result.loss, val_bpb=result.bpb)
            self._metrics({"kind": "end", **summary})
        self._log_end(summary)
        return summary

    def _progress(self) -> float:
        by_steps = self.step / self.cfg.iterations
        by_time = self.elapsed / self.cfg.train_seconds if self.cfg.train_seconds else 0.0
        return min(1.0, max(by_steps, by_time))

    def _loops(self, progress: float) -> int:
        """The looped layers run their full count only once `enable_looping_at` of the run has passed."""
        return self.cfg.num_loops if progress >= self.cfg.enable_looping_at else 1

    def _train_step(self, loops: int, progress: float, micro_batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """One optimizer step over this rank's micro-batches; returns the step's mean loss."""
        cfg = self.cfg
        self.optimizers.set_schedule(lr_multiplier(self.step, progress, cfg), self.step)
        scale = 1.0 / self.batches.local_micro_batches
        loss_sum = torch.zeros((), device=self.ctx.device)
        for x, y in micro_batches:
            with autocast(self.ctx.device):
                loss = self.forward(x, y, loops=loops)
            (loss * scale).backward()
            loss_sum += loss.detach()
        all_reduce_gradients(list(self.model.parameters()), self.ctx, mean=True)
        if not _finite_gradients(self.model):  # the same on every rank: the gradients are all-reduced
            self.optimizers.zero_grad()
            raise _Diverged(float(loss_sum * scale))
        self.optimizers.clip_grad_norm_(cfg.grad_clip_norm)
        self.optimizers.step()
        self.optimizers.zero_grad()
        self.ema.update(self.model, cfg.ema_decay if progress >= cfg.ema_start_frac else 0.0)
        return loss_sum * scale

    def _stop_diverged(self, loss: float) -> None:
        """Save the last finite state (the failed step was not applied) and stop with one Error: line."""
        self._save()
        raise UserError(f"training diverged: step {self.step + 1} has a non-finite loss or gradient (loss {loss}); "
                        f"{self.ckpt_path} holds the last finite state (step {self.step}). Lower the learning rates "
                        "(matrix_lr, embed_lr, scalar_lr) or raise warmup_steps, and start a new run")

    def _agreed(self, seconds: float) -> float:
        """Ranks must agree on time, or they would stop at different steps: use the mean."""
        return mean_over_ranks(seconds, self.ctx)

    def _stop_requested(self) -> bool:
        flag, = all_reduce_float64([float(self.stop_signal != 0)], self.ctx)
        return flag > 0

    # ---- logging, validation, checkpoints ----------------------------------------------------

    def _log_train(self, loss: torch.Tensor, step_progress: float, log_time: float, log_step: int) -> None:
        value = loss.item()
        value = mean_over_ranks(value, self.ctx)
        seconds = max(self.elapsed - log_time, 1e-9)
        tokens_per_s = (self.step - log_step) * self.cfg.train_batch_tokens / seconds
        progress = self._progress()
        eta = self.elapsed * (1 - progress) / progress if progress > 0 else 0.0
        lr = lr_multiplier(self.step - 1, step_progress, self.cfg)  # the rate the last step used
        self._say(f"step {self.step}/{self.cfg.iterations}  loss {value:.4f}  lr× {lr:.3f}  "
                  f"{tokens_per_s:,.0f} tok/s  elapsed {format_duration(self.elapsed)}  ETA {format_duration(eta)}")
        self._log(f"step:{self.step}/{self.cfg.iterations} train_loss:{value:.4f} {self._train_time()}")
        self._metrics({"kind": "train", "step": self.step, "loss": value, "lr_mult": lr,
                       "momentum": muon_momentum(self.step - 1, self.cfg), "tokens_per_s": tokens_per_s,
                       "elapsed_s": self.elapsed, "eta_s": eta, "progress": progress,
                       "recompiles": self.compiler.recompiles})
        if self.compiler.enabled and self.compiler.recompiles > self.reported_recompiles:
            self.reported_recompiles = self.compiler.recompiles
            self._say(f"train: warning: {self.reported_recompiles} graph(s) compiled after the warm-up, inside the "
                      "clock (TORCH_LOGS=recompiles names the guard that failed)")

    def _log_phases(self, progress: float) -> None:
        """A "phase" record at the first step of the warm-down and of the EMA's averaging (the
        conditions lr_multiplier and _train_step apply), for plots."""
        cfg = self.cfg
        started = {"warmdown": progress > 1.0 - cfg.warmdown_frac,
                   "ema": cfg.ema_decay > 0 and progress >= cfg.ema_start_frac}
        for phase, now in started.items():
            if now and phase not in self.phases_logged:
                self.phases_logged.add(phase)
                self._metrics({"kind": "phase", "phase": phase, "step": self.step, "progress": progress})

    def _log_looping(self, loops: int, progress: float) -> None:
        """The layer sequence from here on, in the record's log format (`layer_loop:enabled …`)."""
        encoder, decoder = unet_layout(self.cfg, loops)
        self._say(f"layer_loop:enabled step:{self.step} frac:{progress:.3f} encoder:{encoder} decoder:{decoder}")
        self._metrics({"kind": "loop", "step": self.step, "progress": progress, "loops": loops,
                       "encoder": encoder, "decoder": decoder})

    def _validate(self, limit: int) -> Sums:
        tokens = self.val.tokens[: limit + 1] if limit else self.val.tokens
        loops = self._loops(self._progress())
        start = time.perf_counter()
        result = score_plain(self.model, tokens, self.val.tables, self.cfg.train_seq_len, self.ctx, loops)
        self._say(f"val step {self.step}: loss {result.loss:.4f}  bpb {result.bpb:.4f}  "
                  f"({result.tokens:,} tokens, {time.perf_counter() - start:.1f}s)")
        self._log(f"step:{self.step}/{self.cfg.iterations} val_loss:{result.loss:.4f} val_bpb:{result.bpb:.4f} "
                  f"{self._train_time()}")
        self._metrics({"kind": "val", "step": self.step, "val_loss": result.loss, "val_bpb": result.bpb,
                       "tokens": result.tokens, "bytes": result.bytes, "loops": loops})
        return result

    def _save(self) -> None:
        on_main(self.ctx, lambda: save_checkpoint(self.ckpt_path, Checkpoint(
                config=dataclasses.asdict(self.cfg),
                step=self.step,
                elapsed_seconds=self.elapsed,
                loader=self.batches.state.as_dict(),
                dataset=dataset_identity(self.dataset),
                tokenizer_sha256=self.val.tokenizer_sha256,
                provenance=provenance(self.ctx.device, self.ctx.world_size),
                tensors={
                    "model": self.model.state_dict(),
                    "ema": self.ema.state_dict(),
                    "optim": {k.removeprefix("optim."): v for k, v in self.optimizers.state_tensors().items()},
                    "rng": {"torch": torch.get_rng_state()},
                },
            )), f"writing {self.ckpt_path}")

    def _metrics(self, record: dict) -> None:
        on_main(self.ctx, lambda: append_line(self.out / METRICS_NAME, json.dumps(record)),
                f"writing {METRICS_NAME}")

    def _train_time(self) -> str:
        """Training time so far (across resumes, without validation), as the challenge's step lines give it."""
        train_ms = 1000.0 * self.elapsed
        return f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(self.step, 1):.2f}ms"

    def _log_end(self, summary: dict) -> None:
        """The last lines: the challenge's (`stopping_early: wallclock_cap …`, peak memory), then golfctl's."""
        stopped, steps = summary["stopped"], f"{self.step}/{self.cfg.iterations}"
        if stopped == "wallclock":
            self._say(f"stopping_early: wallclock_cap train_time:{1000.0 * self.elapsed:.0f}ms step:{steps}")
        device = self.ctx.device
        if device.type == "cuda":
            self._say(f"peak memory allocated: {torch.cuda.max_memory_allocated(device) // 1024 // 1024} MiB "
                      f"reserved: {torch.cuda.max_memory_reserved(device) // 1024 // 1024} MiB")
        else:
            self._say(f"peak memory rss: {peak_memory_bytes(device) // 1024 // 1024} MiB "
                      f"(rank 0 process's peak resident set on {device.type}, not CUDA memory)")
        if "val_bpb" in summary:
            self._say(f"train: done ({stopped}) at step {steps}, {format_duration(self.elapsed)} trained, "
                      f"val_loss {summary['val_loss']:.4f} val_bpb {summary['val_bpb']:.4f}; {self.ckpt_path}")
        else:
            self._say(f"train: stopped ({stopped}) at step {self.step}; continue with --resume")

    _log_started = False  # this invocation has written its header line to train.log

    def _say(self, line: str) -> None:
        """A line on the console and in train.log (rank 0)."""
        if self.ctx.is_main:
            print(line, file=sys.stderr, flush=True)
            self._log(line)

    def _log(self, line: str) -> None:
        """A line in train.log only (rank 0), after a header line that starts each invocation's lines."""
        if self.ctx.is_main and self.out.is_dir():
            if not self._log_started:
                self._log_started = True
                how = f"--resume of {self.ckpt_path}" if self.run.resume else f"new run in {self.out}"
                append_line(self.out / LOG_NAME, f"==== golfctl train {utc_now()}: {how}")
            append_line(self.out / LOG_NAME, line)

    def _install_signal_handlers(self) -> dict:
        def request_stop(signum, _frame):
            self.stop_signal = signum

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, request_stop)
        return previous


class _Diverged(Exception):
    """A step's gradients are not finite; carries the step's mean loss."""

    def __init__(self, loss: float):
        super().__init__(loss)
        self.loss = loss


def _finite_gradients(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


def signal_restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
