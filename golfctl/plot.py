"""`golfctl plot`: PNG figures of one or more runs (train.png, ttt.png, budget.png), overlaid with a
legend labelled by folder name. matplotlib (the `plot` extra) is imported here only, lazily, with
the Agg backend; nothing else in golfctl imports this module.

Each `*_figure` function builds and returns a Figure (None: no folder has that data) without
saving it; `write_plots` saves them. The data comes from golfctl.plot_data.
"""

from __future__ import annotations

import math
from pathlib import Path

from golfctl.errors import UserError
from golfctl.plot_data import RunData, load_run

INSTALL_HINT = "golfctl plot needs matplotlib: pip install 'golfctl[plot]'"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def train_figure(runs: list[RunData]):
    """Row 1: train loss (solid) and val BPB (points, twin axis) against step; the lr multiplier
    against step; loop-start (dotted) and warm-down-start (dashed) markers. Row 2: train loss
    against wall-clock seconds."""
    runs = [r for r in runs if r.train or r.val]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    loss_ax, lr_ax, time_ax = axes[0][0], axes[0][1], axes[1][0]
    bpb_ax = loss_ax.twinx()
    axes[1][1].axis("off")
    for i, run in enumerate(runs):
        color = f"C{i}"
        steps = [r["step"] for r in run.train]
        loss_ax.plot(steps, [r["loss"] for r in run.train], color=color, label=f"{run.label} train loss")
        if run.val:
            bpb_ax.plot([r["step"] for r in run.val], [r["val_bpb"] for r in run.val], "o", color=color,
                        label=f"{run.label} val BPB")
        lr_ax.plot(steps, [r["lr_mult"] for r in run.train], color=color, label=run.label)
        time_ax.plot([r["elapsed_s"] for r in run.train], [r["loss"] for r in run.train], color=color,
                     label=run.label)
        for ax in (loss_ax, lr_ax):
            for step in run.loop_steps:
                ax.axvline(step, color=color, linestyle=":", label=f"{run.label} looping starts" if ax is lr_ax else None)
            if run.warmdown_step is not None:
                ax.axvline(run.warmdown_step, color=color, linestyle="--",
                           label=f"{run.label} warm-down starts" if ax is lr_ax else None)
    loss_ax.set(xlabel="step", ylabel="train loss (nats)", title="loss")
    bpb_ax.set_ylabel("val BPB")
    lr_ax.set(xlabel="step", ylabel="lr multiplier", title="learning rate")
    time_ax.set(xlabel="wall-clock seconds (training)", ylabel="train loss (nats)", title="loss against time")
    handles = loss_ax.get_legend_handles_labels()
    twin = bpb_ax.get_legend_handles_labels()
    loss_ax.legend(handles[0] + twin[0], handles[1] + twin[1], fontsize="small")
    lr_ax.legend(fontsize="small")
    time_ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def chunk_bpb(chunk: dict) -> float:
    return chunk["nll_sum"] / math.log(2) / chunk["bytes"]


def ttt_figure(runs: list[RunData], warn=lambda line: None):
    """Per-chunk BPB of score-first TTT in stream order. eval.json records no per-chunk sliding
    sums, so the gain against sliding cannot be drawn: `warn` says so once."""
    runs = [r for r in runs if r.ttt_chunks]
    if not runs:
        return None
    warn("eval.json records no per-chunk sliding sums: ttt.png shows per-chunk TTT BPB only, not the gain "
         "against sliding")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, run in enumerate(runs):
        ax.plot(range(len(run.ttt_chunks)), [chunk_bpb(c) for c in run.ttt_chunks], marker=".", color=f"C{i}",
                label=run.label)
    ax.set(xlabel="chunk (stream order)", ylabel="BPB", title="score-first TTT, per chunk")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def budget_figure(runs: list[RunData]):
    """One horizontal stacked bar per folder: the budget's bytes by segment, headroom last."""
    runs = [r for r in runs if r.budget]
    if not runs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 2 + 0.6 * len(runs)))
    colors: dict[str, str] = {}
    for y, run in enumerate(runs):
        left = 0
        for segment in run.budget:
            width = max(segment.bytes, 0)  # an over-budget run has a negative headroom: no bar
            color = "lightgrey" if segment.label == "headroom" else colors.setdefault(segment.label, f"C{len(colors)}")
            ax.barh(y, width, left=left, color=color, edgecolor="white", label=segment.label)
            left += width
        ax.axvline(run.budget_limit, color="black", linewidth=1)
    ax.set_yticks(range(len(runs)), [r.label for r in runs])
    ax.set(xlabel="bytes", title=f"byte budget ({runs[0].budget_limit:,})")
    unique = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per segment label
    ax.legend(unique.values(), unique.keys(), fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def write_plots(folders: list[Path], out: Path, warn=lambda line: None) -> list[Path]:
    """Read every folder, build the figures and save those with data as OUT/*.png; their paths."""
    _pyplot()  # the missing extra is the first thing said
    runs = [load_run(folder) for folder in folders]
    for run in runs:
        for line in run.warnings:
            warn(line)
    figures = {"train.png": train_figure(runs), "ttt.png": ttt_figure(runs, warn), "budget.png": budget_figure(runs)}
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out} cannot be made a folder ({exc.strerror or exc})") from None
    written = []
    plt = _pyplot()
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(out / name, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(out / name)
    return written
