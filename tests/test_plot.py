"""golfctl plot: the figures' artists hold the numbers of the files they were drawn from."""

from __future__ import annotations

import json
import math
import sys

import pytest

pytest.importorskip("matplotlib")

from cli_helpers import assert_clean_error, golfctl  # noqa: E402
from golfctl.budget import DEFAULT_BUDGET  # noqa: E402
from golfctl.plot import budget_figure, train_figure, ttt_figure  # noqa: E402
from golfctl.plot_data import load_run  # noqa: E402

CHUNKS = [{"nll_sum": 700.0, "tokens": 300, "bytes": 1000}, {"nll_sum": 650.0, "tokens": 300, "bytes": 980},
          {"nll_sum": 0.0, "tokens": 0, "bytes": 0}, {"nll_sum": 90.0, "tokens": 40, "bytes": 130}]


def _records(path, kind):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, trained_run, small_dataset):
    """An output folder as `make all` fills it: run/ (the trained run), artifact.bin, eval.json with TTT chunks."""
    from stages.quantize import QuantizeConfig, run_quantize

    out = tmp_path_factory.mktemp("plot") / "demo"
    out.mkdir()
    (out / "run").symlink_to(trained_run)
    run_quantize(QuantizeConfig(model=trained_run / "ckpt.safetensors", data=small_dataset, out=out / "artifact.bin",
                                method="rtn"))
    (out / "eval.json").write_text(json.dumps({"format": "golfctl.eval", "results": {"ttt": {"chunks": CHUNKS}}}))
    return out


def test_train_figure_draws_the_metrics(trained_run):
    run = load_run(trained_run)
    assert run.warnings == []
    fig = train_figure([run])
    loss_ax, lr_ax, time_ax, _ = fig.axes[0], fig.axes[1], fig.axes[2], fig.axes[3]
    train = _records(trained_run / "metrics.jsonl", "train")
    val = _records(trained_run / "metrics.jsonl", "val")
    assert list(loss_ax.lines[0].get_xdata()) == [r["step"] for r in train]
    assert list(loss_ax.lines[0].get_ydata()) == [r["loss"] for r in train]
    assert list(lr_ax.lines[0].get_ydata()) == [r["lr_mult"] for r in train]
    assert list(time_ax.lines[0].get_xdata()) == [r["elapsed_s"] for r in train]
    bpb_ax = fig.axes[-1]  # the twin axis is added last
    assert list(bpb_ax.lines[0].get_ydata()) == [r["val_bpb"] for r in val] and val
    # warm-down marker: iterations × (1 − warmdown_frac) of the fixture's config (120 steps, default 0.2)
    assert [list(line.get_xdata()) for line in lr_ax.lines[1:]] == [[pytest.approx(96.0)] * 2]


def test_budget_bar_adds_up_to_the_budget(out_dir):
    run = load_run(out_dir)
    fig = budget_figure([run])
    widths = {bar.get_label(): bar.patches[0].get_width() for bar in fig.axes[0].containers}
    size = (out_dir / "artifact.bin").stat().st_size
    code = widths.pop("code")
    headroom = widths.pop("headroom")
    assert sum(widths.values()) == size and {"embeddings", "attention", "MLP", "scales"} <= widths.keys()
    assert headroom == DEFAULT_BUDGET - size - code > 0


def test_ttt_figure_draws_per_chunk_bpb(out_dir):
    warnings = []
    fig = ttt_figure([load_run(out_dir)], warnings.append)
    ys = list(fig.axes[0].lines[0].get_ydata())
    drawn = [c for c in CHUNKS if c["bytes"]]
    assert ys == pytest.approx([c["nll_sum"] / math.log(2) / c["bytes"] for c in drawn])
    assert len(warnings) == 1 and "sliding" in warnings[0]


def test_cli_overlays_folders_into_pngs(tmp_path, out_dir, trained_run):
    result = golfctl("plot", out_dir, trained_run, "--out", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["budget.png", "train.png", "ttt.png"]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1  # the sliding-sums note
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
    assert len(warnings) == 2 and "cut" in warnings[0] and "no TTT chunks" in warnings[1], result.stderr
    assert [p.name for p in (tmp_path / "png").iterdir()] == ["train.png"]
    run = load_run(cut)
    assert len(run.train) + len(run.val) + len(run.loop_steps) == len(text.splitlines()) - 1 - sum(
        json.loads(line)["kind"] not in ("train", "val", "loop") for line in text.splitlines()[:-1])


def test_nothing_to_plot_and_missing_matplotlib(tmp_path, monkeypatch):
    assert_clean_error(golfctl("plot", tmp_path, "--out", tmp_path / "png"), "nothing to plot")
    assert_clean_error(golfctl("plot", tmp_path / "nope", "--out", tmp_path / "png"), "missing")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_clean_error(golfctl("plot", tmp_path, "--out", tmp_path / "png"), "pip install 'golfctl[plot]'")
