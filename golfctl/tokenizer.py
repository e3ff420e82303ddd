"""SentencePiece tokenizers: training with the challenge's settings, loading and checks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from golfctl.errors import UserError
from golfctl.shards import BOS_ID, MAX_VOCAB

# The challenge's tokenizer settings (its data/download_hf_docs_and_tokenize.py).
CHALLENGE_TRAINER_SETTINGS = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": BOS_ID,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}
# The trainer silently drops any sentence longer than max_sentence_length (4192 bytes by
# default), i.e. every whole play and most web pages; we feed it pieces below that size.
MAX_TRAINING_PIECE_BYTES = 4000
SPACE_PIECE = "\u2581"


def training_pieces(documents: Iterable[str]) -> Iterator[str]:
    """Cut documents into pieces of at most MAX_TRAINING_PIECE_BYTES UTF-8 bytes.

    Consecutive lines are packed together (the normalizer turns newlines into spaces, so
    packing keeps most words' leading space as in the encoded stream); a single overlong
    line is cut at spaces, or at character boundaries if it has none.
    """
    for doc in documents:
        doc = doc.replace("\x00", " ")
        piece: list[str] = []
        size = 0
        for line in doc.split("\n"):
            for part in _cut_line(line):
                part_size = len(part.encode("utf-8")) + 1
                if piece and size + part_size > MAX_TRAINING_PIECE_BYTES:
                    yield "\n".join(piece)
                    piece, size = [], 0
                piece.append(part)
                size += part_size
        if piece and any(p.strip() for p in piece):
            yield "\n".join(piece)


def _cut_line(line: str) -> Iterator[str]:
    while len(line.encode("utf-8")) > MAX_TRAINING_PIECE_BYTES:
        # A UTF-8 character is at most 4 bytes, so this many characters always fit.
        head = line[: MAX_TRAINING_PIECE_BYTES // 4]
        cut = head.rfind(" ")
        cut = cut if cut > 0 else len(head)
        yield line[:cut]
        line = line[cut:]
    yield line


def trainer_settings(reserved: Sequence[str] = ()) -> dict:
    """The challenge's settings, plus `reserved` symbols (CaseOps' operators) as user-defined pieces:
    ids 4.. right after the control and unknown pieces, each always a token of its own."""
    if not reserved:
        return CHALLENGE_TRAINER_SETTINGS
    return {**CHALLENGE_TRAINER_SETTINGS, "user_defined_symbols": list(reserved)}


def train_tokenizer(pieces: Iterable[str], vocab_size: int, reserved: Sequence[str] = ()) -> bytes:
    """Train a BPE SentencePiece model on text pieces (`trainer_settings(reserved)`); return the serialized model."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(pieces),
            model_writer=model,
            vocab_size=vocab_size,
            minloglevel=2,
            **trainer_settings(reserved),
        )
    except RuntimeError as exc:
        raise UserError(f"SentencePiece could not train a {vocab_size}-token vocabulary: {exc}") from None
    return model.getvalue()


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer {path} does not exist; pass the .model file written by SentencePiece")
    return parse_tokenizer(path.read_bytes(), str(path))


def parse_tokenizer(model: bytes, name: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model)
    except (RuntimeError, OSError):
        raise UserError(f"{name} is not a SentencePiece model file") from None
    return sp


def check_shard_tokenizer(sp: spm.SentencePieceProcessor, name: str) -> None:
    """Refuse tokenizers whose ids don't fit the shards or whose bytes can't be counted exactly."""
    if sp.vocab_size() > MAX_VOCAB:
        raise UserError(f"{name} has {sp.vocab_size()} tokens; shards store uint16 ids, so at most {MAX_VOCAB}")
    if sp.bos_id() != BOS_ID:
        raise UserError(f"{name} has BOS id {sp.bos_id()}; the shard format requires BOS id {BOS_ID}")
    space = sp.piece_to_id(SPACE_PIECE)
    if sp.is_unknown(space) or sp.id_to_piece(space) != SPACE_PIECE:
        raise UserError(
            f"{name} has no standalone '{SPACE_PIECE}' piece: a lone space would fall back to the 3 UTF-8 "
            "bytes of U+2581 and bits per byte would be miscounted; retrain it with `golfctl tokenize`"
        )


def check_reserved_pieces(sp: spm.SentencePieceProcessor, symbols: Sequence[str], name: str) -> None:
    """Refuse a tokenizer that does not encode each of `symbols` alone as one piece of its own."""
    missing = [f"U+{ord(s):04X}" for s in symbols
               if sp.is_unknown(sp.piece_to_id(s)) or sp.encode(s, out_type=int) != [sp.piece_to_id(s)]]
    if missing:
        raise UserError(f"{name} has no piece of its own for {', '.join(missing)} (CaseOps' operators); train one "
                        "with `golfctl tokenize --case-ops` without --tokenizer, or use the record's "
                        "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
