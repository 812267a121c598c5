"""Tensor names of llama-tiny, delta builders and bit-exact comparisons shared by the contract tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from llmk.domain.deltas import Delta, Kind

EMBED = "model.embed_tokens.weight"  # [49152, 64]
NORM = "model.norm.weight"  # [64]
UP0 = "model.layers.0.mlp.up_proj.weight"  # [128, 64]
DOWN1 = "model.layers.1.mlp.down_proj.weight"  # [64, 128]
Q0 = "model.layers.0.self_attn.q_proj.weight"  # [64, 64]
K1 = "model.layers.1.self_attn.k_proj.weight"  # [32, 64]

INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def sparse(indices: list[int], values: list[float], kind: Kind = Kind.SPARSE) -> Delta:
    return Delta(kind, {"indices": torch.tensor(indices), "values": torch.tensor(values)})


def rows(ids: list[int], values: torch.Tensor, kind: Kind = Kind.ROWS) -> Delta:
    return Delta(kind, {"rows": torch.tensor(ids), "values": values})


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = INT_VIEW.get(a.dtype)
    return torch.equal(a.view(view), b.view(view)) if view else torch.equal(a, b)


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    differ = [n for n in expected if not same_bits(actual[n], expected[n])]
    assert not differ, f"tensors differ: {differ[:5]}"


def corrupt_in_place(path: Path) -> None:
    """Flip bytes inside the file, as a disk or a bad copy would; size and inode stay."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        chunk = f.read(16)
        f.seek(before.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    after = path.stat()
    if after.st_mtime_ns == before.st_mtime_ns:  # a coarse clock can hide a write made within a tick
        os.utime(path, ns=(after.st_atime_ns, before.st_mtime_ns + 1_000_000))


def flip_in_place(path: Path) -> None:
    """One byte changed with size, inode and times kept: damage that only a re-hash finds."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
