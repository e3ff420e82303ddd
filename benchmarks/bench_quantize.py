"""Benchmark: the quantize stage's codecs, GPTQ's wall time, and GPTQ's quality against RTN.

Measured on a trained model (a model file or a checkpoint's EMA weights) with the quantize
stage's defaults: int6 block matrices, int8 tied embedding, SDClip k = 12.85 / 20.

  codec      The model is quantized once by GPTQ (calibration_batches → collect_hessians →
             sdclip_scales → quantize_gptq, as the quantize stage does). On those same integers:
             total bytes and encode / decode seconds (best of --repeats) of
               ans    CODECS["ans"] per tensor (its symbol tables live in the artifact's header
                      and are listed apart: they are not in the coded bytes)
               rows   CODECS["rows"] per tensor (adaptive, row references; params are a few ints)
               zstd   CODECS["zstd"] per tensor (level 22)
               naive  torch.save of {name: int8 tensor} into memory, then zlib level 9
                      (decode: zlib.decompress + torch.load(weights_only=True))
             each as a ratio to the order-0 entropy bound Σ n·H(q) (entropy_bound_bytes summed
             per tensor). Every decode is checked against the integers it came from.
  artifact   run_quantize writes the artifact with --codec auto (the default: the smallest codec
             per tensor), ans and zstd (prefix, zstd header, coded integers, coded fp16 scales
             and fp16 tensors), against the bound plus the fp16 bytes at face value. For scale, a naive artifact:
             torch.save of the int8 integers, fp16 scales and fp16 tensors, then zlib 9 (it
             records no config, so it could not rebuild the model). Encode seconds re-encode
             the decoded artifact (which must give the file's bytes back); decode seconds
             decode the file's bytes.
  gptq       Wall time of quantize_gptq and of quantize_rtn per matrix (best of --repeats,
             the SDClip scales computed beforehand and not timed), with the relative output
             error ‖ΔW·Xᵀ‖/‖W·Xᵀ‖ each reaches.
  quality    Plain validation BPB (score_weights) of the unquantized weights and of the
             GPTQ and RTN artifacts (load_weights), RTN written by run_quantize with the same
             bits and clipping; the gap is quantized − unquantized.

On CUDA (if present) calibration, GPTQ and scoring run there, bracketed by synchronize().

    .venv/bin/python benchmarks/bench_quantize.py [--model artifacts/final.safetensors] [--data artifacts/data]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from golfctl.artifact import (PREFIX_BYTES, QuantizedTensor, decode_artifact, dequantized_state, encode_artifact,
                              read_artifact)
from golfctl.calibration import calibration_batches, collect_hessians
from golfctl.codec import CODECS, entropy_bound_bytes
from golfctl.dataset import open_dataset
from golfctl.errors import UserError
from golfctl.gptq import dequantize, output_error, quantize_gptq, quantize_rtn, sdclip_scales
from golfctl.model import parameter_groups
from golfctl.provenance import device_name
from golfctl.validation import load_validation_set, score_weights
from golfctl.weights import build_model, load_weights
from stages.quantize import QuantizeConfig, run_quantize

DEFAULT_MODELS = (Path("artifacts/final.safetensors"), Path("artifacts/run/ckpt.safetensors"))
NAIVE_ZLIB_LEVEL = 9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path,
                        help="model file or checkpoint (default: the first of "
                             + ", ".join(str(p) for p in DEFAULT_MODELS) + " that exists)")
    parser.add_argument("--data", type=Path, default=Path("artifacts/data"),
                        help="dataset folder (default artifacts/data)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each codec and quantizer; the best counts (default 3)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    model_path = args.model or next((p for p in DEFAULT_MODELS if p.exists()), DEFAULT_MODELS[0])

    try:
        with tempfile.TemporaryDirectory(prefix="bench_quantize.") as tmp:
            run(model_path, args.data, Path(tmp), args.repeats)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def run(model_path: Path, data: Path, tmp: Path, repeats: int) -> None:
    if not model_path.exists():
        raise UserError(f"{model_path} does not exist; run `make final` (or `make train`) or pass --model")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    defaults = QuantizeConfig(model=model_path, data=data, out=tmp / "unused")
    weights = load_weights(model_path)
    cfg = weights.config
    model = build_model(weights, device)
    dataset = open_dataset(data)
    if dataset.vocab_size is not None and dataset.vocab_size != cfg.vocab_size:
        raise UserError(f"{data} has vocab {dataset.vocab_size} but the model {cfg.vocab_size}")

    start = sync(device)
    batches = calibration_batches(dataset.splits["train"], defaults.calib_batches, defaults.calib_batch_seqs,
                                  cfg.train_seq_len)
    hessians = collect_hessians(model, batches, loops=cfg.resolved_eval_loops)
    calib_s = sync(device) - start

    print(f"\nmodel    {model_path}: {weights.origin}; {cfg.num_layers} layers × {cfg.model_dim}, "
          f"vocab {cfg.vocab_size}, eval loops {cfg.resolved_eval_loops}")
    print(f"device   {device_name(device)}, torch {torch.__version__}, "
          f"cpu count / torch threads {os.cpu_count()} / {torch.get_num_threads()}")
    print(f"settings int{defaults.bits} matrices (clip_sigmas {defaults.clip_sigmas:g}), "
          f"int{defaults.embed_bits} embedding (clip_sigmas {defaults.embed_clip_sigmas:g}); "
          f"best of {repeats} timed runs")
    print(f"calibration: {len(hessians)} Hessians from {sum(b.numel() for b in batches):,} training tokens "
          f"in {calib_s:.2f} s (not in the GPTQ times)")

    rows, q_gptq = quantize_all(weights.state, hessians, model, defaults, device, repeats)
    report_gptq(rows)
    report_codecs(q_gptq, repeats)

    # The written artifacts: GPTQ with each codec, and RTN at the same bits and clipping.
    paths = {}
    for label, method, codec in (("gptq/auto", "gptq", "auto"), ("gptq/ans", "gptq", "ans"), ("gptq/zstd", "gptq", "zstd"),
                                 ("rtn/auto", "rtn", "auto")):
        paths[label] = tmp / f"{method}-{codec}.bin"
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the stage's own report; the tables below replace it
            run_quantize(QuantizeConfig(model=model_path, data=data, out=paths[label], method=method, codec=codec))
        print(f"run_quantize --method {method} --codec {codec}: {time.perf_counter() - start:.1f} s "
              "(calibration, quantization, coding, decode check)")
    report_artifacts(paths, q_gptq, repeats)
    report_quality(weights, paths, data, device)


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def best_time(fn, repeats: int, device: torch.device | None = None):
    """(result of the last call, best wall seconds over `repeats` calls)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = sync(device) if device else time.perf_counter()
        result = fn()
        best = min(best, (sync(device) if device else time.perf_counter()) - start)
    return result, best


