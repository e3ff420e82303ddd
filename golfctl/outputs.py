"""Output paths, checked before any work: a command never writes over its inputs or another kind of file.

    out = check_output_file(cfg.out, ARTIFACT, inputs=(cfg.model, cfg.data))
    out = check_output_folder(cfg.out, inputs=(cfg.data,))

Each refusal is one UserError naming the path and the fix. On success the parent folder exists
(it is created) and is writable; the file itself is written later, atomically
(golfctl.fileio), so a failed command leaves what was there byte-identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from golfctl.artifact import MAGIC as ARTIFACT_MAGIC
from golfctl.checkpoint import CHECKPOINT_FORMAT, read_metadata
from golfctl.dataset import MANIFEST_NAME
from golfctl.errors import UserError
from golfctl.shards import MAGIC as SHARD_MAGIC
from golfctl.weights import MODEL_FORMAT

# The kinds of files golfctl writes, as `sniff_kind` names them.
DATASET_FOLDER = "dataset folder"
SHARD = "token shard"
ARTIFACT = "quantized artifact"
TOKENIZER = "tokenizer model"
CHECKPOINT = "training checkpoint"
MODEL = "model file"
JSON = "JSON file"
SAFETENSORS = "safetensors file"  # of no golfctl kind, or unreadable
_SAFETENSORS_KINDS = {CHECKPOINT_FORMAT: CHECKPOINT, MODEL_FORMAT: MODEL}


def sniff_kind(path: Path) -> str | None:
    """The kind of an existing file from its first bytes (None: not one golfctl knows)."""
    path = Path(path)
    if path.is_dir():
        return DATASET_FOLDER if (path / MANIFEST_NAME).is_file() else None
    with open(path, "rb") as f:
        head = f.read(256)
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == SHARD_MAGIC:
        return SHARD
    if head.startswith(ARTIFACT_MAGIC):
        return ARTIFACT
    if path.suffix == ".model":
        return TOKENIZER
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON object
        try:
            return _SAFETENSORS_KINDS.get(read_metadata(path).get("format"), SAFETENSORS)
        except UserError:  # damaged: still not a file to write another kind over
            return SAFETENSORS
    if head.lstrip()[:1] in (b"{", b"["):
        return JSON
    return None


def check_output_file(out: Path, writes: str, inputs: Iterable[Path | None] = ()) -> Path:
    """Refuse an --out that is an input, a folder, or an existing file of another kind; create its parent."""
    out = Path(out)
    _refuse_inputs(out, inputs, nested=False)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass the path of the {writes} to write, e.g. {out / _example(writes)}")
    if out.exists():
        kind = _kind_or_unreadable(out)
        if kind != writes:
            raise UserError(f"--out {out} already holds {_article(kind)}, and this command writes {_article(writes)}; "
                            "remove it or choose another --out")
    _writable_parent(out)
    return out


QUANTIZE_REPORT_FORMAT = "golfctl-quantize-report"


def quantize_report_path(artifact: Path) -> Path:
    """The per-tensor report `golfctl quantize` writes beside its artifact: artifact.bin → artifact.quantize.json."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + ".quantize.json")


def check_output_folder(out: Path, inputs: Iterable[Path | None] = ()) -> Path:
    """Refuse an --out folder that is, holds or lies inside an input, or is a file; create its parent."""
    out = Path(out)
    _refuse_inputs(out, inputs, nested=True)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file ({_kind_or_unreadable(out)}); pass a folder path")
    _writable_parent(out)
    return out


def _refuse_inputs(out: Path, inputs: Iterable[Path | None], nested: bool) -> None:
    """Refuse out == an input (through links); with `nested`, also a folder inside an input or around one."""
    target = out.resolve()
    for source in filter(None, inputs):
        source = Path(source).resolve()
        if target == source:
            relation = "is"
        elif nested and source in target.parents:
            relation = "is inside"
        elif nested and target in source.parents:
            relation = "holds"
        else:
            continue
        raise UserError(f"--out {out} {relation} an input of this command ({source}); writing it would destroy "
                        "that input; choose another --out")


def _writable_parent(out: Path) -> None:
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {out}: {_first_file(parent)} is a file, not a folder; choose another --out") from None
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder {parent} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: the folder {parent} is not writable; choose another --out")


def _first_file(folder: Path) -> Path:
    """The first path on the way to `folder` that exists and is not a folder."""
    for candidate in (*reversed(folder.parents), folder):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder


def _kind_or_unreadable(path: Path) -> str:
    try:
        return sniff_kind(path) or "a file golfctl does not know"
    except OSError as exc:
        return f"an unreadable file ({exc.strerror or exc})"


def _article(kind: str) -> str:
    return kind if kind.startswith(("a ", "an ")) else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _example(kind: str) -> str:
    return {ARTIFACT: "artifact.bin", MODEL: "final.safetensors", JSON: "eval.json"}.get(kind, "out")
