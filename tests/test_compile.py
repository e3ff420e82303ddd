"""The compiled path on CPU: dynamo's graphs and guards do not depend on the backend, so aot_eager
proves here what inductor does on a GPU. One graph per shape, all compiled before the clock;
warm-ups that leave no trace; fixed shapes in eval; the eval planner's arithmetic. (bench_gpu.py's
CPU run, three processes that each compile, is `make bench`'s: the suite has no time for it.)"""

from __future__ import annotations


from pathlib import Path

import numpy as np
import pytest
import torch

from golfctl.compile import Compiler
from golfctl.errors import UserError
from golfctl.plan import RecordEval, Rates, plan_lines, record_rates, scoring_work, seconds, ttt_work
from golfctl.scoring import sliding_windows
from golfctl.ttt import TTTConfig, padded_step_loss, score_first_ttt, warm_up
from scoring_problem import SEQ_LEN, STRIDE, VOCAB, scorer, stream, tiny_model
from stages.eval_plan import run_plan
from stages.evaluate import EvalConfig
from stages.train import TrainRun, run_train
from test_train import all_tensors, small_config
from test_ttt import TTT

def test_training_warm_up_compiles_every_graph_and_leaves_no_trace(tmp_path, small_dataset, capfd):
    """Looping switches on midway (small_config), so the run uses two forward graphs; the warm-up
    compiles both (and Newton–Schulz per matrix shape) before the clock, and the run then trains
    exactly as a run whose graphs compile inside the clock. Dynamo's own recompile log
    (TORCH_LOGS=recompiles) shows nothing after the warm-up line."""
    runs = {}
    for steps in (2, 0):
        cfg = small_config(compile=True, compile_backend="aot_eager", compile_warmup_steps=steps)
        torch._logging.set_logs(recompiles=steps > 0)
        try:
            runs[steps] = run_train(TrainRun(cfg=cfg, data=small_dataset, out=tmp_path / f"warmup{steps}"))
        finally:
            torch._logging.set_logs()
        if steps:
            log = capfd.readouterr().err
            warm_line = log.index("train: compile warm-up done: ")
            assert "Recompiling" in log[:warm_line]  # the log works: the two loop states are guarded graphs
            assert "layer_loop:enabled" in log[warm_line:] and "Recompiling" not in log[warm_line:]
    warm, cold = runs[2], runs[0]
    assert warm["warmup_graphs"] >= 3 and warm["recompiles"] == 0
    assert cold["warmup_graphs"] == 0 and cold["recompiles"] == warm["warmup_graphs"]  # all inside the clock
    a, b = (all_tensors(tmp_path / f"warmup{s}" / "ckpt.safetensors") for s in (2, 0))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # weights, EMA, optimizer, RNG


def test_compiled_eval_equals_eager_with_no_graph_after_warm_up():
    """Sliding and score-first TTT over a 699-target stream (no multiple of batch, stride or chunk):
    one scoring shape and one training shape, compiled in the warm-up on random tokens."""
    tokens = stream()
    windows = sliding_windows(len(tokens), SEQ_LEN, STRIDE)
    results = {}
    for compiled in (False, True):
        model = tiny_model()
        compiler = Compiler(compiled, "aot_eager")
        score = scorer(compiler(model), 5)
        params = [p for name, p in model.named_parameters() if "mlp" in name]  # TTT flags differ from scoring's
        original = {k: v.clone() for k, v in model.state_dict().items()}
        compiler.warm_up(lambda: warm_up(score, VOCAB, TTT, params), torch.device("cpu"))
        model.load_state_dict(original)
        results[compiled] = (score.score(tokens, windows).bpb, score_first_ttt(score, tokens, windows, TTT, params).bpb)
        assert compiler.recompiles == 0
    assert results[True] == pytest.approx(results[False], rel=1e-5)
    assert results[False][1] != results[False][0]  # TTT trained


