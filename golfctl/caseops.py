"""CaseOps: the reversible case transform of the 2026-04-27 record, and the original bytes per token.

The transform (`lossless_caps_caseops_v1`, the record's lossless_caps.py `encode_lossless_caps_v2`)
lowercases ASCII letters and says where capitals were with four private-use operators, so that a
tokenizer reuses one lowercase piece for "the", "The" and "THE". Over each maximal run of ASCII
letters (a *word*; digits, other scripts and punctuation end it) that holds a capital:

- ALLCAPS (U+E002) + the word lowercased, for two or more letters all capitals ("NASA");
- TITLE (U+E001) + the word lowercased, for a capital then only small letters ("The", "A");
- otherwise TITLE if the first letter is a capital, then the word lowercased with CAPNEXT (U+E003)
  before every later capital ("McDonald" → TITLE "mc" CAPNEXT "donald", "iPhone" → "i" CAPNEXT "phone").

Words without a capital and every non-ASCII-letter character stay as they are, except the four
operator characters themselves, which the input may hold: each is escaped as ESC (U+E004) + itself.

Bits per byte are still counted on the original text: `original_bytes_per_char` gives the UTF-8
bytes of the original that each transformed character stands for (operators 0, a lowered letter 1,
an escaped operator its own 3, any other character its own length), and `piece_original_bytes` sums
them over each token's span of the transformed text (its *surface*, the record's
`surface_piece_original_byte_counts`). The validation split's byte sidecar holds these counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

CASEOPS = "lossless_caps_caseops_v1"  # the transform's name, as the record and its data folders spell it
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
MARKERS = (TITLE, ALLCAPS, CAPNEXT, ESC)

# An operator character to escape, or a whole ASCII-letter word (the look-behind anchors it at the
# word's first letter) that holds a capital; words without one need no work and are not matched.
_ENCODE = re.compile(r"[\ue001-\ue004]|(?<![A-Za-z])[a-z]*[A-Z][A-Za-z]*")
# An escaped character; a word carrying operators (TITLE/ALLCAPS first, or a small letter first and
# CAPNEXT later); or an operator that fits neither, which no encoded text holds.
_DECODE = re.compile(r"\ue004(?P<literal>[\s\S])"
                     r"|(?P<word>[\ue001\ue002](?:\ue003?[a-z])+|(?<![a-z])[a-z]+(?:\ue003[a-z]+)+)"
                     r"|(?P<stray>[\ue001-\ue004])")
_CAPNEXT_LETTER = re.compile("\ue003([a-z])")


class CaseOpsError(ValueError):
    """A text that is not the CaseOps encoding of any text."""


def encode(text: str) -> str:
    """The CaseOps encoding of `text` (module docstring)."""
    return _ENCODE.sub(_encode_match, text)


def _encode_match(match: re.Match) -> str:
    found = match.group()
    if found in MARKERS:
        return ESC + found
    lower = found.lower()
    if len(found) >= 2 and found.isupper():
        return ALLCAPS + lower
    if found[0].isupper() and found[1:].islower():
        return TITLE + lower
    # Mixed case (a lone capital too: "".islower() is False, and TITLE + "a" is its encoding anyway).
    head = TITLE + lower[0] if found[0].isupper() else lower[0]
    return head + "".join(CAPNEXT + low if ch.isupper() else ch for ch, low in zip(found[1:], lower[1:]))


def decode(text: str) -> str:
    """The text whose encoding is `text`; CaseOpsError if there is none (a misplaced or dangling operator)."""
    original = _DECODE.sub(_decode_match, text)
    if encode(original) != text:  # encode is one-to-one: this rejects every text it cannot produce
        raise CaseOpsError("the text is not CaseOps-encoded: an operator (U+E001-U+E004) is misplaced")
    return original


def _decode_match(match: re.Match) -> str:
    if match["literal"] is not None:
        return match["literal"]
    word = match["word"]
    if word is None:
        raise CaseOpsError(f"the text is not CaseOps-encoded: operator U+{ord(match['stray']):04X} at character "
                           f"{match.start()} starts no word")
    if word[0] == ALLCAPS:
        return word[1:].upper()
    title = word[0] == TITLE
    word = _CAPNEXT_LETTER.sub(lambda m: m[1].upper(), word[1:] if title else word)
    return word[0].upper() + word[1:] if title else word


def original_bytes_per_char(transformed: str) -> np.ndarray:
    """(len(transformed),) int64: the UTF-8 bytes of the original text that each character of the
    CaseOps-encoded `transformed` stands for (module docstring)."""
    points = np.frombuffer(transformed.encode("utf-32-le"), dtype="<u4")
    weights = _utf8_lengths(points)
    weights[(points >= ord(TITLE)) & (points <= ord(ESC))] = 0
    # An ESC that is not itself escaped makes the next character a literal worth its own bytes.
    literal = -1
    for at in np.flatnonzero(points == ord(ESC)).tolist():
        if at == literal:
            continue
        if at + 1 == points.size:
            raise CaseOpsError("the text is not CaseOps-encoded: it ends with an escape operator (U+E004)")
        literal = at + 1
        weights[literal] = _utf8_lengths(points[literal:literal + 1])[0]
    return weights


def piece_original_bytes(transformed: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """(len(spans),) int64: original UTF-8 bytes of each token, given its [begin, end) character span
    in `transformed` (SentencePiece's offset mapping). A span holding only operators is worth 0, and
    of a character split into byte-fallback tokens the last one carries it all (its span is the
    character; the others' spans are empty), as SentencePiece assigns surfaces."""
    cumulative = np.concatenate(([0], np.cumsum(original_bytes_per_char(transformed))))
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return cumulative[bounds[:, 1]] - cumulative[bounds[:, 0]]


def _utf8_lengths(points: np.ndarray) -> np.ndarray:
    return 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
