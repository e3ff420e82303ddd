"""CaseOps (golfctl/caseops.py): the transform by its definition, the validation byte sidecar that
`tokenize --case-ops` writes, bits per byte counted through it, and the datasets that carry one."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from golfctl import caseops
from golfctl.bpb import SidecarBytes
from golfctl.caseops import ALLCAPS, CAPNEXT, ESC, TITLE, CaseOpsError
from golfctl.config import ModelConfig
from golfctl.dataset import find_official_tokenizer, open_dataset
from golfctl.errors import UserError
from golfctl.model import GPT
from golfctl.scoring import Scorer, sliding_windows, windows_by_chunk
from golfctl.shards import BOS_ID, HEADER_BYTES, read_shard_header
from golfctl.tokenizer import load_tokenizer
from caseops_docs import VAL_DOCS
from scoring_problem import CHUNK, N_TOKENS, ONE, SEQ_LEN, STRIDE, TABLES, stream, tiny_model
from stages.tokenize import TokenizeConfig, run_tokenize

pytestmark = pytest.mark.usefixtures("one_thread")

# The definition, case by case (module docstring of golfctl/caseops.py).
ENCODINGS = [
    ("", ""),
    ("the cat", "the cat"),
    ("The", TITLE + "the"),
    ("A", TITLE + "a"),  # a lone capital is a title word
    ("I am", TITLE + "i am"),
    ("NASA", ALLCAPS + "nasa"),
    ("OK.", ALLCAPS + "ok."),
    ("McDonald", TITLE + "mc" + CAPNEXT + "donald"),
    ("iPhone", "i" + CAPNEXT + "phone"),
    ("ABc", TITLE + "a" + CAPNEXT + "bc"),
    ("aBC", "a" + CAPNEXT + "b" + CAPNEXT + "c"),
    ("HTTPServer", TITLE + "h" + "".join(CAPNEXT + c for c in "ttps") + "erver"),
    ("ABC123DEF", ALLCAPS + "abc123" + ALLCAPS + "def"),  # digits end a word
    ("x_Y", "x_" + TITLE + "y"),
    ("ÉCOLE", "É" + ALLCAPS + "cole"),  # only ASCII letters are words; É stays as it is
    ("naïVE", "na" + "ï" + ALLCAPS + "ve"),
    ("Ωmega Жук", "Ωmega Жук"),
    ("\ue001", ESC + "\ue001"),  # operators in the input are escaped
    ("\ue004\ue004X", ESC + "\ue004" + ESC + "\ue004" + TITLE + "x"),
    ("\ue000\ue005", "\ue000\ue005"),  # other private-use characters pass through
]

HOSTILE = [
    "", " ", "\n\n", "A", "a", "Z z", "AbCdEf", "aBcDeF", "ALL CAPS HERE", "ALLCAPS1WORD", "CamelCase camelCase",
    "\ue001\ue002\ue003\ue004", ESC, ESC + ESC + TITLE, TITLE + "word", "x" + CAPNEXT + "y", "\ue000\ue005\uf8ff",
    "Ünïcödé ÉCOLE Straße ẞ İstanbul ǅemal ǈ ﬁne Ⅻ", "中文 日本語 한국어 Ελληνικά Русский العربية", "😀 𝔘𝔫𝔦 🇫🇷",
    "e\u0301 A\u0301 \u0301Start", "\x00\x01\x7f\u200b\ufeff", "12345 3.14 1e10 0xFF", "tab\tSep\r\nCRLF\r\n",
    "O'Neill's McDonald's NASA's", "  Leading and trailing  ",
]


@pytest.mark.parametrize("text, encoded", ENCODINGS)
def test_encoding_by_definition(text, encoded):
    assert caseops.encode(text) == encoded
    assert caseops.decode(encoded) == text


def _fuzz(n: int) -> list[str]:
    """Random strings over an alphabet of letters of both cases, operators, other scripts, combining marks."""
    alphabet = [*"aAbBzZ mM.,'0_\n\t", *caseops.MARKERS, "\ue000", "é", "É", "ß", "Ω", "中", "😀", "\u0301", "Ａ", "ǅ"]
    rng = random.Random(0)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(n)]


def test_round_trip_on_hostile_text():
    for text in HOSTILE + _fuzz(3000):
        encoded = caseops.encode(text)
        assert caseops.decode(encoded) == text, repr(text)
        assert not any("A" <= ch <= "Z" for ch in encoded), repr(text)
        # every character of the original is accounted for in bytes, operators adding none
        assert caseops.original_bytes_per_char(encoded).sum() == len(text.encode("utf-8")), repr(text)


@pytest.mark.parametrize("text", [TITLE, ALLCAPS + " x", "a" + CAPNEXT, ESC, "ab" + TITLE + "cd", CAPNEXT + "abc",
                                  ALLCAPS + "a" + CAPNEXT + "b", TITLE + "a" + TITLE + "b", "x" + ESC])
def test_decode_refuses_text_no_encoding_produces(text):
    with pytest.raises(CaseOpsError):
        caseops.decode(text)


def test_piece_bytes_by_span():
    encoded = caseops.encode("The é\ue001!")  # TITLE t h e ␠ é ESC U+E001 !
    assert caseops.original_bytes_per_char(encoded).tolist() == [0, 1, 1, 1, 1, 2, 0, 3, 1]
    spans = [(0, 1), (1, 4), (4, 5), (5, 5), (5, 6), (6, 7), (7, 8), (8, 9)]  # (5, 5): a byte-fallback piece
    assert caseops.piece_original_bytes(encoded, spans).tolist() == [0, 3, 1, 0, 2, 0, 3, 1]


# --- a CaseOps dataset: hostile validation documents, three poems to train on ---------------------------

def _doc_starts(tokens: np.ndarray) -> list[int]:
    return [*np.flatnonzero(tokens == BOS_ID).tolist(), tokens.size]


def test_sidecar_counts_the_original_text(caseops_dataset):
    ds = open_dataset(caseops_dataset)
    assert ds.manifest["version"] == 2 and ds.text_transform == caseops.CASEOPS
    val = ds.splits["val"]
    tokens, target_bytes = val.load_tokens(), val.load_target_bytes()
    assert len(val.shards) > 1 and [s.tokens for s in val.sidecar] == [s.tokens for s in val.shards]
    assert target_bytes.shape == tokens.shape
    # SentencePiece drops a document's leading and trailing whitespace, and the record's count with it.
    expected = [len(doc.strip().encode("utf-8")) for doc in VAL_DOCS]
    starts = _doc_starts(tokens)
    assert [int(target_bytes[a:b].sum()) for a, b in zip(starts, starts[1:])] == expected
    assert val.bytes == sum(expected) == SidecarBytes(target_bytes).stream_bytes(tokens)
    sp = load_tokenizer(ds.tokenizer_path)
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(caseops.MARKERS)
    markers = np.isin(tokens, [sp.piece_to_id(m) for m in caseops.MARKERS])
    assert markers.sum() > 10 and (target_bytes[markers & ~_escaped(tokens, sp)] == 0).all()
    assert (target_bytes[tokens == BOS_ID] == 0).all()
    # each document's tokens decode, through the transform, to the document as SentencePiece normalizes it
    for (a, b), doc in zip(zip(starts, starts[1:]), VAL_DOCS):
        assert caseops.decode(sp.decode(tokens[a + 1:b].tolist())) == " ".join(doc.split()).replace("e\u0301", "é")


def _escaped(tokens: np.ndarray, sp) -> np.ndarray:
    """Tokens that follow an ESC token that is not itself escaped (literal operators, worth 3 bytes)."""
    esc = sp.piece_to_id(ESC)
    out = np.zeros(tokens.size, dtype=bool)
    for i in range(1, tokens.size):
        out[i] = tokens[i - 1] == esc and not out[i - 1]
    return out


def test_bpb_through_the_sidecar_equals_the_definition(caseops_dataset):
    """The scorer's bytes and BPB on the validation split, against Σ nll by one forward per window and the
    original documents' UTF-8 length."""
    ds = open_dataset(caseops_dataset)
    val = ds.splits["val"]
    tokens = val.load_tokens()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=ds.vocab_size, model_dim=32, num_layers=1, num_heads=2, num_kv_heads=1))
    seq_len = 16
    windows = sliding_windows(tokens.size, seq_len, 5)
    sums = Scorer(model, SidecarBytes(val.load_target_bytes()).on(ONE.device), ONE, 1, 3, seq_len).score(
        tokens, windows)
    x = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        nll = sum(model(x[w.start:w.end][None], x[w.start + 1:w.end + 1][None], loops=1,
                        reduction="none")[0, w.offset:].double().sum().item() for w in windows)
    n_bytes = sum(len(doc.strip().encode("utf-8")) for doc in VAL_DOCS)
    assert sums.bytes == n_bytes and sums.tokens == tokens.size - 1
    assert sums.bpb == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-9)


