"""Content-addressed object files: safetensors packs and raw blobs named by their sha256.

A file is written under a temporary name, fsynced, then linked to its hash, so readers
never see a partial object. Reads check the hash once per process per file state. A file this
process created for a commit that was then refused can be discarded at once, unless another
writer published the same content meanwhile (each publish of existing content replaces the file,
so its inode tells). Sparse indices are stored gap-coded where that is smaller (llmk.domain.indices)
and read back as the flat indices that were written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmk.domain import indices
from llmk.errors import Corrupt, InvalidInput, NoSpace, NotFound
from services.store.usecases.ports import FileState

HASH_BLOCK = 8 * 1024 * 1024
CREATED_MEMORY = 4096  # objects this process created and may still discard; older ones are left to gc
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    def __init__(self, root: Path, max_header_bytes: int = 100 * 1024 * 1024, readonly: bool = False):
        """`readonly`: another process's directory, mounted here to read (a worker beside the store)."""
        self.root = root
        self.max_header_bytes = max_header_bytes
        self._verified: dict[str, FileState] = {}
        self._created: OrderedDict[str, int] = OrderedDict()  # sha -> inode this process created
        self._lock = threading.Lock()
        if not readonly:
            (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha[2:]

    def put_tensors(
        self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
    ) -> tuple[str, int]:
        """Store a pack of tensors, with string `metadata` in its header; returns (sha256, size in bytes)."""
        pack, coded = indices.compact(tensors)
        header = {**(metadata or {}), **coded}
        with self._temp(".safetensors") as tmp:
            try:
                save_file({k: t.contiguous() for k, t in pack.items()}, str(tmp), metadata=header or None)
            except SafetensorError as e:
                raise _disk_full(self.root, e) or e from None
            return self._publish(tmp)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        with self._temp("") as tmp:
            tmp.write_bytes(data)
            return self._publish(tmp)

    @contextmanager
    def _temp(self, suffix: str) -> Iterator[Path]:
        """A temporary file in the object folder, removed whatever happens; a full disk is NoSpace."""
        tmp: Path | None = None
        try:
            fd, name = tempfile.mkstemp(dir=self.root / "tmp", suffix=suffix)
            os.close(fd)
            tmp = Path(name)
            yield tmp
        except OSError as e:
            raise _disk_full(self.root, e) or e from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _publish(self, tmp: Path) -> tuple[str, int]:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha, size = sha256_file(tmp), tmp.stat().st_size
        final = self.path(sha)
        final.parent.mkdir(exist_ok=True)
        try:
            os.link(tmp, final)  # exclusive: only the first writer of this content creates it
            tmp.unlink()  # now, not later: dropping a link changes the file's ctime, hence its state
            created = True
        except FileExistsError:
            os.replace(tmp, final)  # fresh mtime for GC's grace, fresh inode for a concurrent discard
            created = False
        except OSError:  # a filesystem without hard links: never discard, GC still collects
            os.replace(tmp, final)
            created = False
        state = _file_state(final)
        self._verified[sha] = state
        if created:
            with self._lock:
                self._created[sha] = state[0]
                while len(self._created) > CREATED_MEMORY:
                    self._created.popitem(last=False)
        return sha, size

    def discard(self, sha: str, referenced: Callable[[], bool]) -> bool:
        """Remove an object this process created for a write that was then refused; True if removed.

        Kept when anything is `referenced` or another writer published the same content since (the
        inode this process created is gone from the path).
        """
        with self._lock:
            inode = self._created.pop(sha, None)
        return inode is not None and self.remove(sha, referenced, inode)

    def remove(self, sha: str, referenced: Callable[[], bool], inode: int | None = None) -> bool:
        """Remove an object nothing references (an evicted cache entry, a refused write); True if removed.

        The file is moved aside first and removed only if still unreferenced (and still `inode`, when
        given); otherwise it is put back, so a version committed meanwhile keeps its file.
        """
        if referenced():
            return False
        final, aside = self.path(sha), self.root / "tmp" / f"discard-{uuid.uuid4().hex}"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return False
        removed = False
        try:
            removed = (inode is None or aside.stat().st_ino == inode) and not referenced()
        finally:
            if removed:
                aside.unlink()
                self._verified.pop(sha, None)
            else:
                os.replace(aside, final)  # put it back: the same bytes as any copy published meanwhile
        return removed

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

    def verified_state(self, sha: str) -> FileState:
        """The file state under which the object last hashed to its name (verifying it now if needed)."""
        path = self.verify(sha)
        return self._verified.get(sha) or _file_state(path)  # removed meanwhile: reading it will say so

    def trust(self, sha: str, state: FileState) -> None:
        """Take another reader's check: the file, while in exactly `state`, hashes to its name. Reading it
        in any other state (rewritten, replaced, touched) hashes it again here."""
        self._verified[sha] = state

    def get_bytes(self, sha: str) -> bytes:
        return self.verify(sha).read_bytes()

    def open_tensors(self, sha: str) -> TensorFile:
        return self._open(self.verify(sha), sha)

    def open_unchecked(self, sha: str) -> TensorFile:
        """Open before the hash is checked, so a reader that goes over every byte anyway (a commit's diff)
        can overlap the two; it must call check(sha) before anything it derived from the bytes is kept."""
        p = self.path(sha)
        if not p.is_file():
            raise Corrupt(f"object {sha[:12]} is missing from {self.root}")
        return self._open(p, sha)

    def check(self, sha: str) -> None:
        self.verify(sha)

    @staticmethod
    def _open(path: Path, sha: str) -> TensorFile:
        try:
            return TensorFile(safe_open(str(path), framework="pt"), sha)
        except SafetensorError as e:
            raise Corrupt(f"object {sha[:12]} is not a readable safetensors file: {e}") from None

    def scrub(self) -> list[str]:
        """Re-hash every object, whatever was verified before; damaged ones move to quarantine/.

        Safe beside a serving store: a file removed meanwhile (gc, an evicted snapshot) is skipped, and one
        that a writer re-published intact between the hash and the move is put back."""
        damaged = []
        for sha, path in list(self.list()):
            try:
                if sha256_file(path) == sha:
                    continue
                (self.root / "quarantine").mkdir(exist_ok=True)
                os.replace(path, quarantined := self.root / "quarantine" / sha)
            except FileNotFoundError:
                continue
            self._verified.pop(sha, None)
            if sha256_file(quarantined) == sha:
                os.replace(quarantined, path)
            else:
                damaged.append(sha)
        return damaged

    def size(self, sha: str) -> int:
        return self.verify(sha).stat().st_size

    def sweep(self, keep: Callable[[str], bool], grace_seconds: float, dry_run: bool = False) -> list[str]:
        """Delete objects `keep` refuses, and stale temp files, once older than the grace period."""
        removed = []
        for sha, path in list(self.list()):
            if not keep(sha) and self.age_seconds(path) >= grace_seconds:
                removed.append(sha)
                if not dry_run:
                    path.unlink(missing_ok=True)
        for tmp in list(self.temp_files()):
            if self.age_seconds(tmp) >= grace_seconds and not dry_run:
                tmp.unlink(missing_ok=True)
        return removed

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


class TensorFile:
    """An open pack object that reads back what its writer handed over: coded indices come back flat.

    Used like safetensors' safe_open (a context manager with keys, get_tensor and get_slice); get_slice
    reads stored tensors as they lie, for headers and for packs that hold no coded indices (snapshots).
    """

    def __init__(self, handle: safe_open, sha: str):
        self._file, self._sha = handle, sha
        try:
            self._coded = indices.coded_keys(handle.metadata())
        except Corrupt as e:
            raise Corrupt(f"object {sha[:12]}: {e}") from None
        self._stored = {stored: key for key, (stored, _, _) in self._coded.items()}
        if missing := sorted(self._stored.keys() - set(handle.keys())):
            raise Corrupt(f"object {sha[:12]}: its metadata names coded indices it lacks: {missing[:3]}")

    def __enter__(self) -> TensorFile:
        self._file.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.__exit__(*exc)

    def keys(self) -> list[str]:
        return [self._stored.get(k, k) for k in self._file.keys()]

    def get_tensor(self, key: str) -> torch.Tensor:
        if key not in self._coded:
            return self._file.get_tensor(key)
        stored, dtype, count = self._coded[key]
        try:
            return indices.decode(self._file.get_tensor(stored), count, dtype)
        except (Corrupt, SafetensorError) as e:
            raise Corrupt(f"object {self._sha[:12]}, {key}: {e}") from None

    def prefetch(self, keys: list[str]) -> None:
        """Say which tensors will be read: a ranged reader (a bucket) then fetches them in a few large
        requests; a local file needs no warning."""
        if (plan := getattr(self._file, "plan", None)) is not None:
            plan([self._coded[k][0] if k in self._coded else k for k in keys])

    def get_slice(self, key: str) -> Any:
        return self._file.get_slice(key)

    def metadata(self) -> dict[str, str]:
        return {k: v for k, v in (self._file.metadata() or {}).items() if k != indices.CODED}


def _disk_full(root: Path, e: Exception) -> NoSpace | None:
    """NoSpace when `e` says the disk (or a quota) is full; None for any other failure."""
    full = (isinstance(e, OSError) and e.errno in DISK_FULL) or any(
        mark in str(e) for mark in ("StorageFull", "No space left", "QuotaExceeded", "Disk quota")
    )
    return NoSpace(f"no space left for objects under {root}: free some space and retry") if full else None


def _file_state(p: Path) -> FileState:
    """What a write to the file changes: ctime too, which no user can set back (mtime can be, with touch)."""
    st = p.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
