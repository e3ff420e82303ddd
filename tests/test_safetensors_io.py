"""Deterministic safetensors: same tensors and metadata → same bytes, readable by the library."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load

from golfctl.safetensors_io import serialize

TENSORS = {
    "b.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "a.bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
    "scalar": torch.tensor(7, dtype=torch.int64),
    "empty": torch.zeros(0, 5, dtype=torch.float16),
    "bytes": torch.tensor([1, 2, 255], dtype=torch.uint8),
    "flag": torch.tensor([True, False]),
}
METADATA = {"format": "x", "version": "1", "config": '{"a": 1}', "z": "last"}


def test_library_reads_what_we_write():
    back = load(serialize(TENSORS, METADATA))
    assert back.keys() == TENSORS.keys()
    for name, tensor in TENSORS.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


def test_same_bytes_in_another_process():
    script = ("import sys, torch; sys.path.insert(0, 'tests'); from test_safetensors_io import TENSORS, METADATA; "
              "from golfctl.safetensors_io import serialize; sys.stdout.buffer.write(serialize(TENSORS, METADATA))")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
    reordered = dict(reversed(list(TENSORS.items())))
    assert other == serialize(TENSORS, METADATA) == serialize(reordered, dict(reversed(list(METADATA.items()))))
