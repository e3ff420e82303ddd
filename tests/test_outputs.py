"""No command damages its inputs: --out is checked before any work, and a failed write leaves old files intact."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from golfctl.artifact import QuantizedTensor, encode_artifact
from golfctl.config import TrainConfig, resolve_config
from golfctl.errors import UserError
from golfctl.fileio import atomic_write_bytes, staged_directory
from golfctl.outputs import ARTIFACT, MODEL, check_output_file, check_output_folder, sniff_kind
from golfctl.report import report_lines
from golfctl.weights import load_weights, save_model_file
from stages.ema_finalize import EmaFinalizeConfig, run_ema_finalize
from stages.evaluate import EvalConfig, run_eval
from stages.quantize import QuantizeConfig, run_quantize
from stages.submit import run_submit
from stages.train import TrainRun, run_train


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_run, small_dataset) -> dict[str, Path]:
    """One file of each kind golfctl writes, in a folder of their own (no stage is run on them)."""
    folder = tmp_path_factory.mktemp("kinds")
    ckpt = folder / "run" / "ckpt.safetensors"
    ckpt.parent.mkdir()
    shutil.copy(trained_run / "ckpt.safetensors", ckpt)
    model = folder / "final.safetensors"
    save_model_file(model, load_weights(ckpt), provenance={})
    artifact = folder / "artifact.bin"
    tensor = QuantizedTensor("w", (2, 3), 6, np.arange(6, dtype=np.int8).reshape(2, 3), np.ones(2, np.float16))
    artifact.write_bytes(encode_artifact([tensor], "auto", {}, {}, {}))
    shard = folder / "fineweb_val_000000.bin"
    shutil.copy(small_dataset / shard.name, shard)
    return {"checkpoint": ckpt, "model": model, "artifact": artifact, "shard": shard, "data": small_dataset}


def refused(run, match: str, *kept: Path) -> None:
    """`run()` raises a UserError matching `match` and every file in `kept` is byte-identical afterwards."""
    before = {path: path.read_bytes() for path in kept}
    with pytest.raises(UserError, match=match):
        run()
    assert {path: path.read_bytes() for path in kept} == before


def test_out_onto_an_input_or_another_kind_is_refused_before_any_work(files):
    ckpt, model, artifact, shard, data = (files[k] for k in ("checkpoint", "model", "artifact", "shard", "data"))
    refused(lambda: run_eval(EvalConfig(model=artifact, data=data, out=artifact)), "is an input", artifact)
    refused(lambda: run_ema_finalize(EmaFinalizeConfig(checkpoint=ckpt, out=ckpt)), "is an input", ckpt)
    refused(lambda: run_quantize(QuantizeConfig(model=model, data=data, out=model)), "is an input", model)
    refused(lambda: run_ema_finalize(EmaFinalizeConfig(checkpoint=ckpt, out=shard)),
            "holds a token shard, and this command writes a model file", shard)
    refused(lambda: run_ema_finalize(EmaFinalizeConfig(checkpoint=ckpt, out=artifact)), "holds a quantized artifact",
            artifact)
    refused(lambda: run_quantize(QuantizeConfig(model=model, data=data, out=ckpt)), "holds a training checkpoint", ckpt)
    link = ckpt.parent / "alias.safetensors"
    link.symlink_to(ckpt)
    refused(lambda: run_ema_finalize(EmaFinalizeConfig(checkpoint=ckpt, out=link)), "is an input", ckpt)


def test_folder_outputs_refuse_files_and_inputs(files, tmp_path):
    cfg = resolve_config(TrainConfig, "tiny", overrides=("vocab_size=512",))
    refused(lambda: run_train(TrainRun(cfg=cfg, data=files["data"], out=files["artifact"])), "is a file",
            files["artifact"])
    refused(lambda: run_train(TrainRun(cfg=cfg, data=files["data"], out=files["data"])), "is an input")
    refused(lambda: run_train(TrainRun(cfg=cfg, data=files["data"], out=files["data"] / "run")), "is inside an input")
    refused(lambda: run_submit([tmp_path], files["model"], "x", "", ""), "is a file", files["model"])
    refused(lambda: run_submit([files["checkpoint"].parent.parent], files["model"].parent / "records", "x", "", ""),
            "is inside an input")
    refused(lambda: report_lines(files["artifact"]), "is a file")


def test_out_paths_are_checked_and_their_folders_made(tmp_path):
    deep = tmp_path / "new" / "deeper" / "artifact.bin"
    assert check_output_file(deep, ARTIFACT) == deep and deep.parent.is_dir() and not deep.exists()
    assert check_output_folder(tmp_path / "a" / "run") == tmp_path / "a" / "run"
    with pytest.raises(UserError, match="is a folder"):
        check_output_file(tmp_path / "new", ARTIFACT)
    (tmp_path / "plain").write_text("notes")
    with pytest.raises(UserError, match="plain is a file, not a folder"):
        check_output_file(tmp_path / "plain" / "final.safetensors", MODEL)
    with pytest.raises(UserError, match="a file golfctl does not know"):
        check_output_file(tmp_path / "plain", MODEL)
    unicode = tmp_path / "résultats ✓" / "final.safetensors"
    assert check_output_file(unicode, MODEL) == unicode and unicode.parent.is_dir()


def test_sniffed_kinds(files, tmp_path):
    assert [sniff_kind(files[k]) for k in ("checkpoint", "model", "artifact", "shard", "data")] == [
        "training checkpoint", "model file", "quantized artifact", "token shard", "dataset folder"]
    (tmp_path / "eval.json").write_text('{"format": "golfctl.eval"}')
    assert sniff_kind(tmp_path / "eval.json") == "JSON file"


def _fail_with(monkeypatch, code: int) -> None:
    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_is_one_error_and_the_old_file_stays(tmp_path, monkeypatch, code):
    """A full disk or a refused permission at write time (injected at fsync): the old file and folder stay."""
    old = tmp_path / "artifact.bin"
    old.write_bytes(b"old artifact")
    _fail_with(monkeypatch, code)
    with pytest.raises(UserError, match=f"cannot write .*{os.strerror(code)}.*old file is unchanged"):
        atomic_write_bytes(old, b"new artifact")
    assert old.read_bytes() == b"old artifact" and sorted(p.name for p in tmp_path.iterdir()) == ["artifact.bin"]
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="cannot write"):
        with staged_directory(dataset, replace=True) as stage:
            atomic_write_bytes(stage / "shard.bin", b"tokens")
    assert [p.name for p in dataset.iterdir()] == ["manifest.json"] and len(list(tmp_path.iterdir())) == 2
