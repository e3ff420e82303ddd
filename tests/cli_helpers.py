"""Running the real `golfctl` CLI from tests, and what a clean user error looks like."""

from __future__ import annotations

import subprocess
import sys


def golfctl(*args, **kwargs) -> subprocess.CompletedProcess:
    """`python -m golfctl ARGS` in a subprocess, output captured as text."""
    return subprocess.run([sys.executable, "-m", "golfctl", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    """Exit `code`, exactly one `Error:` line holding every fragment, no traceback; returns that line."""
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