def test_scorer_reads_sidecar_bytes_at_each_target_position():
    """A sidecar worth one byte at a single position p: exactly the chunk of windows that scores p counts it,
    batches with filler rows included; and all positions together give the sidecar's sum."""
    model, tokens = tiny_model(), stream()
    windows = sliding_windows(N_TOKENS, SEQ_LEN, STRIDE)
    for p in (1, 2, SEQ_LEN, SEQ_LEN + 1, CHUNK, CHUNK + 1, N_TOKENS - 1):
        one_hot = np.zeros(N_TOKENS, dtype=np.uint16)
        one_hot[p] = 1
        scorer = Scorer(model, SidecarBytes(one_hot).on(ONE.device), ONE, 1, 3, SEQ_LEN)
        counted = [scorer.score_into(tokens, chunk, None).bytes for chunk in windows_by_chunk(windows, CHUNK)]
        assert counted == [int(p in range(i * CHUNK + 1, (i + 1) * CHUNK + 1)) for i in range(len(counted))], p
    sidecar = np.random.default_rng(3).integers(0, 7, N_TOKENS).astype(np.uint16)
    sums = Scorer(model, SidecarBytes(sidecar).on(ONE.device), ONE, 1, 4, SEQ_LEN).score(tokens, windows)
    by_tables = Scorer(model, TABLES, ONE, 1, 4, SEQ_LEN).score(tokens, windows)
    assert sums.bytes == int(sidecar[1:].sum()) and sums.nll == by_tables.nll


