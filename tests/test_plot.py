"""golfctl plot: the figures' artists hold the numbers of the files they were drawn from."""

from __future__ import annotations

import json
import math
import sys

import pytest

pytest.importorskip("matplotlib")

from cli_helpers import assert_clean_error, golfctl  # noqa: E402
from golfctl.artifact import read_artifact  # noqa: E402
from golfctl.budget import DEFAULT_BUDGET  # noqa: E402
from golfctl.plot import budget_figure, compare_figure, quantize_figure, train_figure, ttt_figure  # noqa: E402
from golfctl.plot_data import load_run  # noqa: E402

TTT = [{"nll_sum": 700.0, "tokens": 300, "bytes": 1000}, {"nll_sum": 650.0, "tokens": 300, "bytes": 980},
       {"nll_sum": 0.0, "tokens": 0, "bytes": 0}, {"nll_sum": 90.0, "tokens": 40, "bytes": 130}]
SLIDING = [{"nll_sum": 700.0, "tokens": 300, "bytes": 1000}, {"nll_sum": 660.0, "tokens": 300, "bytes": 980},
           {"nll_sum": 0.0, "tokens": 0, "bytes": 0}, {"nll_sum": 89.0, "tokens": 40, "bytes": 130}]


def _records(path, kind):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def _eval_json(path, ttt=TTT, sliding=SLIDING):
    path.write_text(json.dumps({"format": "golfctl.eval", "results": {"ttt": {"chunks": ttt},
                                                                      "sliding": {"chunks": sliding}}}))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, trained_run, small_dataset):
    """An output folder as `make all` fills it: run/ (the trained run), artifact.bin with its
    quantize report, eval.json with TTT and sliding chunks."""
    from stages.quantize import QuantizeConfig, run_quantize

    out = tmp_path_factory.mktemp("plot") / "demo"
    out.mkdir()
    (out / "run").symlink_to(trained_run)
    run_quantize(QuantizeConfig(model=trained_run / "ckpt.safetensors", data=small_dataset, out=out / "artifact.bin",
                                calib_batches=2))
    _eval_json(out / "eval.json")
    return out


def test_train_figure_draws_the_metrics_and_the_phase_markers(trained_run):
    run = load_run(trained_run)
    assert run.warnings == []
    fig = train_figure([run])
    loss_ax, lr_ax, time_ax, _, bpb_ax, momentum_ax = fig.axes  # twin axes are added last
    metrics = trained_run / "metrics.jsonl"
    train, val = _records(metrics, "train"), _records(metrics, "val")
    assert list(loss_ax.lines[0].get_xdata()) == [r["step"] for r in train]
    assert list(loss_ax.lines[0].get_ydata()) == [r["loss"] for r in train]
    assert list(lr_ax.lines[0].get_ydata()) == [r["lr_mult"] for r in train]
    assert list(time_ax.lines[0].get_xdata()) == [r["elapsed_s"] for r in train]
    assert list(bpb_ax.lines[0].get_ydata()) == [r["val_bpb"] for r in val] and val
    # Muon momentum by its definition: 0.85 → 0.95 linearly over 500 steps, for the step each record reports
    assert list(momentum_ax.lines[0].get_ydata()) == pytest.approx(
        [0.85 + 0.10 * (r["step"] - 1) / 500 for r in train])
    markers = {line.get_label(): line.get_xdata()[0] for line in lr_ax.lines[1:]}
    assert markers == {"run warm-down starts": 97, "run EMA starts": 0}
    # the warm-down marker is where the lr multiplier leaves 1 (the step a record reports is the one it ran)
    assert all((r["lr_mult"] < 1) == (r["step"] - 1 >= markers["run warm-down starts"]) for r in train if r["step"] > 5)


