"""`golfctl plot`: PNG figures of one or more runs (train.png, ttt.png, quantize.png, budget.png,
compare.png), overlaid with a legend labelled by folder name. matplotlib (the `plot` extra) is
imported here only, lazily, with the Agg backend; nothing else in golfctl imports this module.

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


MARKERS = {"warmdown": ("--", "warm-down starts"), "ema": ("-.", "EMA starts"), "loop": (":", "looping starts"),
           "resume": ((0, (1, 4)), "resumed")}


def _markers(run: RunData) -> list[tuple[str, float]]:
    """(kind, step) of every vertical marker of a run, in MARKERS order."""
    steps = {"warmdown": [run.phases.get("warmdown")], "ema": [run.phases.get("ema")], "loop": run.loop_steps,
             "resume": run.resumes}
    return [(kind, step) for kind in MARKERS for step in steps[kind] if step is not None]


def train_figure(runs: list[RunData]):
    """Top left: train loss (solid) and val BPB (points, twin axis) against step. Top right: the lr
    multiplier (solid) and Muon momentum (dashed, twin axis) against step. Both carry the markers
    (MARKERS: warm-down, EMA and looping starts, resumes). Bottom left: train loss against
    wall-clock seconds."""
    runs = [r for r in runs if r.train or r.val]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    loss_ax, lr_ax, time_ax = axes[0][0], axes[0][1], axes[1][0]
    axes[1][1].axis("off")
    bpb_ax, momentum_ax = loss_ax.twinx(), lr_ax.twinx()
    for i, run in enumerate(runs):
        color = f"C{i}"
        steps = [r["step"] for r in run.train]
        loss_ax.plot(steps, [r["loss"] for r in run.train], color=color, label=f"{run.label} train loss")
        if run.val:
            bpb_ax.plot([r["step"] for r in run.val], [r["val_bpb"] for r in run.val], "o", color=color,
                        label=f"{run.label} val BPB")
        lr_ax.plot(steps, [r["lr_mult"] for r in run.train], color=color, label=f"{run.label} lr")
        momentum_ax.plot(steps, [r["momentum"] for r in run.train], color=color, linestyle="--", alpha=0.6,
                         label=f"{run.label} Muon momentum")
        time_ax.plot([r["elapsed_s"] for r in run.train], [r["loss"] for r in run.train], color=color,
                     label=run.label)
        for kind, step in _markers(run):
            style, text = MARKERS[kind]
            for ax in (loss_ax, lr_ax):
                ax.axvline(step, color=color, linestyle=style, linewidth=1,
                           label=f"{run.label} {text}" if ax is lr_ax else None)
    loss_ax.set(xlabel="step", ylabel="train loss (nats)", title="loss")
    bpb_ax.set_ylabel("val BPB")
    lr_ax.set(xlabel="step", ylabel="lr multiplier", title="schedule")
    momentum_ax.set_ylabel("Muon momentum")
    time_ax.set(xlabel="wall-clock seconds (training)", ylabel="train loss (nats)", title="loss against time")
    _legend(loss_ax, bpb_ax)
    _legend(lr_ax, momentum_ax)
    time_ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _legend(ax, twin) -> None:
    """One legend for an axis and its twin."""
    handles, labels = ax.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    ax.legend(handles + twin_handles, labels + twin_labels, fontsize="small")


def chunk_bpb(chunk: dict) -> float:
    return chunk["nll_sum"] / math.log(2) / chunk["bytes"]


def cumulative_gain(sliding: list[dict], ttt: list[dict]) -> list[float]:
    """After each chunk: (sliding bits − TTT bits) / bytes over the chunks so far, in BPB (positive: TTT helps)."""
    gains, nats, n_bytes = [], 0.0, 0
    for s, t in zip(sliding, ttt):
        nats += s["nll_sum"] - t["nll_sum"]
        n_bytes += t["bytes"]
        gains.append(nats / math.log(2) / n_bytes)
    return gains


def ttt_figure(runs: list[RunData]):
    """Top: per-chunk BPB of score-first TTT (solid) and of sliding on the same chunks (dotted), in
    stream order. Bottom: the cumulative gain of TTT over sliding (runs whose eval.json has the
    per-chunk sliding sums)."""
    runs = [r for r in runs if r.ttt_chunks]
    if not runs:
        return None
    plt = _pyplot()
    fig, (bpb_ax, gain_ax) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for i, run in enumerate(runs):
        color = f"C{i}"
        chunks = range(len(run.ttt_chunks))
        bpb_ax.plot(chunks, [chunk_bpb(c) for c in run.ttt_chunks], marker=".", color=color, label=f"{run.label} TTT")
        if run.sliding_chunks:
            bpb_ax.plot(chunks, [chunk_bpb(c) for c in run.sliding_chunks], linestyle=":", color=color,
                        label=f"{run.label} sliding")
            gain_ax.plot(chunks, cumulative_gain(run.sliding_chunks, run.ttt_chunks), color=color, label=run.label)
    gain_ax.axhline(0.0, color="black", linewidth=0.8)
    bpb_ax.set(ylabel="BPB", title="score-first TTT against sliding, per chunk")
    gain_ax.set(xlabel="chunk (stream order)", ylabel="BPB gained so far", title="cumulative gain of TTT")
    bpb_ax.legend(fontsize="small")
    if gain_ax.lines[1:]:  # one line is the zero line
        gain_ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def quantize_figure(runs: list[RunData]):
    """Per quantized tensor: left, the relative output error ‖ΔW·X‖/‖W·X‖ of GPTQ (and of RTN on
    the same grid, hatched, where it was measured); right, bits per weight as stored (integers
    and row scales after entropy coding). One bar per folder per tensor."""
    runs = [r for r in runs if r.quantize]
    if not runs:
        return None
    plt = _pyplot()
    names = list(dict.fromkeys(name for run in runs for name in run.quantize))
    fig, (error_ax, bits_ax) = plt.subplots(1, 2, figsize=(13, 1.5 + 0.22 * len(names) * len(runs)), sharey=True)
    height = 0.8 / len(runs)
    for i, run in enumerate(runs):
        ys = [n + i * height for n, name in enumerate(names) if name in run.quantize]
        rows = [run.quantize[name] for name in names if name in run.quantize]
        color = f"C{i}"
        error_ax.barh(ys, [r["output_error"] for r in rows], height, color=color, label=f"{run.label} GPTQ")
        if all("rtn_output_error" in r for r in rows):
            error_ax.barh(ys, [r["rtn_output_error"] for r in rows], height, fill=False, edgecolor=color, hatch="//",
                          label=f"{run.label} RTN")
        bits_ax.barh(ys, [bits_per_weight(r) for r in rows], height, color=color, label=run.label)
    error_ax.set_yticks([n + 0.4 - height / 2 for n in range(len(names))], names, fontsize="small")
    error_ax.invert_yaxis()
    error_ax.set(xlabel="relative output error", title="quantization error")
    bits_ax.set(xlabel="bits per weight (stored)", title="entropy-coded size")
    error_ax.legend(fontsize="small")
    bits_ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def bits_per_weight(tensor: dict) -> float:
    return 8.0 * (tensor["data_bytes"] + tensor["scale_bytes"]) / tensor["values"]


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


def compare_figure(runs: list[RunData]):
    """Per compare.json: our per-seed values and their mean, the reference's (seeds where given),
    and the line ours must be under: the reference mean less the margin (0.005 nats)."""
    runs = [r for r in runs if r.compare]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        data, reference = run.compare, run.compare["reference"]
        ours = [r["value"] for r in data["ours"]]
        ax.plot(range(len(ours)), ours, "o", color="C0", label="ours, per seed")
        ax.axhline(sum(ours) / len(ours), color="C0", label="our mean")
        ref_values = [r["val_loss"] for r in reference["results"]]
        if ref_values:
            ax.plot(range(len(ref_values)), ref_values, "s", color="C1", label="reference, per seed")
        ax.axhline(reference["mean"], color="C1", label="reference mean")
        ax.axhline(reference["mean"] - data["welch"]["margin"], color="C1", linestyle="--",
                   label=f"reference − {data['welch']['margin']:.5f} {data['unit']} (0.005 nats)")
        ax.set_xticks(range(len(ours)), [r["label"] for r in data["ours"]], rotation=20, fontsize="small")
        verdict = "beats" if data["beats"] else "does not beat"
        ax.set(ylabel=data["unit"], title=f"{run.label}: {verdict} the reference (p = {data['welch']['p']:.3g})")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {"train.png": train_figure, "ttt.png": ttt_figure, "quantize.png": quantize_figure,
           "budget.png": budget_figure, "compare.png": compare_figure}


def write_plots(folders: list[Path], out: Path, warn=lambda line: None) -> list[Path]:
    """Read every folder, build the figures and save those with data as OUT/*.png; their paths."""
    plt = _pyplot()  # the missing extra is the first thing said
    runs = [load_run(folder) for folder in folders]
    for run in runs:
        for line in run.warnings:
            warn(line)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out} cannot be made a folder ({exc.strerror or exc})") from None
    written = []
    for name, draw in FIGURES.items():
        fig = draw(runs)
        if fig is not None:
            fig.savefig(out / name, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(out / name)
    return written
