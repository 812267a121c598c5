"""The GGUF header, walked before any library reads the file: every length, count and type a file
declares is checked against the file's own size, so a damaged or hostile file is one InvalidInput
instead of a library's struct.error, MemoryError or traceback (GGUF v2 and v3, little-endian)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llmk.errors import InvalidInput

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_TYPE = 64  # ggml type ids are small; anything beyond is not a tensor type
MAX_ARRAY_DEPTH = 4
STRING, ARRAY = 8, 9
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, object]
    tensors: dict[str, tuple[tuple[int, ...], int]]  # name -> (dims, ggml type)


class _Reader:
    def __init__(self, f: BinaryIO, size: int, where: str):
        self.f, self.left, self.where = f, size, where

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise InvalidInput(f"{self.where}: truncated GGUF header ({n} bytes needed, {self.left} left)")
        self.left -= n
        return self.f.read(n)

    def scalar(self, fmt: str) -> int | float | bool:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, each: int, what: str) -> int:
        """A declared count, refused when even `each` bytes per item would not fit in the file."""
        n = int(self.scalar("Q"))
        if n * each > self.left:
            raise InvalidInput(f"{self.where}: GGUF declares {n} {what}, more than the file can hold")
        return n

    def string(self) -> str:
        raw = self.take(self.count(1, "string bytes"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{self.where}: GGUF string is not UTF-8") from None

    def value(self, kind: int, depth: int = 0) -> object:
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY and depth < MAX_ARRAY_DEPTH:
            item = int(self.scalar("I"))
            n = self.count(struct.calcsize(SCALARS[item]) if item in SCALARS else 8, "array items")
            return [self.value(item, depth + 1) for _ in range(n)]
        raise InvalidInput(f"{self.where}: unknown GGUF value type {kind}")


def read_header(path: Path) -> GgufHeader:
    """The header of a GGUF file, or InvalidInput saying what is wrong with it."""
    where = str(path)
    with open(path, "rb") as f:
        r = _Reader(f, path.stat().st_size, where)
        if r.left < 4 or r.take(4) != MAGIC:
            raise InvalidInput(f"{where}: not a GGUF file (no GGUF magic bytes)")
        version = int(r.scalar("I"))
        if version not in VERSIONS:
            raise InvalidInput(f"{where}: GGUF version {version} is not supported (only {VERSIONS})")
        n_tensors, n_kv = int(r.scalar("Q")), int(r.scalar("Q"))
        if n_kv * 13 > r.left or n_tensors * 24 > r.left:
            raise InvalidInput(f"{where}: GGUF declares more entries than the file can hold")
        metadata = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(int(r.scalar("I")))
        tensors = {}
        for _ in range(n_tensors):
            name = r.string()
            n_dims = int(r.scalar("I"))
            if n_dims > MAX_DIMS:
                raise InvalidInput(f"{where}: GGUF tensor {name!r} has {n_dims} dimensions (max {MAX_DIMS})")
            dims = tuple(int(r.scalar("Q")) for _ in range(n_dims))
            kind, offset = int(r.scalar("I")), int(r.scalar("Q"))
            if kind > MAX_TENSOR_TYPE or offset > r.left:
                raise InvalidInput(f"{where}: GGUF tensor {name!r}: unknown type or outside the file")
            tensors[name] = (dims, kind)
    return GgufHeader(version, metadata, tensors)