def quantize_all(state: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor], model, defaults: QuantizeConfig,
                 device: torch.device, repeats: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Time GPTQ and RTN on every matrix the quantize stage quantizes; GPTQ's integers by name (payload order)."""
    groups = parameter_groups(model)  # the stage's selection: block Linear weights and the tied embedding
    embed_names = {name for name, _ in groups["embed"]}
    quantized = embed_names | {name for name, _ in groups["matrix"]}
    rows, q_gptq = [], {}
    for name, tensor in state.items():
        if name not in quantized:
            continue
        embed = name in embed_names
        bits = defaults.embed_bits if embed else defaults.bits
        W = tensor.detach().float().to(device)
        H = hessians[name].to(device)
        scales = sdclip_scales(W, bits, defaults.embed_clip_sigmas if embed else defaults.clip_sigmas)
        q_g, gptq_s = best_time(lambda: quantize_gptq(W, H, scales, bits), repeats, device)
        q_r, rtn_s = best_time(lambda: quantize_rtn(W, scales, bits), repeats, device)
        rows.append({"name": name, "shape": tuple(W.shape), "bits": bits, "gptq_s": gptq_s, "rtn_s": rtn_s,
                     "gptq_err": output_error(W, dequantize(q_g, scales), H),
                     "rtn_err": output_error(W, dequantize(q_r, scales), H)})
        q_gptq[name] = q_g.cpu().numpy()
    return rows, q_gptq