def test_a_manifest_without_sidecar_still_loads(small_dataset):
    ds = open_dataset(small_dataset)
    assert ds.manifest["version"] == 1 and "text_transform" not in ds.manifest
    assert ds.text_transform is None and ds.splits["val"].sidecar is None
    assert ds.splits["val"].load_target_bytes() is None


def _copy(dataset: Path, to: Path) -> Path:
    shutil.copytree(dataset, to)
    return to


def _rewrite_shard(path: Path, values: np.ndarray) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, values.size)
    path.write_bytes(header.tobytes() + values.astype("<u2").tobytes())


def test_a_sidecar_that_does_not_match_its_shards_is_refused(tmp_path, caseops_dataset):
    # one entry short, the manifest updated to match: the sidecar no longer has one entry per token
    short = _copy(caseops_dataset, tmp_path / "short")
    manifest = json.loads((short / "manifest.json").read_text())
    entry = manifest["splits"]["val"]["byte_sidecar"]["shards"][-1]
    path = short / entry["file"]
    _rewrite_shard(path, np.fromfile(path, dtype="<u2", offset=HEADER_BYTES)[:-1])
    entry["tokens"] -= 1
    (short / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="one entry per token"):
        open_dataset(short)
    # the same short shard under the original manifest: its header disagrees with the count listed
    (short / "manifest.json").write_text((caseops_dataset / "manifest.json").read_text())
    with pytest.raises(UserError, match=f"holds {entry['tokens']} tokens but manifest.json lists"):
        open_dataset(short)
    # same length, other bytes: the checksum refuses it when it is read
    changed = _copy(caseops_dataset, tmp_path / "changed")
    path = changed / "fineweb_val_bytes_000000.bin"
    values = np.fromfile(path, dtype="<u2", offset=HEADER_BYTES)
    values[3] += 1
    _rewrite_shard(path, values)
    with pytest.raises(UserError, match="fineweb_val_bytes_000000.bin is corrupt"):
        open_dataset(changed).splits["val"].load_target_bytes()
    # a sidecar format this golfctl does not know
    other = _copy(caseops_dataset, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["splits"]["val"]["byte_sidecar"]["version"] = 2
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="golfctl.token_bytes"):
        open_dataset(other)
    # a CaseOps manifest that lists no sidecar would count the transformed text's bytes
    del manifest["splits"]["val"]["byte_sidecar"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="no validation byte sidecar"):
        open_dataset(other)