def test_padded_training_rows_give_the_unpadded_gradient():
    model, tokens = tiny_model(), stream()
    starts = [0, 40, 95]
    loss = padded_step_loss(model, tokens, starts, 5, SEQ_LEN, 1, len(starts) * SEQ_LEN, torch.device("cpu"))
    padded = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    rows = torch.from_numpy(np.stack([tokens[a:a + SEQ_LEN + 1] for a in starts]).astype(np.int64))
    plain = torch.autograd.grad(model(rows[:, :-1], rows[:, 1:], loops=1), list(model.parameters()), allow_unused=True)
    for p, q in zip(padded, plain):
        assert (p is None) == (q is None)
        if p is not None:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_plan_counts_work_by_hand():
    """1,001 tokens (1,000 targets), seq_len 100, stride 50, 4 windows per forward, 2 ranks."""
    sliding = scoring_work("sliding", 1001, 100, 50, 4, 2)
    # windows end at 100, 150, …, 1000: 19; the busiest rank has 10, in 3 forwards of 4 rows
    assert (sliding.windows, sliding.forward_rows) == (19, 12)
    # plain: 10 windows, 5 a rank, 2 forwards
    assert scoring_work("plain", 1001, 100, 100, 4, 2).forward_rows == 8
    ttt = ttt_work(1001, 100, 50, 4, TTTConfig(chunk_tokens=300, epochs=2, batch_seqs=4), 2)
    # chunks of first scored targets 1-300, 301-600, 601-900, 901-1000 hold 5, 6, 6 and 2 windows:
    # one forward of 4 rows each. Chunks 0-2 train on 3 sequences: one step an epoch, 2 epochs,
    # ceil(min(4, 300 // 100) / 2) = 2 rows a rank.
    assert (ttt.windows, ttt.chunks, ttt.forward_rows, ttt.train_steps, ttt.train_rows) == (19, 4, 16, 6, 12)
    rates = Rates(forward=2e6, train=1e6, source="test")
    assert seconds(ttt, 100, 10.0, rates) == pytest.approx(16 * 100 * 10 / 2e6 + 12 * 100 * 3 * 10 / 1e6)
    assert not any(line.startswith("warning") for line in plan_lines([ttt], 100, 10.0, rates))
    assert plan_lines([ttt], 100, 1e6, rates)[-1].startswith("warning: the estimate")


def test_plan_at_the_record_settings_reproduces_its_log(capsys):
    record = RecordEval()
    plan = run_plan(EvalConfig(plan=True, preset="record", max_val_tokens=record.val_targets, world_size=8,
                               ttt=True, ttt_config=record.ttt))
    assert plan["seconds"][1:] == pytest.approx([record.sliding_seconds, record.ttt_seconds], rel=1e-9)
    assert [w["name"] for w in plan["works"]] == ["plain", "sliding", "ttt"]
    out = capsys.readouterr().out
    assert "sliding  633,409 windows" in out and "1,238 chunks" in out  # the record's own ttt:start chunks=1238
    rates = record_rates()
    assert rates.forward > rates.train > 0


def test_plan_options_refuse_bad_values(tmp_path):
    bad = tmp_path / "rates.json"
    bad.write_text('{"forward_flops_per_s": "nan", "train_flops_per_s": 1, "device": "x"}')
    for rates, fragment in ((tmp_path / "missing.json", "not a gpu_rates.json"), (bad, "positive numbers")):
        with pytest.raises(UserError, match=fragment):
            run_plan(EvalConfig(plan=True, preset="tiny", max_val_tokens=1000, rates=rates))
    problems = EvalConfig(model=Path("a.bin"), data=Path("d"), out=Path("e.json"), world_size=2, rates=bad).problems()
    assert "--world-size is only for --plan" in problems and "--rates is only for --plan" in problems
    assert "--plan needs MODEL or --preset (one of them)" in EvalConfig(plan=True, max_val_tokens=9).problems()
