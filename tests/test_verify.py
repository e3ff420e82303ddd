"""Loading refuses damaged or foreign inputs by name: shards against the manifest's sha256 and the
vocabulary, model files and checkpoints against their payload sha256, a dataset against the model's tokenizer."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from golfctl.checkpoint import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from golfctl.config import TrainConfig, config_from_dict
from golfctl.dataset import open_dataset
from golfctl.errors import UserError
from golfctl.fileio import atomic_write_bytes, sha256_file
from golfctl.loader import TokenStream
from golfctl.model import GPT
from golfctl.safetensors_io import PAYLOAD_SHA256, serialize
from golfctl.shards import HEADER_BYTES
from golfctl.validation import check_model_tokenizer, load_validation_set
from golfctl.weights import Weights, load_weights, save_model_file
from stages.tokenize import TokenizeConfig, run_tokenize

CPU = torch.device("cpu")
VOCAB = 512  # small_dataset's


@pytest.fixture
def data(tmp_path, small_dataset) -> Path:
    """A private copy of small_dataset (about 200 KB) to damage."""
    return Path(shutil.copytree(small_dataset, tmp_path / "data"))


def _shard(folder: Path, split: str) -> Path:
    return folder / f"fineweb_{split}_000000.bin"


def _set_token(path: Path, position: int, value: int) -> int:
    """Overwrite token `position` of a shard in place; return the old id."""
    tokens = np.memmap(path, dtype="<u2", mode="r+", offset=HEADER_BYTES)
    old, tokens[position] = int(tokens[position]), value
    tokens.flush()
    del tokens
    return old


def _flip_low_bit(path: Path) -> None:
    """Flip the lowest bit of the first token id below VOCAB - 1 past the first few: one id off by one,
    still inside the vocabulary, so only the checksum can tell."""
    tokens = np.fromfile(path, dtype="<u2", offset=HEADER_BYTES)
    position = 10 + int(np.argmax(tokens[10:] < VOCAB - 1))
    _set_token(path, position, int(tokens[position]) ^ 1)


def test_flipped_shard_byte_is_refused_by_name_at_load(data):
    _flip_low_bit(_shard(data, "val"))
    with pytest.raises(UserError, match=r"fineweb_val_000000\.bin is corrupt: its sha256 differs.*golfctl tokenize"):
        load_validation_set(open_dataset(data), None, VOCAB, 1, CPU)
    # verification off: the damaged shard loads (and still has the tokens of a 512-id vocabulary)
    val = load_validation_set(open_dataset(data, verify=False), None, VOCAB, 1, CPU)
    assert val.tokens.size == open_dataset(data).splits["val"].tokens
    # training and calibration read the train split through TokenStream: checked there as well
    _flip_low_bit(_shard(data, "train"))
    with pytest.raises(UserError, match=r"fineweb_train_000000\.bin is corrupt"):
        TokenStream(open_dataset(data).splits["train"])
    assert TokenStream(open_dataset(data, verify=False).splits["train"]).size > 0


def test_intact_dataset_loads_the_same_tokens(small_dataset):
    dataset = open_dataset(small_dataset)
    val = dataset.splits["val"].load_tokens()
    raw = np.fromfile(_shard(small_dataset, "val"), dtype="<u2", offset=HEADER_BYTES)
    assert val.dtype == np.uint16 and np.array_equal(val, raw)
    stream = TokenStream(dataset.splits["train"])
    assert np.array_equal(stream.read(0, stream.size), np.fromfile(_shard(small_dataset, "train"), dtype="<u2",
                                                                   offset=HEADER_BYTES))


def test_token_id_outside_the_vocabulary_is_refused_by_name(tmp_path, small_dataset):
    # an official folder (shards only, no manifest, so no checksums): the id check alone
    folder = tmp_path / "fineweb10B_sp512"  # the challenge's naming gives the vocabulary: 512
    folder.mkdir()
    for split in ("train", "val"):
        shutil.copy(_shard(small_dataset, split), folder)
    _set_token(_shard(folder, "val"), 1234, 700)
    _set_token(_shard(folder, "val"), 2000, 9999)  # a later one: the first is named
    tokenizer = small_dataset / "tokenizer.model"
    with pytest.raises(UserError, match=r"fineweb_val_000000\.bin holds token id 700 at position 1,234, outside "
                                        r"the vocabulary of 512 ids"):
        load_validation_set(open_dataset(folder), tokenizer, VOCAB, 1, CPU)
    _set_token(_shard(folder, "train"), 5, 512)
    with pytest.raises(UserError, match=r"fineweb_train_000000\.bin holds token id 512 at position 5, outside"):
        TokenStream(open_dataset(folder).splits["train"])
    # a folder whose name gives no vocabulary: the caller's (the model's) bound
    other = Path(shutil.copytree(folder, tmp_path / "data"))
    assert TokenStream(open_dataset(other).splits["train"]).size > 0
    with pytest.raises(UserError, match=r"token id 512 at position 5, outside the vocabulary of 512"):
        TokenStream(open_dataset(other).splits["train"], vocab_size=VOCAB)


def _tiny_weights() -> Weights:
    config = config_from_dict(TrainConfig, {"vocab_size": VOCAB, "model_dim": 16, "num_layers": 1, "num_heads": 2,
                                            "num_kv_heads": 1, "train_seq_len": 32, "compile": False})
    torch.manual_seed(0)
    state = GPT(config.model_config()).state_dict()
    return Weights(config, state, "ema", "test weights", "0" * 64)


def _checkpoint(weights: Weights, tokenizer_sha256: str | None = None) -> Checkpoint:
    return Checkpoint(config=dataclasses.asdict(weights.config), step=3, elapsed_seconds=1.5,
                      loader={"seed": 0, "chunk_tokens": 64, "chunks_per_epoch": 2}, dataset="d" * 64, provenance={},
                      tensors={"model": weights.state, "ema": weights.state, "optim": {},
                               "rng": {"torch": torch.get_rng_state()}},
                      tokenizer_sha256=tokenizer_sha256)


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # the last tensor's last byte: the payload, not the header
    path.write_bytes(bytes(raw))


def test_flipped_model_file_and_checkpoint_payload_are_refused(tmp_path):
    weights = _tiny_weights()
    model, ckpt = tmp_path / "final.safetensors", tmp_path / "ckpt.safetensors"
    save_model_file(model, weights, provenance={})
    save_checkpoint(ckpt, _checkpoint(weights))
    assert PAYLOAD_SHA256 in read_metadata(model) and PAYLOAD_SHA256 in read_metadata(ckpt)
    loaded = load_weights(model)
    assert loaded.sha256 == sha256_file(model)  # the file hash comes from the same pass
    assert all(torch.equal(loaded.state[k], v) for k, v in weights.state.items())
    assert load_checkpoint(ckpt).step == 3
    _flip_last_byte(model)
    with pytest.raises(UserError, match=r"final\.safetensors is corrupt: payload checksum mismatch.*ema-finalize"):
        load_weights(model)
    _flip_last_byte(ckpt)
    with pytest.raises(UserError, match=r"ckpt\.safetensors is corrupt: payload checksum mismatch.*golfctl train"):
        load_checkpoint(ckpt)
    with pytest.raises(UserError, match="payload checksum mismatch"):
        load_weights(ckpt)  # quantize, eval and ema-finalize read checkpoints this way


def test_files_without_the_checksum_still_load(tmp_path, capsys):
    """Files of an older golfctl: the same metadata less payload_sha256 (and tokenizer_sha256)."""
    weights = _tiny_weights()
    for name, save in (("final.safetensors", lambda p: save_model_file(p, weights, provenance={})),
                       ("ckpt.safetensors", lambda p: save_checkpoint(p, _checkpoint(weights)))):
        new = tmp_path / name
        save(new)
        meta = read_metadata(new)
        del meta[PAYLOAD_SHA256]
        old = tmp_path / f"old_{name}"
        atomic_write_bytes(old, serialize(load_file(str(new)), meta))
        _flip_last_byte(old)  # nothing to compare with: a flipped bit goes unnoticed, as before
        loaded = load_weights(old)
        assert loaded.tokenizer_sha256 is None and loaded.state.keys() == weights.state.keys()
    assert load_checkpoint(tmp_path / "old_ckpt.safetensors").step == 3
    assert capsys.readouterr().err == ""


def test_a_different_tokenizer_of_the_same_vocab_is_refused_by_name(tmp_path, small_dataset, small_corpus):
    trained_with = sha256_file(small_dataset / "tokenizer.model")
    # the checkpoint records the run's tokenizer; ema-finalize carries it into the model file
    ckpt, model = tmp_path / "ckpt.safetensors", tmp_path / "final.safetensors"
    save_checkpoint(ckpt, _checkpoint(_tiny_weights(), trained_with))
    weights = load_weights(ckpt)
    assert weights.tokenizer_sha256 == trained_with
    save_model_file(model, weights, provenance={})
    weights = load_weights(model)
    assert weights.tokenizer_sha256 == trained_with and read_metadata(model)["tokenizer_sha256"] == trained_with
    # the model's own dataset passes
    val = load_validation_set(open_dataset(small_dataset), None, VOCAB, 1, CPU, weights.tokenizer_sha256)
    assert val.tokenizer_sha256 == trained_with
    check_model_tokenizer(open_dataset(small_dataset), weights.tokenizer_sha256)
    # another 512-piece tokenizer, trained on two of the poems
    corpus = tmp_path / "poems"
    corpus.mkdir()
    for name in ("phoenix_and_the_turtle_gut.txt", "lovers_complaint_gut.txt"):
        shutil.copy(small_corpus / name, corpus / name)
    other = tmp_path / "other"
    manifest = run_tokenize(TokenizeConfig(out=other, corpus=str(corpus), vocab_size=VOCAB, val_docs=1))
    assert manifest["tokenizer"]["vocab_size"] == VOCAB and manifest["tokenizer"]["sha256"] != trained_with
    with pytest.raises(UserError, match=r"other is tokenized with .*other/tokenizer\.model \(sha256 [0-9a-f]{12}…\), "
                                        r"not with the tokenizer the model was trained with .*same vocab size \(512\)"):
        load_validation_set(open_dataset(other), None, VOCAB, 1, CPU, weights.tokenizer_sha256)
    with pytest.raises(UserError, match=r"other/tokenizer\.model .*not with the tokenizer the model was trained with"):
        check_model_tokenizer(open_dataset(other), weights.tokenizer_sha256)  # quantize's calibration data
    # a model that records no tokenizer (older files, artifacts): nothing to compare, scored as before
    assert load_validation_set(open_dataset(other), None, VOCAB, 1, CPU, None).tokens.size == \
        manifest["splits"]["val"]["tokens"]
    check_model_tokenizer(open_dataset(other), None)
