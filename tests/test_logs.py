"""Logs and counts a participant reads: train.log in the challenge's format, eval.log, the global
progress count of several ranks, and the report's unigram reference over what was scored."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import sys
from collections import Counter
from itertools import accumulate
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from golfctl.bpb import ByteTables
from golfctl.dataset import open_dataset
from golfctl.distributed import DistContext, share
from golfctl.errors import UserError
from golfctl.progress import Progress, global_steps, tee_stderr
from golfctl.report import report_lines
from golfctl.scoring import Scorer, sliding_windows
from scoring_problem import TABLES, stream, tiny_model
from stages.evaluate import EvalConfig, eval_log_path, run_eval
from stages.quantize import QuantizeConfig, run_quantize
from stages.train import LOG_NAME, TrainRun, _Trainer, run_train
from test_train import small_config

# The lines of the challenge's train_gpt.py (openai/parameter-golf), as its log parsers read them.
TRAIN_LINE = re.compile(r"^step:(\d+)/(\d+) train_loss:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")
VAL_LINE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d{4}) val_bpb:(\d+\.\d{4}) train_time:(\d+)ms "
                      r"step_avg:(\d+\.\d{2})ms$")
PEAK_LINE = re.compile(r"^peak memory (allocated: \d+ MiB reserved: \d+ MiB|rss: \d+ MiB \(.*\))$")
STOPPING_LINE = re.compile(r"^stopping_early: wallclock_cap train_time:(\d+)ms step:(\d+)/(\d+)$")


def matches(pattern: re.Pattern, lines: list[str]) -> list[re.Match]:
    return [m for m in map(pattern.match, lines) if m]


def test_train_log_carries_the_challenge_lines_across_a_signal_and_a_resume(tmp_path, small_dataset, monkeypatch):
    """A run stopped by SIGTERM after its first step, then resumed: train.log holds golfctl's console
    lines and the challenge's step, validation and peak-memory lines, appended across the resume."""
    cfg = small_config(iterations=2, log_every=1, val_every=1, val_max_tokens=256)
    out = tmp_path / "run"
    train_step = _Trainer._train_step

    def step_then_sigterm(self, *args, **kwargs):
        loss = train_step(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the run's own handler takes it: stop after this step
        return loss

    monkeypatch.setattr(_Trainer, "_train_step", step_then_sigterm)
    first = run_train(TrainRun(cfg=cfg, data=small_dataset, out=out))
    assert first["stopped"] == "signal" and first["step"] == 1
    monkeypatch.undo()
    before = (out / LOG_NAME).read_text(encoding="utf-8")
    lines = before.splitlines()
    assert lines[0].startswith("==== golfctl train ") and lines[0].endswith(f"new run in {out}")
    assert [m[1] for m in matches(TRAIN_LINE, lines)] == ["1"] and [m[1] for m in matches(VAL_LINE, lines)] == ["1"]
    assert len(matches(PEAK_LINE, lines)) == 1
    assert lines[-1] == "train: stopped (signal) at step 1; continue with --resume"
    assert "step 1/2  loss " in before  # golfctl's own console line stays

    summary = run_train(TrainRun(cfg=cfg, data=small_dataset, out=out, resume=True))
    text = (out / LOG_NAME).read_text(encoding="utf-8")
    assert text.startswith(before), "train.log is appended to, never rewritten"
    resumed = text[len(before):].splitlines()
    assert resumed[0].startswith("==== golfctl train ") and resumed[0].endswith(f"--resume of {out}/ckpt.safetensors")
    assert resumed[1].startswith(f"train: resumed {out / 'ckpt.safetensors'} at step 1")
    lines = text.splitlines()
    train_lines, val_lines = matches(TRAIN_LINE, lines), matches(VAL_LINE, lines)
    assert [(m[1], m[2]) for m in train_lines] == [("1", "2"), ("2", "2")]
    assert [m[1] for m in val_lines] == ["1", "2"]  # periodic, then the final full validation
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in metrics if r["kind"] == "train"]
    assert [float(m[3]) for m in train_lines] == [round(v, 4) for v in losses]
    final = val_lines[-1]
    assert (float(final[3]), float(final[4])) == (round(summary["val_loss"], 4), round(summary["val_bpb"], 4))
    train_ms = 1000 * summary["elapsed_seconds"]
    assert int(final[5]) == round(train_ms) and float(final[6]) == pytest.approx(train_ms / 2, abs=0.006)
    assert len(matches(PEAK_LINE, lines)) == 2  # one per invocation
    assert lines[-1].startswith("train: done (iterations) at step 2/2")
    assert f"val_bpb {summary['val_bpb']:.4f}" in lines[-1]
    assert not matches(STOPPING_LINE, lines)


