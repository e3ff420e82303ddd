"""Progress lines for long work: counts, rates and ETA on stderr, at most one line a second.

On a terminal the line is redrawn in place; in a log (not a TTY) a full line is printed
every `interval` seconds so that CI and `nohup` logs stay readable.
"""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
