"""The byte budget: artifact bytes plus the golfctl source needed to rebuild and run the model.

CODE_FILES is the one list of those sources: the artifact reader and its codecs, the model and
its config, and the modules they import. The budget is decimal bytes (16,000,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from golfctl.errors import EXIT_OVER_BUDGET, UserError

DEFAULT_BUDGET = 16_000_000
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CODE_FILES = (
    "golfctl/__init__.py",
    "golfctl/errors.py",
    "golfctl/fileio.py",
    "golfctl/codec.py",
    "golfctl/artifact.py",
    "golfctl/config.py",
    "golfctl/model.py",
    "golfctl/attention.py",
)


class OverBudget(UserError):
    exit_code = EXIT_OVER_BUDGET


def code_files() -> list[tuple[str, int]]:
    """(path, bytes) of every file in CODE_FILES."""
    return [(name, (PACKAGE_ROOT / name).stat().st_size) for name in CODE_FILES]


@dataclass(frozen=True)
class Budget:
    model_bytes: int
    code_bytes: int
    budget: int

    @property
    def total(self) -> int:
        return self.model_bytes + self.code_bytes

    @property
    def headroom(self) -> int:
        return self.budget - self.total

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def table(self) -> list[str]:
        rows = [("code", self.code_bytes), ("model", self.model_bytes), ("total", self.total),
                ("budget", self.budget), ("headroom", self.headroom)]
        return [f"  {label:<9}{value:>14,} bytes" for label, value in rows]


def budget_for(model_bytes: int, budget: int = DEFAULT_BUDGET) -> Budget:
    return Budget(model_bytes, sum(size for _, size in code_files()), budget)
