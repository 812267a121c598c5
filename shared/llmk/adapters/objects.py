"""Content-addressed object files: safetensors packs and raw blobs named by their sha256.

A file is written under a temporary name, fsynced, then renamed to its hash, so readers
never see a partial object. Reads check the hash once per process per file state.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmk.errors import Corrupt, InvalidInput, NotFound

HASH_BLOCK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def check_safetensors_header(path: Path, max_header_bytes: int) -> None:
    """Reject an oversized or malformed header before any library allocates for it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InvalidInput(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > max_header_bytes:
            raise InvalidInput(
                f"{path}: safetensors header of {n} bytes exceeds the {max_header_bytes} limit"
            )
        if n > size - 8:
            raise InvalidInput(f"{path}: safetensors header claims {n} bytes but the file has {size - 8}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise InvalidInput(f"{path}: malformed safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{path}: malformed safetensors header: not a JSON object")
    data_len = size - 8 - n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise InvalidInput(f"{path}: tensor {key!r} lies outside the file (truncated?)")


def read_safetensors(
    path: Path, max_header_bytes: int, names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Load a user-supplied safetensors file with a clear error for every kind of damage."""
    if not path.is_file():
        raise NotFound(f"no such file: {path}")
    check_safetensors_header(path, max_header_bytes)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = f.keys() if names is None else [k for k in f.keys() if k in set(names)]
            return {k: f.get_tensor(k) for k in keys}
    except SafetensorError as e:
        raise InvalidInput(f"{path}: unreadable safetensors file: {e}") from None


class ObjectStore:
    def __init__(self, root: Path, max_header_bytes: int = 100 * 1024 * 1024):
        self.root = root
        self.max_header_bytes = max_header_bytes
        self._verified: dict[str, tuple[int, int, int]] = {}
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha[2:]

    def put_tensors(self, tensors: Mapping[str, torch.Tensor]) -> tuple[str, int]:
        """Store a pack of tensors; returns (sha256, size in bytes)."""
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", suffix=".safetensors")
        os.close(fd)
        try:
            save_file({k: t.contiguous() for k, t in tensors.items()}, tmp)
            return self._publish(Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self._publish(Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _publish(self, tmp: Path) -> tuple[str, int]:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha, size = sha256_file(tmp), tmp.stat().st_size
        final = self.path(sha)
        if final.exists():
            os.utime(final)  # refresh: GC must not take a file a commit is about to reference
        else:
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
        self._verified[sha] = _file_state(final)
        return sha, size

    def verify(self, sha: str) -> Path:
        """The object's path, after checking its bytes hash to its name (cached per file state)."""
        p = self.path(sha)
        try:
            state = _file_state(p)
        except FileNotFoundError:
            raise Corrupt(f"object {sha[:12]} is missing from {self.root}") from None
        if self._verified.get(sha) != state:
            if sha256_file(p) != sha:
                raise Corrupt(f"object {sha[:12]} failed its checksum ({p}): refusing to serve it")
            self._verified[sha] = state
        return p

    def get_bytes(self, sha: str) -> bytes:
        return self.verify(sha).read_bytes()

    def open_tensors(self, sha: str):  # noqa: ANN201 - safetensors' handle type is private
        path = self.verify(sha)
        try:
            return safe_open(str(path), framework="pt")
        except SafetensorError as e:
            raise Corrupt(f"object {sha[:12]} is not a readable safetensors file: {e}") from None

    def list(self) -> Iterator[tuple[str, Path]]:
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    yield sub.name + f.name, f

    def temp_files(self) -> Iterator[Path]:
        yield from (self.root / "tmp").iterdir()

    @staticmethod
    def age_seconds(path: Path) -> float:
        """Seconds since the file was written; 0 for a file a writer renamed or removed meanwhile."""
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return 0.0


def _file_state(p: Path) -> tuple[int, int, int]:
    st = p.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns
