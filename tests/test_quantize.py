"""ema-finalize and quantize: model files, GPTQ vs RTN on a trained model, artifact golden, budget, --fit."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from cli_helpers import assert_clean_error, golfctl
from safetensors import safe_open

from golfctl.artifact import PREFIX_BYTES, QuantizedTensor, Stored, read_artifact
from golfctl.budget import OverBudget
from golfctl.fileio import sha256_file
from golfctl.weights import build_model, load_weights, save_model_file
from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize
from stages.quantize import FIT_PROBES, FIT_RANGE, QuantizeConfig, run_quantize


@pytest.fixture(scope="module")
def final_model(tmp_path_factory, trained_run):
    out = tmp_path_factory.mktemp("final") / "final.safetensors"
    run_ema_finalize(EmaFinalizeConfig(checkpoint=trained_run / "ckpt.safetensors", out=out))
    return out


def test_ema_finalize_writes_the_ema_weights(tmp_path, trained_run, final_model, small_dataset):
    ckpt = trained_run / "ckpt.safetensors"
    with safe_open(str(ckpt), framework="pt") as c, safe_open(str(final_model), framework="pt") as m:
        assert set(m.keys()) == {k.removeprefix("ema.") for k in c.keys() if k.startswith("ema.")}
        for key in m.keys():
            assert torch.equal(m.get_tensor(key), c.get_tensor(f"ema.{key}"))
        meta = m.metadata()
        # the source is the checkpoint's weights and config, not its file (which records wall-clock seconds)
        digest = hashlib.sha256(meta["config"].encode())
        for key in sorted(m.keys()):
            digest.update(key.encode() + m.get_tensor(key).numpy().tobytes())
    assert meta["format"] == "golfctl.model" and meta["weights"] == "ema" and meta["source"] == digest.hexdigest()
    summary = run_ema_finalize(EmaFinalizeConfig(checkpoint=ckpt, out=tmp_path / "raw.safetensors", raw=True,
                                                 compare=True, data=small_dataset))
    assert load_weights(tmp_path / "raw.safetensors").kind == "raw"
    assert 0 < summary["raw"]["val_bpb"] < 8 and 0 < summary["ema"]["val_bpb"] < 8
    result = golfctl("ema-finalize", final_model, "--out", tmp_path / "x.safetensors")
    assert result.returncode == 1 and "not a training checkpoint" in result.stderr


def test_gptq_beats_rtn_on_every_matrix_and_quantize_json_records_both(tmp_path, final_model, small_dataset):
    summaries = {method: run_quantize(QuantizeConfig(model=final_model, data=small_dataset,
                                                     out=tmp_path / f"{method}.bin", method=method, calib_batches=4))
                 for method in ("gptq", "rtn")}
    report = json.loads((tmp_path / "gptq.quantize.json").read_text())
    assert report["tensors"] == summaries["gptq"]["tensors"]
    assert report["artifact_sha256"] == hashlib.sha256((tmp_path / "gptq.bin").read_bytes()).hexdigest()
    artifact = read_artifact(tmp_path / "gptq.bin")
    matrices = {name for name, t in report["tensors"].items() if t["group"] != "fp16"}
    assert matrices == {name for name, t in artifact.tensors.items() if isinstance(t, QuantizedTensor)}
    for name, line in report["tensors"].items():
        stored = artifact.stored[name]
        assert (line["data_bytes"], line["scale_bytes"], line["codec"]) == (
            stored.data_bytes, stored.scale_bytes, stored.describe())
    rtn = summaries["rtn"]["tensors"]
    for name in matrices:
        gptq = report["tensors"][name]
        # GPTQ's report carries RTN's errors on the same grid: the --method rtn artifact's own
        assert gptq["rtn_output_error"] == pytest.approx(rtn[name]["output_error"], rel=1e-9), name
        assert gptq["rtn_weight_error"] == pytest.approx(rtn[name]["weight_error"], rel=1e-9), name
        assert "rtn_output_error" not in rtn[name]
        assert gptq["output_error"] < 0.85 * gptq["rtn_output_error"], name


def test_golden_artifact_and_exact_round_trip(tmp_path, final_model, small_dataset, golden):
    # A model file with fixed provenance: the trained weights are deterministic, the run's timing is not.
    fixed = tmp_path / "fixed.safetensors"
    save_model_file(fixed, dataclasses.replace(load_weights(final_model), sha256="0" * 64), provenance={})
    out = tmp_path / "artifact.bin"
    summary = run_quantize(QuantizeConfig(model=fixed, data=small_dataset, out=out, calib_batches=2))
    artifact = read_artifact(out)
    size = out.stat().st_size
    assert size == summary["artifact_bytes"] == PREFIX_BYTES + artifact.header_bytes + artifact.payload_bytes
    golden("quantize_artifact.json", {
        "about": "quantize --calib-batches 2 (gptq, int6 blocks, int8 embedding, codec auto) of the trained_run "
                 "fixture's EMA weights in a model file with fixed metadata; source.model_sha256 is that file's "
                 "sha256; per tensor: the codecs picked (integers+scales) and the payload bytes of its coded "
                 "integers (fp16: of its values) and of its row scales",
        "artifact": {"bytes": size, "sha256": sha256_file(out), "header_bytes": artifact.header_bytes,
                     "payload_bytes": artifact.payload_bytes, "codec": artifact.codec},
        "meta": artifact.meta,
        "source": artifact.source,
        "tensors": [_tensor_row(name, t, artifact.stored[name]) for name, t in artifact.tensors.items()],
    })
    loaded = load_weights(out)
    for name, tensor in artifact.tensors.items():
        if isinstance(tensor, QuantizedTensor):
            expected = torch.from_numpy(tensor.q).float() * torch.from_numpy(tensor.scales).float()[:, None]
        else:
            expected = torch.from_numpy(tensor.values).float()
        assert torch.equal(loaded.state[name], expected.reshape(tensor.shape)), name
    # The artifact rebuilds the model: its logits equal those of the dequantized weights.
    reference = build_model(load_weights(final_model), torch.device("cpu"))
    reference.load_state_dict(loaded.state)
    x = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(build_model(loaded, torch.device("cpu"))(x), reference(x))


def _tensor_row(name: str, tensor, stored: Stored) -> dict:
    row = {"name": name, "shape": list(tensor.shape), "codec": stored.describe(), "coded_bytes": stored.data_bytes}
    if isinstance(tensor, QuantizedTensor):
        return {**row, "kind": f"int{tensor.bits}", "scale_bytes": stored.scale_bytes}
    return {**row, "kind": "fp16"}


def test_over_budget_exits_3_and_writes_nothing(tmp_path, final_model, small_dataset):
    out = tmp_path / "artifact.bin"
    result = golfctl("quantize", final_model, "--data", small_dataset, "--out", out, "--budget", 60_000,
                     "--calib-batches", 2)
    assert_clean_error(result, "over the 60,000-byte budget", "--fit", code=3)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fit_lands_within_one_bisection_step(tmp_path, final_model, small_dataset):
    small = run_quantize(QuantizeConfig(model=final_model, data=small_dataset, out=tmp_path / "a.bin",
                                        clip_sigmas=FIT_RANGE[0], calib_batches=2))
    coarse = run_quantize(QuantizeConfig(model=final_model, data=small_dataset, out=tmp_path / "b.bin",
                                         clip_sigmas=FIT_RANGE[1], calib_batches=2))
    budget = (small["total_bytes"] + coarse["total_bytes"]) // 2  # forces a real search
    fit = run_quantize(QuantizeConfig(model=final_model, data=small_dataset, out=tmp_path / "fit.bin", budget=budget,
                                      fit=True, calib_batches=2))
    assert fit["total_bytes"] <= budget and (tmp_path / "fit.bin").stat().st_size == fit["artifact_bytes"]
    step = (FIT_RANGE[1] - FIT_RANGE[0]) / 2 ** FIT_PROBES
    with pytest.raises(OverBudget):
        run_quantize(QuantizeConfig(model=final_model, data=small_dataset, out=tmp_path / "c.bin", budget=budget,
                                    clip_sigmas=fit["clip_sigmas"] - step, calib_batches=2))


def test_inspect_artifact_and_hostile_files(tmp_path, final_model, small_dataset):
    out = tmp_path / "artifact.bin"
    run_quantize(QuantizeConfig(model=final_model, data=small_dataset, out=out, calib_batches=2))
    result = golfctl("inspect", out)
    assert result.returncode == 0, result.stderr
    for fragment in ("golfctl.quantized v2", "codec auto", "tok_emb.weight", "int8", "int6", "rows+split", "headroom"):
        assert fragment in result.stdout
    raw = bytearray(out.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    (tmp_path / "flipped.bin").write_bytes(bytes(raw))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "pickle.bin")
    for bad in ("flipped.bin", "pickle.bin"):
        result = golfctl("inspect", tmp_path / bad)
        assert result.returncode == 1 and result.stderr.startswith("Error:") and "Traceback" not in result.stderr
    result = golfctl("quantize", tmp_path / "pickle.bin", "--data", small_dataset, "--out", tmp_path / "x.bin")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr


def test_frontier_quantize_options_are_checked(tmp_path, final_model, small_dataset):
    base = dict(model=final_model, data=small_dataset, out=tmp_path / "a.bin")
    problems = QuantizeConfig(**base, gate_bits=1, lqer_top_k=-1, lqer_rank=0, lqer_group=0, lqer_factor_bits=9,
                              mlp_clip_sigmas=-1.0).problems()
    for fragment in ("--gate-bits must be 0 (float16) or in 2..8", "--lqer-top-k must be >= 0", "--lqer-rank must be",
                     "--lqer-group must be", "--lqer-factor-bits must be in 2..8", "--mlp-clip-sigmas must be >= 0"):
        assert any(fragment in p for p in problems), fragment
    assert any("--fit bisects" in p for p in QuantizeConfig(**base, fit=True, mlp_clip_sigmas=11.5,
                                                            attn_clip_sigmas=13.0).problems())
    result = golfctl("quantize", final_model, "--data", small_dataset, "--out", tmp_path / "b.bin", "--gate-bits", 1)
    assert_clean_error(result, "--gate-bits must be 0 (float16) or in 2..8")
