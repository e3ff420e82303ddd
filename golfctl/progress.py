"""Progress lines for long work: counts, rates and ETA on stderr, at most one line a second.

On a terminal the line is redrawn in place; in a log (not a TTY) a full line is printed
every `interval` seconds so that CI and `nohup` logs stay readable.

Several ranks. Only rank 0 draws, but the count is of all ranks' work: `global_steps` turns
every rank's per-batch counts into what rank 0 adds after each of its batches, so the line
never shows more than has been done (nor more than the total) and ends at the exact total.

`tee_stderr` copies everything printed on stderr to a log file (eval's `eval.log`).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from golfctl.errors import UserError


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def utc_now() -> str:
    """The time for a log's header line: `2026-04-09 14:03:27 UTC`."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def global_steps(per_rank: Sequence[Sequence[int]], rank: int = 0) -> list[int]:
    """What `rank` adds to a global count after each of its batches, then once more when every rank
    is done. `per_rank[r]` holds rank r's items per batch, in order.

    Ranks run batch by batch together (every forward has one shape), so after rank 0's k-th batch
    the ranks have done the first k of theirs: the count shown is the sum of those, never what rank 0
    did times the number of ranks (which overshoots whenever rank 0's batches are the larger ones,
    as with the first sliding window that scores all its targets). The last step, taken once all
    ranks have finished (after the collective that sums their results), brings the count to the
    exact total."""
    running = [list(itertools.accumulate(batches)) for batches in per_rank]  # each rank's count after batch k
    shown, steps = 0, []
    for k in range(len(per_rank[rank])):
        upto = sum(counts[min(k, len(counts) - 1)] for counts in running if counts)
        steps.append(upto - shown)
        shown = upto
    return steps + [sum(counts[-1] for counts in running if counts) - shown]


class Progress:
    """Counts items (docs, tokens) and optionally bytes; the ETA follows whichever total is known."""

    def __init__(self, label: str, unit: str, total_bytes: int | None = None, total_items: int | None = None,
                 interval: float | None = None, stream=None):
        self.label = label
        self.unit = unit
        self.total_bytes = total_bytes
        self.total_items = total_items
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.is_tty else 10.0)
        self.start = time.perf_counter()
        self._last_draw = self.start
        self.items = 0
        self.bytes = 0

    def update(self, items: int, n_bytes: int = 0) -> None:
        self.items += items
        self.bytes += n_bytes
        now = time.perf_counter()
        if now - self._last_draw >= self.interval:
            self._last_draw = now
            self._draw(final=False)

    def close(self) -> float:
        self._draw(final=True)
        return time.perf_counter() - self.start

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        of = f"/{self.total_items:,}" if self.total_items else ""
        text = f"{self.label}: {self.items:,}{of} {self.unit}  {self.items / elapsed:,.1f} {self.unit}/s  "
        if self.total_bytes is not None:
            text += f"{self.bytes / 1e6:,.1f} MB  {self.bytes / 1e6 / elapsed:,.2f} MB/s  "
        text += f"elapsed {format_duration(elapsed)}"
        done, total = (self.bytes, self.total_bytes) if self.total_bytes else (self.items, self.total_items)
        if total and 0 < done < total:
            text += f"  ETA {format_duration(elapsed * (total - done) / done)}"
        return text

    def _draw(self, final: bool) -> None:
        if self.is_tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


class _Tee:
    """A stderr that also appends whole lines to a log; a line redrawn in place (`\\r`) is logged as
    last drawn, so a terminal's progress line leaves one line in the log, not one per redraw."""

    def __init__(self, console, log):
        self.console, self.log, self.pending = console, log, ""

    def write(self, text: str) -> int:
        self.console.write(text)
        *lines, rest = (self.pending + text).split("\n")
        for line in lines:
            self.log.write(_last_drawn(line) + "\n")
        self.pending = rest.rsplit("\r", 1)[-1]  # only the latest redraw can still become a line
        if lines:
            self.log.flush()
        return len(text)

    def end_line(self) -> None:
        """Log a line left unfinished (a progress line still being redrawn)."""
        if self.pending:
            self.log.write(_last_drawn(self.pending) + "\n")
            self.pending = ""

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def __getattr__(self, name):  # encoding, fileno, …: the console's
        return getattr(self.console, name)


def _last_drawn(line: str) -> str:
    return line.rsplit("\r", 1)[-1].replace("\x1b[2K", "")


@contextlib.contextmanager
def tee_stderr(path: Path, header: str) -> Iterator[None]:
    """Inside the block, everything printed on sys.stderr is also appended to `path`, after `header`;
    an exception that leaves the block is logged as the CLI shows it (`Error: …` for a user error)
    or as its traceback."""
    try:
        log = open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose another --out") from None
    with log:
        log.write(header + "\n")
        tee = _Tee(sys.stderr, log)
        try:
            with contextlib.redirect_stderr(tee):
                yield
        except BaseException as exc:
            tee.end_line()
            log.write(f"Error: {exc}\n" if isinstance(exc, UserError) else
                      traceback.format_exc() if isinstance(exc, Exception) else f"stopped: {type(exc).__name__}\n")
            raise
        finally:
            tee.end_line()