def report_gptq(rows: list[dict]) -> None:
    width = max(len(r["name"]) for r in rows)
    print("\nGPTQ vs RTN wall time per matrix (output error = ‖ΔW·Xᵀ‖/‖W·Xᵀ‖ on the calibration Hessian)")
    print(f"  {'matrix':<{width}} {'shape':>11} {'bits':>4} {'gptq ms':>9} {'rtn ms':>8} {'gptq/rtn':>9}"
          f" {'err gptq':>9} {'err rtn':>8}")
    for r in rows:
        shape = "×".join(str(d) for d in r["shape"])
        print(f"  {r['name']:<{width}} {shape:>11} {r['bits']:>4} {r['gptq_s'] * 1e3:>9.2f} {r['rtn_s'] * 1e3:>8.3f}"
              f" {r['gptq_s'] / r['rtn_s']:>8.0f}× {r['gptq_err']:>9.4f} {r['rtn_err']:>8.4f}")
    gptq_s, rtn_s = sum(r["gptq_s"] for r in rows), sum(r["rtn_s"] for r in rows)
    print(f"  {'total (' + str(len(rows)) + ' matrices)':<{width}} {'':>11} {'':>4} {gptq_s * 1e3:>9.2f}"
          f" {rtn_s * 1e3:>8.3f} {gptq_s / rtn_s:>8.0f}×")


def naive_encode(tensors: dict[str, np.ndarray]) -> bytes:
    """torch.save of {name: tensor} into memory, then zlib level 9: the layout golfctl avoids."""
    buffer = io.BytesIO()
    torch.save({name: torch.from_numpy(np.ascontiguousarray(t)) for name, t in tensors.items()}, buffer)
    return zlib.compress(buffer.getvalue(), NAIVE_ZLIB_LEVEL)


def naive_decode(data: bytes) -> dict[str, np.ndarray]:
    loaded = torch.load(io.BytesIO(zlib.decompress(data)), weights_only=True)
    return {name: t.numpy() for name, t in loaded.items()}


def report_codecs(q: dict[str, np.ndarray], repeats: int) -> None:
    """The same GPTQ integers through ans, zstd-22 and torch.save + zlib 9, against Σ n·H(q)."""
    bound = sum(entropy_bound_bytes(t) for t in q.values())
    values = sum(t.size for t in q.values())
    rows = []
    for name, codec in CODECS.items():
        coded, encode_s = best_time(lambda codec=codec: {n: codec.encode(t) for n, t in q.items()}, repeats)
        decoded, decode_s = best_time(
            lambda codec=codec, coded=coded: {n: codec.decode(d, p, *q[n].shape) for n, (d, p) in coded.items()},
            repeats)
        check(all(np.array_equal(decoded[n], t) for n, t in q.items()), f"{name} does not round-trip")
        params = sum(len(json.dumps(p, separators=(",", ":"))) for _, p in coded.values())
        rows.append((f"{name}{'-22' if name == 'zstd' else ''}", sum(len(d) for d, _ in coded.values()), params,
                     encode_s, decode_s))
    data, encode_s = best_time(lambda: naive_encode(q), repeats)
    decoded, decode_s = best_time(lambda: naive_decode(data), repeats)
    check(all(np.array_equal(decoded[n], t) for n, t in q.items()), "naive layout does not round-trip")
    rows.append((f"torch.save+zlib-{NAIVE_ZLIB_LEVEL}", len(data), 0, encode_s, decode_s))

    print(f"\ncodecs on the GPTQ integers: {len(q)} tensors, {values:,} values; "
          f"order-0 entropy bound Σ n·H(q) = {bound:,.0f} bytes ({8 * bound / values:.3f} bits/value)")
    print(f"  {'layout':<18}{'bytes':>11}{'bits/value':>11}{'/ bound':>9}{'encode s':>10}{'decode s':>10}"
          f"{'  params bytes (JSON, in header)':>30}")
    for label, size, params, encode_s, decode_s in rows:
        table = f"{params:>30,}" if params else f"{'—':>30}"
        print(f"  {label:<18}{size:>11,}{8 * size / values:>11.3f}{size / bound:>9.4f}{encode_s:>10.3f}"
              f"{decode_s:>10.3f}{table}")