def test_wall_clock_stop_logs_stopping_early(tmp_path, small_dataset):
    out = tmp_path / "run"
    summary = run_train(TrainRun(cfg=small_config(iterations=50, max_wallclock_seconds=1e-6), data=small_dataset,
                                 out=out))
    assert summary["stopped"] == "wallclock" and summary["step"] == 1
    lines = (out / LOG_NAME).read_text(encoding="utf-8").splitlines()
    stopping = matches(STOPPING_LINE, lines)
    assert [(m[2], m[3]) for m in stopping] == [("1", "50")]
    # in the challenge's order: the last validation, stopping_early, peak memory
    val, peak = matches(VAL_LINE, lines)[-1], matches(PEAK_LINE, lines)[-1]
    assert lines.index(val.string) < lines.index(stopping[0].string) < lines.index(peak.string)


def test_global_progress_counts_never_pass_the_total():
    """2,048 targets, seq_len 256, stride 64, 2 ranks: rank 0's share holds the first window, which
    scores 256 targets against the others' 64, so its own count times 2 showed 2,176/2,048."""
    windows = sliding_windows(2049, 256, 64)
    ranks = [DistContext(r, 2, r, torch.device("cpu")) for r in range(2)]
    assert sum(w.n_scored for w in share(windows, ranks[0])) * 2 == 2176  # the old count
    for batch_seqs in (32, 4, 1):
        per_rank = [[sum(w.n_scored for w in share(windows, ctx)[i:i + batch_seqs])
                     for i in range(0, len(share(windows, ctx)), batch_seqs)] for ctx in ranks]
        for rank in range(2):
            shown = list(accumulate(global_steps(per_rank, rank)))
            assert all(0 <= a <= b <= 2048 for a, b in zip([0] + shown, shown)) and shown[-1] == 2048
    assert global_steps([[], [5, 5]]) == [10]  # a rank without work shows the total once all are done
    assert global_steps([[3], [4, 4]]) == [7, 4]


def test_rank_zero_progress_line_ends_at_the_exact_total():
    """Rank 0 of 2 (collectives are no-ops without a process group, so this is rank 0's own view):
    every progress line it draws counts all ranks, up to 2,048/2,048 and never past it."""
    model, tokens = tiny_model(), stream(2049)
    sink = io.StringIO()
    progress = Progress("eval sliding", "tokens", total_items=2048, interval=0.0, stream=sink)
    ctx = DistContext(0, 2, 0, torch.device("cpu"))
    Scorer(model, TABLES, ctx, 1, 4, 256).score(tokens, sliding_windows(2049, 256, 64), progress)
    progress.close()
    counts = [int(m[1].replace(",", "")) for m in re.finditer(r"eval sliding: ([\d,]+)/2,048 tokens", sink.getvalue())]
    assert counts and max(counts) == counts[-1] == 2048 and counts == sorted(counts)


