"""Fusing projections that read the same input into one weight, so one matmul runs them, and copying their
weights into it without faulting in the store's mapping of the object file they came from.

The embedded store reads safetensors objects by mapping them (MAP_PRIVATE). Copying such a tensor through its
mapping brings its pages into the process's RSS, where they stay beside the copy for as long as any tensor of
the file lives (the whole file is one mapping). Reading the same bytes from the file with pread goes through
the page cache instead, so the copy is the only resident one. A page written since it was mapped (a delta
applied in place while reading a version) is no longer the file's: the kernel's pagemap says so, and such a
tensor is copied from memory as before. Off Linux, every one is.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PRESENT, _SWAPPED, _FILE_PAGE = np.uint64(1 << 63), np.uint64(1 << 62), np.uint64(1 << 61)


def fuse_linears(linears: Sequence[nn.Linear], files: FileMaps) -> tuple[Tensor, Tensor | None]:
    """One weight [sum of outs, in] (and bias) for linears that read the same input, so one matmul runs them.

    Each linear's weight becomes a view of its rows of the fused weight: an in-place update of a weight by its
    Hugging Face name writes into the fused weight, so hot updates keep working unchanged."""
    fused: dict[str, Tensor | None] = {"weight": None, "bias": None}
    rows = [m.out_features for m in linears]
    for attr in fused:
        parts = [getattr(m, attr) for m in linears]
        if parts[0] is None:  # the config gives all of them a bias or none
            continue
        first = parts[0]
        fused[attr] = whole = first.new_empty(sum(rows), *first.shape[1:])  # [sum of outs, ...]
        for m, p, view in zip(linears, parts, whole.split(rows), strict=True):
            files.copy(view, p.detach())  # not through the store's mapping: only the copy is resident
            setattr(m, attr, nn.Parameter(view, requires_grad=p.requires_grad))
    assert fused["weight"] is not None
    return fused["weight"], fused["bias"]


class FileMaps:
    """This process's private file mappings, read once: where a tensor's bytes lie in which file."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int, int, str]] = []  # start, end, file offset, path; sorted by start
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[1].endswith("p") and parts[5].startswith("/"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.spans.append((lo, hi, int(parts[2], 16), parts[5].rstrip("\n")))
        except OSError:
            return
        self.spans.sort()
        self.starts = [s[0] for s in self.spans]

    def copy(self, dest: Tensor, src: Tensor) -> None:
        """dest.copy_(src), read from src's file where its bytes are the file's, untouched."""
        found = self._locate(src) if src.dtype == dest.dtype and src.is_contiguous() else None
        if found is None or not _read_file(dest, *found):
            dest.copy_(src)

    def _locate(self, t: Tensor) -> tuple[str, int] | None:
        if not self.spans or t.device.type != "cpu" or not t.numel():
            return None
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        i = bisect_right(self.starts, start) - 1
        if i < 0 or end > self.spans[i][1] or not _unwritten(start, end):
            return None
        lo, _, offset, path = self.spans[i]
        return path, offset + start - lo


def _unwritten(start: int, end: int) -> bool:
    """Whether every page of [start, end) still holds the file's bytes: resident file pages, or pages never
    faulted in (a written page of a private mapping is anonymous, and swapped rather than dropped)."""
    first, last = start // _PAGE, (end - 1) // _PAGE
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            entries = np.frombuffer(f.read((last - first + 1) * 8), dtype=np.uint64)
    except OSError:
        return False
    if len(entries) != last - first + 1:
        return False
    present = (entries & _PRESENT) != 0
    return bool(np.all(np.where(present, (entries & _FILE_PAGE) != 0, (entries & _SWAPPED) == 0)))


def _read_file(dest: Tensor, path: str, offset: int) -> bool:
    """Fill `dest` (contiguous) with the file's bytes at `offset`; False when the file cannot be read."""
    buffer = memoryview(dest.view(-1).view(torch.uint8).numpy().data)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # removed since (gc): copy from memory
        return False
    try:
        done = 0
        while done < len(buffer):
            got = os.preadv(fd, [buffer[done:]], offset + done)
            if got <= 0:
                return False
            done += got
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
