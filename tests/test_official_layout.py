"""An official dataset folder in the challenge's download layout finds its tokenizer without --tokenizer.

The layout is the one openai/parameter-golf's data/cached_challenge_fineweb.py writes:
data/datasets/fineweb10B_sp{V}/fineweb_{train,val}_NNNNNN.bin, data/tokenizers/fineweb_{V}_bpe.model and
data/manifest.json (whose "datasets" entry names a "tokenizers" entry with a "model_path" relative to data/).
Built here from the small dataset's shards and tokenizer, without golfctl's own manifest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from golfctl.dataset import open_dataset, resolve_tokenizer
from golfctl.errors import UserError
from golfctl.validation import load_validation_set

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 512  # the small dataset's
NAME = f"fineweb10B_sp{VOCAB}"


def official_layout(base: Path, source: Path, tokenizer: str | None = f"fineweb_{VOCAB}_bpe.model",
                    folder: str = NAME) -> Path:
    """`base`/data in the challenge's layout, from golfctl dataset `source`; returns the dataset folder."""
    data = base / "data"
    folder_path = data / "datasets" / folder
    folder_path.mkdir(parents=True)
    for shard in source.glob("fineweb_*_*.bin"):
        shutil.copy(shard, folder_path / shard.name)
    if tokenizer is not None:
        (data / "tokenizers").mkdir()
        shutil.copy(source / "tokenizer.model", data / "tokenizers" / tokenizer)
    return folder_path


def challenge_manifest(data: Path, model_path: str) -> None:
    """data/manifest.json with the fields the download script reads (as its export writes them)."""
    manifest = {
        "version": "10B",
        "tokenizers": [
            {"name": "pure_byte_260", "kind": "byte", "path": "tokenizers/fineweb_pure_byte_260.json"},
            {"name": f"sp_bpe_{VOCAB}", "kind": "sentencepiece_bpe", "vocab_size": VOCAB,
             "model_path": model_path, "vocab_path": model_path.removesuffix(".model") + ".vocab"},
        ],
        "datasets": [
            {"name": "fineweb10B_byte260", "tokenizer_name": "pure_byte_260", "tokenizer_kind": "byte"},
            {"name": NAME, "tokenizer_name": f"sp_bpe_{VOCAB}", "tokenizer_kind": "sentencepiece_bpe",
             "path": f"datasets/{NAME}", "vocab_size": VOCAB, "stats": {"files_train": 1, "files_val": 1}},
        ],
    }
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def announced(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("tokenizer: ")]


def test_tokenizer_found_by_the_challenge_layout(tmp_path, small_dataset, capsys):
    folder = official_layout(tmp_path, small_dataset)
    expected = tmp_path / "data" / "tokenizers" / f"fineweb_{VOCAB}_bpe.model"
    dataset = open_dataset(folder)
    assert dataset.manifest is None
    assert dataset.tokenizer_path == expected and resolve_tokenizer(dataset) == expected
    # End to end: the validation set loads with no --tokenizer, scored with the discovered file.
    val = load_validation_set(dataset, None, VOCAB, 1, torch.device("cpu"))
    assert val.tokenizer == expected
    assert val.tokens.size == open_dataset(small_dataset).splits["val"].tokens
    lines = announced(capsys)
    assert len(lines) == 1, "announced once per dataset, however often it is asked"
    assert str(expected) in lines[0] and "vocab 512" in lines[0]


def test_tokenizer_named_by_the_challenge_manifest(tmp_path, small_dataset, capsys):
    folder = official_layout(tmp_path, small_dataset, tokenizer="custom_512.model")
    data = tmp_path / "data"
    challenge_manifest(data, "tokenizers/custom_512.model")
    assert resolve_tokenizer(open_dataset(folder)) == data / "tokenizers" / "custom_512.model"
    assert f"named for {NAME} by {data / 'manifest.json'}" in announced(capsys)[0]
    # A manifest naming a file that is not there is passed over for the conventional name.
    challenge_manifest(data, "tokenizers/gone.model")
    shutil.copy(data / "tokenizers" / "custom_512.model", data / "tokenizers" / f"fineweb_{VOCAB}_bpe.model")
    assert resolve_tokenizer(open_dataset(folder)) == data / "tokenizers" / f"fineweb_{VOCAB}_bpe.model"


def test_relative_folder_and_vocab_from_the_model(tmp_path, small_dataset, monkeypatch, capsys):
    official_layout(tmp_path, small_dataset, folder="my_copy")
    monkeypatch.chdir(tmp_path)
    dataset = open_dataset("data/datasets/my_copy")
    with pytest.raises(UserError, match="V unknown"):
        resolve_tokenizer(dataset)
    # The model's vocab_size stands in for the one the folder's name does not give.
    assert resolve_tokenizer(dataset, vocab_size=VOCAB) == Path(f"data/tokenizers/fineweb_{VOCAB}_bpe.model")


def test_explicit_tokenizer_wins(tmp_path, small_dataset, capsys):
    folder = official_layout(tmp_path, small_dataset)
    explicit = small_dataset / "tokenizer.model"
    dataset = open_dataset(folder)
    assert resolve_tokenizer(dataset, explicit) == explicit
    assert load_validation_set(dataset, explicit, VOCAB, 1, torch.device("cpu")).tokenizer == explicit
    assert announced(capsys) == [], "nothing is looked for when --tokenizer is given"


def test_missing_tokenizer_names_every_path_looked_at(tmp_path, small_dataset):
    folder = official_layout(tmp_path, small_dataset, tokenizer=None)
    data = tmp_path / "data"
    dataset = open_dataset(folder)
    assert dataset.tokenizer_path is None
    with pytest.raises(UserError) as caught:
        resolve_tokenizer(dataset)
    message = str(caught.value)
    assert "\n" not in message and "--tokenizer" in message
    for path in (data / "manifest.json", data / "tokenizers" / f"fineweb_{VOCAB}_bpe.model"):
        assert str(path) in message
    challenge_manifest(data, "tokenizers/gone.model")
    with pytest.raises(UserError, match=f"{data / 'tokenizers' / 'gone.model'} \\(named by"):
        resolve_tokenizer(open_dataset(folder))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_dry_run_on_a_fresh_out_writes_nothing(tmp_path):
    out = tmp_path / "runs" / "x"
    official = "/d/data/datasets/fineweb10B_sp1024"

    def dry_run(*variables: str) -> str:
        result = subprocess.run(["make", "-n", "--no-print-directory", "all", f"OUT={out}", *variables], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    plan = dry_run()
    assert "golfctl tokenize" in plan and "golfctl report" in plan
    # Official data with no TOKENIZER: no stage gets --tokenizer, they find it themselves.
    plan = dry_run(f"DATA={official}", "QUANT_ARGS=--eval")
    assert "--tokenizer" not in plan and "golfctl tokenize" not in plan
    # TOKENIZER given: every stage that reads the tokenizer gets it, quantize --eval included.
    plan = dry_run(f"DATA={official}", "TOKENIZER=/d/t.model", "QUANT_ARGS=--eval")
    quantize = [line for line in plan.splitlines() if " quantize " in line]
    assert len(quantize) == 1 and "--tokenizer /d/t.model" in quantize[0]
    assert plan.count("--tokenizer /d/t.model") == 4  # train, quantize --eval, eval, eval (fp)
    assert not tmp_path.joinpath("runs").exists(), "make -n created something"