def report_artifacts(paths: dict[str, Path], q_gptq: dict[str, np.ndarray], repeats: int) -> None:
    """Whole artifacts from run_quantize (GPTQ, ans and zstd) and a naive one, against the bound + fp16 bytes."""
    bound = sum(entropy_bound_bytes(t) for t in q_gptq.values())
    rows, decoded = [], {}
    for label in ("gptq/auto", "gptq/ans", "gptq/zstd"):
        data = paths[label].read_bytes()
        artifact, decode_s = best_time(lambda data=data: decode_artifact(data, label), repeats)
        decoded[label] = artifact
        tensors = list(artifact.tensors.values())  # payload order
        again, encode_s = best_time(
            lambda: encode_artifact(tensors, artifact.codec, artifact.config, artifact.source, artifact.meta), repeats)
        check(again == data, f"{label}: re-encoding the decoded artifact does not give its bytes back")
        ints = {n: t.q for n, t in artifact.tensors.items() if isinstance(t, QuantizedTensor)}
        check(ints.keys() == q_gptq.keys() and all(np.array_equal(ints[n], q) for n, q in q_gptq.items()),
              f"{label}: the artifact's integers differ from the GPTQ integers measured above")
        scale_bytes = sum(artifact.stored[n].scale_bytes for n in ints)
        fp16_bytes = sum(s.data_bytes for n, s in artifact.stored.items() if n not in ints)
        coded = sum(artifact.stored[n].data_bytes for n in ints)
        rows.append((label, len(data), PREFIX_BYTES + artifact.header_bytes, coded, scale_bytes, fp16_bytes,
                     encode_s, decode_s))
    face_value = sum(t.scales.nbytes if isinstance(t, QuantizedTensor) else t.values.nbytes
                     for t in decoded["gptq/ans"].tensors.values())
    floor = bound + face_value  # the same scales and fp16 tensors in every artifact, 2 bytes a value
    naive_in = {}
    for name, t in decoded["gptq/auto"].tensors.items():
        if isinstance(t, QuantizedTensor):
            naive_in[name], naive_in[f"{name}.scales"] = t.q, t.scales
        else:
            naive_in[name] = t.values
    naive, encode_s = best_time(lambda: naive_encode(naive_in), repeats)
    _, decode_s = best_time(lambda: naive_decode(naive), repeats)
    rows.append((f"torch.save+zlib-{NAIVE_ZLIB_LEVEL}", len(naive), None, None, None, None, encode_s, decode_s))

    print(f"\nfull artifact (GPTQ): floor = entropy bound {bound:,.0f} + fp16 scales and tensors at face value"
          f" = {floor:,.0f} bytes")
    print(f"  {'artifact':<18}{'bytes':>11}{'/ floor':>9}{'prefix+hdr':>11}{'ints':>10}{'ints/bound':>11}"
          f"{'scales':>8}{'fp16':>9}{'encode s':>10}{'decode s':>10}")
    for label, size, head, coded, scales, fp16, encode_s, decode_s in rows:
        if head is None:
            parts = f"{'(one zlib stream, no config)':>49}"
        else:
            parts = f"{head:>11,}{coded:>10,}{coded / bound:>11.4f}{scales:>8,}{fp16:>9,}"
        print(f"  {label:<18}{size:>11,}{size / floor:>9.4f}{parts}{encode_s:>10.3f}{decode_s:>10.3f}")


def report_quality(weights, paths: dict[str, Path], data: Path, device: torch.device) -> None:
    """Plain validation BPB: unquantized, GPTQ and RTN artifacts (every codec must dequantize alike)."""
    auto = dequantized_state(read_artifact(paths["gptq/auto"]))
    for label in ("gptq/ans", "gptq/zstd"):
        other = dequantized_state(read_artifact(paths[label]))
        check(all(torch.equal(auto[n], t) for n, t in other.items()), f"{label} and gptq/auto dequantize differently")
    print(f"\nquality: plain validation BPB at eval loops {weights.config.resolved_eval_loops}")
    print(f"  {'weights':<12}{'val_bpb':>9}{'gap':>9}{'seconds':>9}")
    val = load_validation_set(open_dataset(data), None, weights.config.vocab_size, 1, device)
    start = sync(device)
    base = score_weights(weights, val, device)
    print(f"  {'unquantized':<12}{base.bpb:>9.4f}{'':>9}{sync(device) - start:>9.1f}")
    gaps = {}
    for label, key in (("GPTQ", "gptq/auto"), ("RTN", "rtn/auto")):
        start = sync(device)
        result = score_weights(load_weights(paths[key]), val, device)
        gaps[label] = result.bpb - base.bpb
        print(f"  {label:<12}{result.bpb:>9.4f}{gaps[label]:>+9.4f}{sync(device) - start:>9.1f}")
    print(f"  ({base.tokens:,} validation tokens, {base.bytes:,} bytes; GPTQ's gap is "
          + (f"{gaps['GPTQ'] / gaps['RTN']:.1%} of RTN's)" if gaps["RTN"] > 0 else "not compared: RTN's is ≤ 0)"))


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"bench_quantize: {what}")


if __name__ == "__main__":
    sys.exit(main())