def test_the_records_caseops_layout(tmp_path, caseops_dataset):
    """The record's data folder, fineweb10B_sp{V}_lossless_caps_caseops_v1_reserved with fineweb_val_bytes_*.bin
    beside the shards and no golfctl manifest, and its tokenizer's conventional name."""
    data = tmp_path / "data"
    vocab = open_dataset(caseops_dataset).vocab_size
    folder = data / "datasets" / f"fineweb10B_sp{vocab}_lossless_caps_caseops_v1_reserved"
    folder.mkdir(parents=True)
    for shard in caseops_dataset.glob("fineweb_*.bin"):
        shutil.copy(shard, folder)
    (data / "tokenizers").mkdir()
    tokenizer = data / "tokenizers" / f"fineweb_{vocab}_bpe_lossless_caps_caseops_v1_reserved.model"
    shutil.copy(caseops_dataset / "tokenizer.model", tokenizer)
    ds, ours = open_dataset(folder), open_dataset(caseops_dataset)
    assert ds.manifest is None and ds.text_transform == caseops.CASEOPS
    assert find_official_tokenizer(folder).path == tokenizer
    val = ds.splits["val"]
    assert [s.path.name for s in val.shards] == [s.path.name for s in ours.splits["val"].shards]
    assert np.array_equal(val.load_target_bytes(), ours.splits["val"].load_target_bytes())
    # the shard header the record's train_gpt.py checks: magic, version 1, count; then uint16 entries
    assert read_shard_header(folder / "fineweb_val_bytes_000000.bin") == val.sidecar[0].tokens
    last = sorted(folder.glob("fineweb_val_bytes_*.bin"))[-1]
    last.unlink()
    with pytest.raises(UserError, match="one entry per token"):
        open_dataset(folder)
    for path in folder.glob("fineweb_val_bytes_*.bin"):
        path.unlink()
    with pytest.raises(UserError, match="no validation byte sidecar"):
        open_dataset(folder)


def test_case_ops_refuses_a_tokenizer_without_the_operators(tmp_path, small_dataset, caseops_corpus):
    with pytest.raises(UserError, match="U\\+E001, U\\+E002, U\\+E003, U\\+E004"):
        run_tokenize(TokenizeConfig(out=tmp_path / "ds", corpus=str(caseops_corpus), val_docs=len(VAL_DOCS),
                                    tokenizer=small_dataset / "tokenizer.model", case_ops=True))
    assert not (tmp_path / "ds").exists()


def test_train_and_eval_score_a_caseops_dataset_through_its_sidecar(tmp_path, caseops_dataset):
    """End to end: train validates and eval scores (plain, sliding, score-first TTT) the original text's bytes."""
    from golfctl.bpb import TorchSidecarBytes
    from golfctl.config import TrainConfig, config_from_dict
    from golfctl.validation import load_validation_set
    from stages.evaluate import EvalConfig, run_eval
    from stages.train import TrainRun, run_train

    ds = open_dataset(caseops_dataset)
    assert isinstance(load_validation_set(ds, None, ds.vocab_size, 1, ONE.device).tables, TorchSidecarBytes)
    cfg = config_from_dict(TrainConfig, {
        "vocab_size": ds.vocab_size, "model_dim": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
        "mlp_mult": 2.0, "train_seq_len": 16, "train_batch_tokens": 256, "grad_accum": 1, "iterations": 3,
        "warmup_steps": 1, "log_every": 1, "compile": False})
    run_train(TrainRun(cfg=cfg, data=caseops_dataset, out=tmp_path / "run"))
    report = run_eval(EvalConfig(model=tmp_path / "run" / "ckpt.safetensors", data=caseops_dataset,
                                 out=tmp_path / "eval.json", stride=8, ttt=True, compile=False))
    n_bytes = sum(len(doc.strip().encode("utf-8")) for doc in VAL_DOCS)
    assert {name: r["bytes"] for name, r in report["results"].items()} == dict.fromkeys(
        ("plain", "sliding", "ttt"), n_bytes)