def test_tee_logs_lines_progress_and_the_error(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    console, log = Terminal(), tmp_path / "x.log"
    with pytest.raises(UserError), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stderr", console)
        with tee_stderr(log, "==== header"):
            print("first line", file=sys.stderr)
            progress = Progress("eval plain", "tokens", total_items=10, interval=0.0)  # redrawn in place
            for _ in range(10):
                progress.update(1)
            progress.close()
            raise UserError("something the user can fix")
    assert "\r" in console.getvalue()
    lines = log.read_text().splitlines()  # one progress line, as last drawn, for all its redraws
    assert lines[:2] == ["==== header", "first line"] and lines[3:] == ["Error: something the user can fix"]
    assert lines[2].startswith("eval plain: 10/10 tokens ") and "\x1b" not in lines[2]
    assert eval_log_path(Path("a/eval.json")) == Path("a/eval.log")
    assert eval_log_path(Path("a/eval.log")) == Path("a/eval.log.log")


def unigram_reference(tokens, n_bytes: int) -> float:
    """Entropy in bits of the targets' unigram distribution, times the targets, over their bytes."""
    counts = Counter(int(t) for t in tokens[1:])
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) * n / n_bytes


def reference_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.strip().startswith("unigram reference")]


def test_report_reference_covers_exactly_the_scored_prefix(tmp_path, trained_run, small_dataset):
    out = tmp_path / "out"
    (out / "run").mkdir(parents=True)
    shutil.copy(trained_run / "ckpt.safetensors", out / "run" / "ckpt.safetensors")
    ckpt = out / "run" / "ckpt.safetensors"
    run_quantize(QuantizeConfig(model=ckpt, data=small_dataset, out=out / "artifact.bin", calib_batches=1,
                                calib_batch_seqs=2))
    quick = dict(data=small_dataset, sliding=False, compile=False)
    run_eval(EvalConfig(model=out / "artifact.bin", out=out / "eval.json", max_val_tokens=1024, **quick))
    run_eval(EvalConfig(model=ckpt, out=out / "eval_fp.json", max_val_tokens=1024, **quick))

    eval_log = (out / "eval.log").read_text(encoding="utf-8").splitlines()
    assert eval_log[0].startswith("==== golfctl eval ") and eval_log[-1] == f"eval: wrote {out / 'eval.json'}"
    assert any(line.startswith("eval plain: 1,024/1,024 tokens") for line in eval_log)
    assert any(line.startswith("  plain    val_loss ") for line in eval_log)

    val = open_dataset(small_dataset).splits["val"].load_tokens()
    tables = ByteTables.from_tokenizer(spm.SentencePieceProcessor(model_file=str(small_dataset / "tokenizer.model")))

    def expected(targets: int) -> float:
        prefix = val[: targets + 1]
        n_bytes = int(sum(tables.target_bytes(prefix[:-1], prefix[1:])))
        return unigram_reference(prefix, n_bytes)

    lines = report_lines(out, small_dataset)
    assert f"  val BPB over the first 1,024 targets of {val.size - 1:,} (--max-val-tokens)" in lines
    [line] = reference_lines(lines)
    assert float(line.split()[2]) == pytest.approx(expected(1024), abs=5.1e-5)

    # eval_fp.json over another prefix: every row says which targets it covers, one reference each
    run_eval(EvalConfig(model=ckpt, out=out / "eval_fp.json", max_val_tokens=2048, **quick))
    assert (out / "eval_fp.log").read_text(encoding="utf-8").count("==== golfctl eval ") == 2  # appended
    lines = report_lines(out, small_dataset)
    assert any(line.startswith("    fp (plain)") and line.endswith("the first 2,048 targets") for line in lines)
    assert any(line.startswith("    quantized plain") and line.endswith("the first 1,024 targets") for line in lines)
    refs = {int(re.search(r"the first ([\d,]+) targets", line)[1].replace(",", "")): float(line.split()[2])
            for line in reference_lines(lines)}
    assert refs.keys() == {1024, 2048}
    for targets, value in refs.items():
        assert value == pytest.approx(expected(targets), abs=5.1e-5)
