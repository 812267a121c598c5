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
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch

from llmk.errors import Corrupt

log = logging.getLogger(__name__)
Buffer = bytes | memoryview  # a block: its own bytes, or a view into a cached segment

BLOCK = 256 * 1024  # the unit of download, check and cache: small, so a layer's edges cost little
WINDOW = 4 << 30  # how far one request reads ahead through ranges a reader said it will want
SEGMENT = 64  # blocks in one cache file (16 MiB) when a download brings all of them
AHEAD = 64 << 20  # checked blocks a download may hold past the one its reader last took
STALL = 60.0  # seconds a download waits for a reader that stopped taking blocks before it gives up
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

    def check(self, index: int, block: Buffer) -> bool:
        return hashlib.sha256(block).digest() == self.digests[index]


def segment_name(block: int) -> str:
    return f"s{block // SEGMENT}"


class BlockCache:
    """Verified blocks on local disk, at most `limit` bytes; the least recently used go first.

    A file holds one block, or a whole segment of SEGMENT blocks when one download brought them all. Blocks
    are checked again on every read (a cache is a disk like any other), so a damaged one is only ever a
    miss."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = root, limit
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def _path(self, sha: str, name: str) -> Path:
        return self.root / sha[:2] / sha / name

    def has(self, sha: str, block: int) -> bool:
        return self._path(sha, segment_name(block)).exists() or self._path(sha, str(block)).exists()

    def get(self, sha: str, name: str) -> bytes | None:
        path = self._path(sha, name)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used
            return data
        except FileNotFoundError:
            return None

    def put(self, sha: str, name: str, *parts: Buffer) -> None:
        size = sum(len(p) for p in parts)
        if size > self.limit:
            return
        with self._lock:  # room first: the folder never holds more than the limit, even mid-write
            self._used += size
            if self._used > self.limit:
                self._evict()
        path = self._path(sha, name)
        tmp = path.with_name(f".{name}.{threading.get_ident()}")
        replaced = size  # the room given back: all of it unless written, else the old file's
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.writelines(parts)
            old = path.stat().st_size if path.exists() else 0
            os.replace(tmp, path)  # a reader never sees half a file
            replaced = old
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._used -= replaced

    def put_run(self, sha: str, first: int, blocks: Sequence[Buffer], whole_segment: bool) -> None:
        """Consecutive checked blocks from `first`: one file when they make up a whole segment (creating a
        file costs more than writing 256 KiB into it), else a file each. A failing disk only loses cache."""
        try:
            if whole_segment and sum(len(b) for b in blocks) * 8 <= self.limit:
                self.put(sha, segment_name(first), *blocks)
            else:
                for k, block in enumerate(blocks):
                    self.put(sha, str(first + k), block)
        except OSError as e:
            log.warning("block cache %s: could not write blocks of %s: %s", self.root, sha[:12], e)

    def drop(self, sha: str) -> None:
        folder = self.root / sha[:2] / sha
        for p in folder.glob("*") if folder.is_dir() else []:
            with self._lock:
                self._used -= p.stat().st_size
            p.unlink(missing_ok=True)

    def _evict(self) -> None:
        stale = time.time() - 60  # a temporary file younger than this is a write in flight: its room is held
        files = []
        for p in self.root.rglob("*"):
            try:
                if p.is_file() and (not p.name.startswith(".") or p.stat().st_mtime < stale):
                    files.append((p.stat().st_mtime, p))
            except FileNotFoundError:
                continue
        for _, p in sorted(files):
            if self._used <= self.limit * 0.9:  # some room, so the next put does not rescan at once
                break
            try:
                self._used -= p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue


class Body(Protocol):
    """An open ranged response: read(n) gives the next n bytes (fewer only at its end)."""

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


Fetch = Callable[[int, int], Body]  # (first byte, end byte) -> the response, read as the caller goes


class _Download:
    """Blocks first..last of one ranged request, each checked (and cached) as it arrives.

    In the background, on a thread of its own, so the network, the hashing and the cache writes overlap the
    reader's work, and never more than AHEAD bytes past the block the reader last took: memory stays
    bounded however long the request. One request, not one per window: some servers (moto) copy the whole
    object for every ranged GET."""

    def __init__(self, reader: BlockReader, first: int, last: int, background: bool, skip: int = 0):
        self.first, self.last, self._reader = first, last, reader
        self._skip = skip  # blocks before `first` the request includes anyway, read past unused
        self._cond = threading.Condition()
        self._blocks: dict[int, bytes] = {}  # checked, not yet taken
        self._next = first  # the next block to arrive
        self._taken = first  # the reader's position
        self._background = background
        self._closed = self._ended = False
        self.error: Exception | None = None
        self._run_blocks: list[bytes] = []  # checked blocks from _run_start on, not yet cached
        self._run_start = first
        if background:
            name = f"llmk-s3-read-{reader.manifest.sha[:8]}"
            threading.Thread(target=self._run, name=name, daemon=True).start()
        else:
            self._run()

    def take(self, i: int) -> bytes | None:
        """Block i once it has arrived and passed its check; None when this download ended without it (the
        reader then asks again). A block that failed its check raises."""
        with self._cond:
            if i > self._taken:
                self._taken = i
                self._cond.notify_all()
            self._cond.wait_for(lambda: i in self._blocks or i < self._next or self._ended)
            block = self._blocks.pop(i, None)
            if block is None and i == self._next and isinstance(self.error, Corrupt):
                raise self.error
            return block

    def close(self) -> dict[int, bytes]:
        """Stop downloading; returns the checked blocks nobody took yet."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            left, self._blocks = self._blocks, {}
        return left

    def _room(self, i: int) -> bool:
        """Wait until block i is within AHEAD of the reader; False once closed, or when the reader has not
        moved for STALL seconds (a handle left open: give the connection and the memory back). At least a
        segment ahead: a block is handed over once its segment is complete (and cached)."""
        if not self._background:
            return True
        ahead = max(AHEAD // BLOCK, SEGMENT)
        with self._cond:
            moved = self._cond.wait_for(lambda: self._closed or i - self._taken < ahead, timeout=STALL)
            return moved and not self._closed

    def _run(self) -> None:
        """Receive the blocks; check, hand over and cache each on a second thread when in the background,
        so the hashing and the disk overlap the network (hashlib and file writes let go of the GIL)."""
        r, sha = self._reader, self._reader.manifest.sha
        start = self._run_start = self.first - self._skip
        checker = ThreadPoolExecutor(1, thread_name_prefix="llmk-s3-check") if self._background else None
        failure: Exception | None = None
        try:
            body = r._fetch(start * BLOCK, min((self.last + 1) * BLOCK, r.manifest.size))
            try:
                for i in range(start, self.last + 1):
                    if self.error is not None or not self._room(i):
                        break
                    n = r._block_len(i)
                    block = body.read(n)
                    if len(block) < n:
                        raise Corrupt(f"object {sha[:12]} is shorter than its manifest says (truncated?)")
                    if checker is None:
                        self._accept(i, block)
                    else:  # one worker: blocks are accepted in order
                        checker.submit(self._accept, i, block)
            finally:
                body.close()
        except Exception as e:  # handed to the reader, which raises it or asks again
            failure = e
        finally:
            if checker is not None:
                checker.shutdown(wait=True)
            self._cache()  # what arrived before the end, a failure or a close
            with self._cond:
                self.error = self.error or failure
                self._ended = True
                self._cond.notify_all()

    def _accept(self, i: int, block: bytes) -> None:
        if self.error is not None:
            return
        try:
            self._reader._checked(i, block)
        except Corrupt as e:
            with self._cond:
                self.error = e
                self._cond.notify_all()
            return
        self._run_blocks.append(block)
        if (i + 1) % SEGMENT == 0 or i == self.last:
            self._cache()

    def _cache(self) -> None:
        """Put the checked blocks that arrived since the last call into the cache (one file when they make a
        whole segment), then hand them to the reader: once it has a block, so does the cache."""
        r, run, first = self._reader, self._run_blocks, self._run_start
        if r._cache is not None and run:
            whole = first % SEGMENT == 0 and (len(run) == SEGMENT or first + len(run) == r.blocks)
            r._cache.put_run(r.manifest.sha, first, run, whole)
        with self._cond:
            for i, block in enumerate(run, first):
                if i >= self.first:  # skipped blocks only complete the cache's segment
                    self._blocks[i] = block
                    self._next = i + 1
            self._cond.notify_all()
        self._run_start += len(run)
        run.clear()


class BlockReader:
    """Reads byte ranges of one object through the cache, checking each block before it is used."""

    def __init__(self, manifest: Manifest, fetch: Fetch, cache: BlockCache | None):
        self.manifest, self._fetch, self._cache = manifest, fetch, cache
        self._edges: dict[int, Buffer] = {}  # blocks shared by neighbouring reads, without a cache
        self._planned: set[int] = set()  # blocks the reader said it will want (plan)
        self._ahead: dict[int, bytes] = {}  # checked blocks a replaced download left, dropped once read
        self._download: _Download | None = None
        self._segment: tuple[int, memoryview | None] = (-1, None)  # the cache file last read, by segment
        self.blocks = -(-manifest.size // BLOCK)
        self.downloaded = 0

    def plan(self, ranges: list[tuple[int, int]]) -> None:
        """The byte ranges about to be read: a miss then downloads the planned blocks that follow it (up to
        WINDOW) in the same request, so reading many tensors costs one request, not one each, and never a
        block nobody asked for."""
        for start, end in ranges:
            if start < end:
                self._planned.update(range(start // BLOCK, (min(end, self.manifest.size) - 1) // BLOCK + 1))

    def read(self, start: int, end: int) -> bytearray:
        end = min(end, self.manifest.size)
        if start >= end:
            return bytearray()
        first, last = start // BLOCK, (end - 1) // BLOCK
        out = bytearray(end - start)  # each block is copied once, into its place
        edges: dict[int, Buffer] = {}
        for i in range(first, last + 1):
            block = self._block(i, last)
            lo, hi = max(start, i * BLOCK), min(end, i * BLOCK + len(block))
            out[lo - start : hi - start] = memoryview(block)[lo - i * BLOCK : hi - i * BLOCK]
            if i in (first, last):
                edges[i] = block
        self._edges = edges
        return out

    def close(self) -> None:
        if self._download is not None:
            self._download.close()
            self._download = None
        self._ahead.clear()
        self._segment = (-1, None)

    def _block(self, i: int, last: int) -> Buffer:
        """Block i, checked: already here, on its way, in the cache, or downloaded now with the blocks after
        it that this read and the plan want."""
        if i in self._edges:
            return self._edges[i]
        if (early := self._ahead.pop(i, None)) is not None:
            return early
        d = self._download
        if d is not None and d.first <= i <= d.last and (got := d.take(i)) is not None:
            return got
        if (found := self._cached(i)) is not None:
            return found
        j = i
        while (j < last or j + 1 in self._planned) and (j + 2 - i) * BLOCK <= WINDOW:
            if self._held(j + 1):
                break
            j += 1
        # Nearly all the rest of the object: ask for all of it, a whole GET, which servers that copy each
        # range out of the object (moto) answer far sooner; the few blocks before i are read past.
        skip = i if (j + 1) * BLOCK >= self.manifest.size and i * BLOCK * 100 <= self.manifest.size else 0
        if d is not None:
            self._ahead.update(d.close())
        self._download = d = _Download(self, i, j, background=j - i >= 4, skip=skip)
        if (got := d.take(i)) is None:
            raise d.error or Corrupt(f"object {self.manifest.sha[:12]}: block {i} never arrived")
        return got

    def _held(self, i: int) -> bool:
        return (
            i in self._edges
            or i in self._ahead
            or bool(self._cache and self._cache.has(self.manifest.sha, i))
        )

    def _block_len(self, i: int) -> int:
        return min(BLOCK, self.manifest.size - i * BLOCK)

    def _checked(self, i: int, block: bytes) -> None:
        if not self.manifest.check(i, block):
            raise Corrupt(f"object {self.manifest.sha[:12]} failed its checksum (block {i}): refusing it")
        self.downloaded += len(block)

    def _cached(self, i: int) -> Buffer | None:
        """Block i from the cache, checked: from its segment's file (kept open while reads stay in the
        segment) or its own."""
        if self._cache is None:
            return None
        n, k = self._block_len(i), i // SEGMENT
        if self._segment[0] != k:
            raw = self._cache.get(self.manifest.sha, segment_name(i))
            self._segment = (k, memoryview(raw) if raw is not None else None)
        if (segment := self._segment[1]) is not None:
            at = (i - k * SEGMENT) * BLOCK
            if len(view := segment[at : at + n]) == n and self.manifest.check(i, view):
                return view
        block = self._cache.get(self.manifest.sha, str(i))
        return block if block is not None and self.manifest.check(i, block) else None


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
        self._reader.close()

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
        raw = self._reader.read(self._base + start, self._base + end)
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat.reshape(meta["shape"])
