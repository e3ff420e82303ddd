"""Running the real `golfctl` CLI from tests, and what a clean user error looks like."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

from golfctl.cli import main


def golfctl(*args) -> subprocess.CompletedProcess:
    """`golfctl ARGS` through the console script's entry point (golfctl.cli.main), in this process:
    the same code path, without a new interpreter importing torch (~2 s a call); stdout, stderr
    and the exit code as a CompletedProcess. An exception main() does not turn into an `Error:`
    line propagates, failing the test as a traceback would."""
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["golfctl", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    """Exit `code`, exactly one `Error:` line holding every fragment, no traceback; returns that line."""
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
