"""Fused weights copied from the store's mapped object files: from the file, or from memory once written."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from services.inference.engine.fusing import FileMaps


def test_copy_reads_the_file_unless_the_mapping_was_written(tmp_path: Path) -> None:
    path = tmp_path / "pack.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"a": torch.randn(512, 300, generator=g), "b": torch.randn(700, 64, generator=g)}, str(path))
    with safe_open(str(path), framework="pt") as f:
        a, b = f.get_tensor("a"), f.get_tensor("b")
    files = FileMaps()
    assert files._locate(a) is not None  # a private mapping of the file: read with pread
    b.view(-1)[1000] = 42.0  # written in place, as a delta applied while reading a version
    assert files._locate(b) is None  # no longer the file's bytes: copied from memory
    for src in (a, b):
        dest = torch.empty_like(src)
        files.copy(dest, src)
        assert torch.equal(dest, src)
    plain = torch.randn(10, 3)
    dest = torch.empty_like(plain)
    files.copy(dest, plain)
    assert torch.equal(dest, plain)