def test_a_resume_drops_the_replayed_records_and_is_marked(tmp_path):
    records = [{"kind": "train", "step": s, "loss": 10.0 - s, "lr_mult": 1.0, "elapsed_s": float(s)} for s in range(1, 9)]
    records.insert(5, {"kind": "phase", "phase": "warmdown", "step": 5, "progress": 0.5})
    records.append({"kind": "resume", "step": 4, "elapsed_s": 4.0})  # pre-empted after step 8, checkpoint at 4
    records += [{"kind": "phase", "phase": "warmdown", "step": 5, "progress": 0.5}]
    records += [{"kind": "train", "step": s, "loss": 20.0 - s, "lr_mult": 0.5, "elapsed_s": float(s)} for s in (5, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = load_run(tmp_path)
    lr_ax = train_figure([run]).axes[1]
    assert list(lr_ax.lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(lr_ax.lines[0].get_ydata()) == [1.0] * 4 + [0.5] * 2
    assert {line.get_label(): line.get_xdata()[0] for line in lr_ax.lines[1:]} == {
        f"{tmp_path.name} warm-down starts": 5, f"{tmp_path.name} resumed": 4}
    assert math.isnan(run.train[0]["momentum"])  # a metrics file without momentum still draws


def test_budget_bar_adds_up_to_the_budget(out_dir):
    run = load_run(out_dir)
    fig = budget_figure([run])
    widths = {bar.get_label(): bar.patches[0].get_width() for bar in fig.axes[0].containers}
    size = (out_dir / "artifact.bin").stat().st_size
    code = widths.pop("code")
    headroom = widths.pop("headroom")
    assert sum(widths.values()) == size and {"embeddings", "attention", "MLP", "scales"} <= widths.keys()
    assert headroom == DEFAULT_BUDGET - size - code > 0


def test_ttt_figure_draws_per_chunk_bpb_and_the_cumulative_gain(out_dir):
    fig = ttt_figure([load_run(out_dir)])
    bpb_ax, gain_ax = fig.axes
    ttt, sliding, gain = bpb_ax.lines[0], bpb_ax.lines[1], gain_ax.lines[0]
    kept = [i for i, c in enumerate(TTT) if c["bytes"]]
    assert list(ttt.get_ydata()) == pytest.approx([TTT[i]["nll_sum"] / math.log(2) / TTT[i]["bytes"] for i in kept])
    assert list(sliding.get_ydata()) == pytest.approx([SLIDING[i]["nll_sum"] / math.log(2) / SLIDING[i]["bytes"]
                                                       for i in kept])
    # gained bits over bytes so far: 0, then 10 nats over 1,980 bytes, then 9 nats over 2,110
    assert list(gain.get_ydata()) == pytest.approx([0.0, 10 / math.log(2) / 1980, 9 / math.log(2) / 2110])


def test_quantize_figure_draws_errors_and_stored_bits_per_tensor(out_dir):
    run = load_run(out_dir)
    fig = quantize_figure([run])
    error_ax, bits_ax = fig.axes
    report = json.loads((out_dir / "artifact.quantize.json").read_text())["tensors"]
    artifact = read_artifact(out_dir / "artifact.bin")
    names = [n for n, t in artifact.tensors.items() if hasattr(t, "scales")]
    assert [t.get_text() for t in error_ax.get_yticklabels()] == names and len(names) >= 5
    gptq, rtn = error_ax.containers
    assert [bar.get_width() for bar in gptq] == [report[n]["output_error"] for n in names]
    assert [bar.get_width() for bar in rtn] == [report[n]["rtn_output_error"] for n in names]
    assert all(g.get_width() < r.get_width() for g, r in zip(gptq, rtn))
    expected_bits = [8 * artifact.stored[n].total_bytes / artifact.tensors[n].q.size for n in names]
    assert [bar.get_width() for bar in bits_ax.containers[0]] == pytest.approx(expected_bits)


def test_a_stale_quantize_report_is_not_drawn(tmp_path, out_dir):
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "artifact.bin").write_bytes((out_dir / "artifact.bin").read_bytes())
    report = json.loads((out_dir / "artifact.quantize.json").read_text())
    (stale / "artifact.quantize.json").write_text(json.dumps({**report, "artifact_sha256": "0" * 64}))
    run = load_run(stale)
    assert run.quantize == {} and run.budget
    assert sum("another artifact" in w for w in run.warnings) == 1


def test_compare_figure_from_golfctl_compare_out(tmp_path):
    folder = tmp_path / "seeds"
    folder.mkdir()
    results = []
    for seed, (loss, bpb) in enumerate([(2.70, 1.05), (2.71, 1.052), (2.705, 1.051)]):
        path = tmp_path / f"eval{seed}.json"
        path.write_text(json.dumps({"results": {"ttt": {"val_loss": loss, "val_bpb": bpb, "tokens": 1000,
                                                        "bytes": 2400}}}))
        results.append(path)
    result = golfctl("compare", *results, "--reference-bpb", 1.0611, "--reference-std", 0.0005,
                     "--reference-n", 3, "--out", folder / "compare.json")
    assert result.returncode == 0, result.stderr
    data = json.loads((folder / "compare.json").read_text())
    assert data["unit"] == "BPB" and [r["value"] for r in data["ours"]] == [1.05, 1.052, 1.051]
    ax = compare_figure([load_run(folder)]).axes[0]
    points, mean, reference, required = ax.lines
    assert list(points.get_ydata()) == [1.05, 1.052, 1.051]
    assert mean.get_ydata()[0] == pytest.approx(1.051)
    assert reference.get_ydata()[0] == 1.0611
    # the margin in BPB: 0.005 nats/token / ln 2 × tokens/byte (1000/2400)
    assert reference.get_ydata()[0] - required.get_ydata()[0] == pytest.approx(0.005 / math.log(2) * 1000 / 2400)
    assert "beats" in ax.get_title() and "does not" not in ax.get_title()


def test_cli_overlays_folders_into_pngs(tmp_path, out_dir, trained_run):
    result = golfctl("plot", out_dir, trained_run, "--out", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["budget.png", "quantize.png", "train.png",
                                                                    "ttt.png"]
    assert "Traceback" not in result.stderr and "warning" not in result.stderr
    legend = train_figure([load_run(out_dir), load_run(trained_run)]).axes[0].get_legend()
    assert {"demo train loss", "run train loss"} <= {text.get_text() for text in legend.get_texts()}


def test_bad_inputs_draw_with_one_warning_each(tmp_path, trained_run):
    cut = tmp_path / "cut"
    cut.mkdir()
    text = (trained_run / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text.rstrip("\n")[:-10])  # the last line cut short
    (cut / "eval.json").write_text(json.dumps({"format": "golfctl.eval", "results": {"plain": {}}}))
    result = golfctl("plot", cut, "--out", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and "cut" in warnings[0] and "no score-first TTT chunks (eval without --ttt?)" in warnings[1], result.stderr
    assert [p.name for p in (tmp_path / "png").iterdir()] == ["train.png"]
    run = load_run(cut)
    assert len(run.train) + len(run.val) + len(run.loop_steps) + len(run.phases) == len(text.splitlines()) - 1 - sum(
        json.loads(line)["kind"] not in ("train", "val", "loop", "phase") for line in text.splitlines()[:-1])
    _eval_json(cut / "eval.json", sliding=[])  # TTT without sliding: drawn without the gain, one warning
    run = load_run(cut)
    assert run.ttt_chunks and not run.sliding_chunks and "no per-chunk sliding sums" in run.warnings[-1]
    assert len(ttt_figure([run]).axes[1].lines) == 1  # only the zero line


def test_nothing_to_plot_and_missing_matplotlib(tmp_path, monkeypatch):
    assert_clean_error(golfctl("plot", tmp_path, "--out", tmp_path / "png"), "nothing to plot")
    assert_clean_error(golfctl("plot", tmp_path / "nope", "--out", tmp_path / "png"), "missing")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_clean_error(golfctl("plot", tmp_path, "--out", tmp_path / "png"), "pip install 'golfctl[plot]'")
