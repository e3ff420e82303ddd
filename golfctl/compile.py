"""torch.compile for every stage and every device, with the graphs it builds counted.

Dynamo calls its backend once per graph it compiles: a new function, a graph break, or a
recompile after a guard failed (a new shape, stride, dtype, `requires_grad`, grad mode or
Python constant such as the loop count). Wrapping the backend in a counter gives, whatever the
backend, how many graphs a warm-up compiled and how many were compiled after it. The latter
must be 0: each one is a compile inside a timed loop, and past dynamo's recompile limit a
function silently falls back to eager. Dynamo's guards do not depend on the backend, so a
cheap backend ("aot_eager") proves on CPU what "inductor" does on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from golfctl.config import COMPILE_BACKENDS
from golfctl.device import synchronize

class Compiler:
    """Compiles functions and modules with static shapes and `fullgraph`, counting graphs."""

    def __init__(self, enabled: bool, backend: str = "inductor"):
        if backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile backend must be one of {COMPILE_BACKENDS}, got {backend!r}")
        self.enabled = enabled
        self.backend = backend
        self.graphs = 0  # every graph compiled so far
        self.warm_graphs: int | None = None  # graphs when the warm-up ended (None: no warm-up yet)
        self.warmup_seconds = 0.0

    def __call__(self, fn: Callable, fullgraph: bool = True) -> Callable:
        """`fn` compiled (dynamic=False: every shape gets its own graph, known before the clock), or `fn`."""
        if not self.enabled:
            return fn
        return torch.compile(fn, backend=self._count, dynamic=False, fullgraph=fullgraph)

    def _count(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        from torch._dynamo import lookup_backend  # only when compiling: importing dynamo costs seconds

        self.graphs += 1
        return lookup_backend(self.backend)(graph, example_inputs)

    def warm_up(self, run: Callable[[], None], device: torch.device) -> None:
        """Run `run` (the caller's warm-up on random tokens) and mark the graphs it compiled as expected."""
        start = time.perf_counter()
        run()
        synchronize(device)
        self.warmup_seconds += time.perf_counter() - start
        self.warm_graphs = self.graphs

    @property
    def recompiles(self) -> int:
        """Graphs compiled after the warm-up (all of them when there was none)."""
        return self.graphs - (self.warm_graphs or 0)

    def stats(self) -> dict:
        return {"compile": self.enabled, "backend": self.backend if self.enabled else None,
                "warmup_graphs": self.warm_graphs or 0, "warmup_seconds": self.warmup_seconds,
                "recompiles": self.recompiles}

    def describe(self) -> str:
        if not self.enabled:
            return "compile off"
        return f"{self.warm_graphs or 0} graphs in {self.warmup_seconds:.1f} s ({self.backend})"
