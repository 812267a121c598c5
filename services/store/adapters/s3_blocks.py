"""Verified ranged reads of objects in a bucket: block manifests, a bounded local block cache, and a
safetensors handle that downloads only the header and the tensors asked for.

An object's sha256 can only be checked by reading all of it, so each object has a manifest beside it: the
sha256 of every BLOCK-sized block, ending with the sha256 of everything before it. A ranged read downloads
whole blocks and checks each against the manifest before any byte is used; a whole read also checks the
object's own sha256. `scrub` ties the two together (it re-hashes the object and its blocks).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from llmk.errors import Corrupt

BLOCK = 256 * 1024  # the unit of download, check and cache: small, so a layer's edges cost little
WINDOW = 128 << 20  # how far one request reads ahead through ranges a reader said it will want
MAGIC = b"LLMKBLK1"
_HEAD = struct.Struct("<8s32sQQ")  # magic, object sha256, object size, block size

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class Manifest:
    """The per-block digests of one object, bound to its sha256 and size."""

    def __init__(self, sha: str, size: int, digests: list[bytes]):
        self.sha, self.size, self.digests = sha, size, digests

    @classmethod
    def of_file(cls, sha: str, path: Path) -> Manifest:
        digests = []
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                digests.append(hashlib.sha256(block).digest())
        return cls(sha, path.stat().st_size, digests)

    @classmethod
    def of_bytes(cls, sha: str, data: bytes) -> Manifest:
        digests = [hashlib.sha256(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK)]
        return cls(sha, len(data), digests)

    def encode(self) -> bytes:
        body = _HEAD.pack(MAGIC, bytes.fromhex(self.sha), self.size, BLOCK) + b"".join(self.digests)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, sha: str, raw: bytes) -> Manifest:
        body, check = raw[:-32], raw[-32:]
        if len(raw) < _HEAD.size + 32 or hashlib.sha256(body).digest() != check:
            raise Corrupt(f"the block manifest of object {sha[:12]} is damaged")
        magic, named, size, block = _HEAD.unpack_from(body)
        digests = [body[i : i + 32] for i in range(_HEAD.size, len(body), 32)]
        if magic != MAGIC or named.hex() != sha or block != BLOCK or len(digests) != -(-size // BLOCK):
            raise Corrupt(f"the block manifest of object {sha[:12]} does not describe it")
        return cls(sha, size, digests)

    def check(self, index: int, block: bytes) -> bool:
        return hashlib.sha256(block).digest() == self.digests[index]


class BlockCache:
    """Verified blocks on local disk, at most `limit` bytes; the least recently used go first.

    Files are checked again on every read (a cache is a disk like any other), so a damaged one is
    only ever a miss."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = root, limit
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def _path(self, sha: str, name: str) -> Path:
        return self.root / sha[:2] / sha / name

    def has(self, sha: str, block: int) -> bool:
        return self._path(sha, str(block)).exists()

    def get(self, sha: str, name: str) -> bytes | None:
        path = self._path(sha, name)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used
            return data
        except FileNotFoundError:
            return None

    def put(self, sha: str, name: str, data: bytes) -> None:
        if len(data) > self.limit:
            return
        path = self._path(sha, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a reader never sees half a block
        with self._lock:
            self._used += len(data)
            if self._used > self.limit:
                self._evict()

    def drop(self, sha: str) -> None:
        folder = self.root / sha[:2] / sha
        for p in folder.glob("*") if folder.is_dir() else []:
            with self._lock:
                self._used -= p.stat().st_size
            p.unlink(missing_ok=True)

    def _evict(self) -> None:
        files = sorted((p for p in self.root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime)
        for p in files:
            if self._used <= self.limit * 0.9:  # some room, so the next put does not rescan at once
                break
            try:
                self._used -= p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue


Fetch = Callable[[int, int], Iterator[bytes]]  # (first byte, end byte) -> the bytes, streamed


class BlockReader:
    """Reads byte ranges of one object through the cache, checking each block before it is used."""

    def __init__(self, manifest: Manifest, fetch: Fetch, cache: BlockCache | None):
        self.manifest, self._fetch, self._cache = manifest, fetch, cache
        self._edges: dict[int, bytes] = {}  # blocks shared by neighbouring reads, without a cache
        self._planned: set[int] = set()  # blocks the reader said it will want (plan)
        self._ahead: dict[int, bytes] = {}  # planned blocks downloaded early, dropped once read
        self.downloaded = 0

    def plan(self, ranges: list[tuple[int, int]]) -> None:
        """The byte ranges about to be read: a miss then downloads up to WINDOW bytes of the planned blocks
        that follow it in the same request, so reading many tensors costs a few requests, not one each,
        and never a block nobody asked for."""
        for start, end in ranges:
            if start < end:
                self._planned.update(range(start // BLOCK, (min(end, self.manifest.size) - 1) // BLOCK + 1))

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.manifest.size)
        if start >= end:
            return b""
        first, last = start // BLOCK, (end - 1) // BLOCK
        blocks = {i: b for i in range(first, last + 1) if (b := self._known(i)) is not None}
        i = first
        while i <= last:  # one ranged download per run of missing blocks
            if i in blocks:
                i += 1
                continue
            j = i
            while j + 1 <= last and j + 1 not in blocks:
                j += 1
            if j == last:  # read ahead through planned blocks, up to the window
                while j + 1 in self._planned and (j + 2 - i) * BLOCK <= WINDOW and not self._held(j + 1):
                    j += 1
            got = self._download(i, j)
            blocks.update((k, v) for k, v in got.items() if k <= last)
            self._ahead.update((k, v) for k, v in got.items() if k > last)
            i = j + 1
        data = b"".join(blocks[i] for i in range(first, last + 1))
        self._edges = {first: blocks[first], last: blocks[last]}
        return data[start - first * BLOCK : end - first * BLOCK]

    def _held(self, i: int) -> bool:
        return (
            i in self._edges
            or i in self._ahead
            or bool(self._cache and self._cache.has(self.manifest.sha, i))
        )

    def _known(self, i: int) -> bytes | None:
        if i in self._edges:
            return self._edges[i]
        if (early := self._ahead.pop(i, None)) is not None:
            return early
        found = self._cache.get(self.manifest.sha, str(i)) if self._cache else None
        return found if found is not None and self.manifest.check(i, found) else None

    def _download(self, first: int, last: int) -> dict[int, bytes]:
        out, pending, i = {}, bytearray(), first
        for chunk in self._fetch(first * BLOCK, min((last + 1) * BLOCK, self.manifest.size)):
            self.downloaded += len(chunk)
            pending += chunk
            used = 0  # cut whole blocks off the front, then drop them once per chunk (not per block)
            while i <= last and len(pending) - used >= self._block_len(i):
                n = self._block_len(i)
                out[i] = self._checked(i, bytes(pending[used : used + n]))
                used, i = used + n, i + 1
            del pending[:used]
        if i <= last:
            raise Corrupt(f"object {self.manifest.sha[:12]} is shorter than its manifest says (truncated?)")
        return out

    def _block_len(self, i: int) -> int:
        return min(BLOCK, self.manifest.size - i * BLOCK)

    def _checked(self, i: int, block: bytes) -> bytes:
        if not self.manifest.check(i, block):
            raise Corrupt(f"object {self.manifest.sha[:12]} failed its checksum (block {i}): refusing it")
        if self._cache:
            self._cache.put(self.manifest.sha, str(i), block)
        return block


class RangedSlice:
    """What safetensors' get_slice offers that readers use: the stored shape and dtype."""

    def __init__(self, meta: dict[str, Any]):
        self._meta = meta

    def get_shape(self) -> list[int]:
        return list(self._meta["shape"])

    def get_dtype(self) -> str:
        return str(self._meta["dtype"])


class RangedSafetensors:
    """A safe_open look-alike over a BlockReader: the header is read once, each tensor on demand."""

    def __init__(self, reader: BlockReader, max_header_bytes: int):
        self._reader, sha = reader, reader.manifest.sha
        (n,) = struct.unpack("<Q", reader.read(0, 8).ljust(8, b"\0"))
        if n > max_header_bytes or n > reader.manifest.size - 8:
            raise Corrupt(f"object {sha[:12]} is not a readable safetensors file (header of {n} bytes)")
        try:
            header = json.loads(reader.read(8, 8 + n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Corrupt(f"object {sha[:12]} is not a readable safetensors file: {e}") from None
        self._meta: dict[str, str] = header.pop("__metadata__", None) or {}
        self._tensors: dict[str, dict[str, Any]] = header
        self._base = 8 + n

    def __enter__(self) -> RangedSafetensors:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def keys(self) -> list[str]:
        return sorted(self._tensors)

    def metadata(self) -> dict[str, str]:
        return self._meta

    def plan(self, keys: list[str]) -> None:
        """The tensors about to be read (BlockReader.plan)."""
        spans = [self._tensors[k]["data_offsets"] for k in keys if k in self._tensors]
        self._reader.plan([(self._base + start, self._base + end) for start, end in spans])

    def get_slice(self, key: str) -> RangedSlice:
        return RangedSlice(self._tensors[key])

    def get_tensor(self, key: str) -> torch.Tensor:
        meta = self._tensors[key]
        start, end = meta["data_offsets"]
        dtype = DTYPES.get(meta["dtype"])
        if dtype is None:
            raise Corrupt(f"object {self._reader.manifest.sha[:12]}: unknown dtype {meta['dtype']!r}")
        raw = bytearray(self._reader.read(self._base + start, self._base + end))
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat.reshape(meta["shape"])
