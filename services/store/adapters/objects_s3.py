"""Content-addressed objects in an S3-compatible bucket, with the local object store's guarantees.

Layout under the prefix: objects/<sha256>, blocks/<sha256> (the object's block manifest, written first),
quarantine/<sha256> (damaged objects moved aside by scrub), aside/ (objects being removed), tmp/.

- Written once: a conditional put (If-None-Match: *) refuses to overwrite. When the key exists, its recorded
  sha256 and size must be ours (else the bucket holds other content: an error), and the object is copied onto
  itself so its age restarts, as the local store's replace does: gc never takes an object a commit in flight
  has just re-published. Large objects go up in parts; an upload that fails is aborted, one whose writer
  died is aborted by gc after the grace period.
- Verified before use: ranged reads check each downloaded block against the manifest; whole reads also
  check the object's sha256 (services.store.adapters.s3_blocks).
"""

from __future__ import annotations

import builtins
import hashlib
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmk.config import Settings
from llmk.domain import indices
from llmk.errors import AlreadyExists, Corrupt
from services.store.adapters.objects import CREATED_MEMORY, TensorFile, sha256_file
from services.store.adapters.s3_blocks import BlockCache, BlockReader, Body, Manifest, RangedSafetensors
from services.store.adapters.s3_bucket import MISSING_KEY, Bucket, Location, RangedBody
from services.store.usecases.ports import FileState

SHA_META = "llmk-sha256"
WRITER_META = "llmk-writer"  # who last published the key: a discard removes only its own write
MIN_PART = 5 << 20  # S3's smallest part


class S3Objects:
    def __init__(
        self,
        bucket: Bucket,
        cache: BlockCache | None = None,
        part_bytes: int = 64 << 20,
        max_header_bytes: int = 100 * 1024 * 1024,
        spool: Path | None = None,
    ):
        self.bucket, self.cache = bucket, cache
        self.part_bytes = max(part_bytes, MIN_PART)
        self.max_header_bytes = max_header_bytes
        self.spool = spool  # where packs are serialized before upload; None = the system's temp folder
        self._created: OrderedDict[str, str] = OrderedDict()  # sha -> the writer token of our upload
        self._manifests: dict[str, Manifest] = {}
        self._lock = threading.Lock()
        self.downloaded = 0  # bytes read from the bucket (benchmarks and tests read it)

    def __str__(self) -> str:
        return str(self.bucket.where)

    # writing

    def put_tensors(
        self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
    ) -> tuple[str, int]:
        pack, coded = indices.compact(tensors)
        header = {**(metadata or {}), **coded}
        with tempfile.TemporaryDirectory(dir=self.spool) as folder:
            tmp = Path(folder) / "pack.safetensors"
            save_file({k: t.contiguous() for k, t in pack.items()}, str(tmp), metadata=header or None)
            return self.put_file(tmp)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        with tempfile.TemporaryDirectory(dir=self.spool) as folder:
            (tmp := Path(folder) / "blob").write_bytes(data)
            return self.put_file(tmp)

    def put_file(self, path: Path) -> tuple[str, int]:
        """Publish a local file under its sha256 (the manifest first, so an object never lacks one)."""
        sha, size = sha256_file(path), path.stat().st_size
        manifest = Manifest.of_file(sha, path)
        self._put_once(self.bucket.key("blocks", sha), manifest.encode(), {})
        key = self.bucket.key("objects", sha)
        token = uuid.uuid4().hex
        for _ in range(5):  # a gc or discard that removes the key between our tries sends us round again
            if self._upload(path, key, {SHA_META: sha, WRITER_META: token}):
                with self._lock:
                    self._created[sha] = token
                    while len(self._created) > CREATED_MEMORY:
                        self._created.popitem(last=False)
                break
            if self._refresh(key, sha, size):
                break
        else:
            raise Corrupt(f"object {sha[:12]} in {self}: could not publish it after 5 tries (racing a gc?)")
        self._manifests[sha] = manifest
        return sha, size

    def _put_once(self, key: str, body: bytes, meta: dict[str, str]) -> bool:
        code, _ = self.bucket.attempt("put_object", Key=key, Body=body, Metadata=meta, IfNoneMatch="*")
        return not code

    def _upload(self, path: Path, key: str, meta: dict[str, str]) -> bool:
        """Upload exclusively; False when the key already exists."""
        if path.stat().st_size <= self.part_bytes:
            return self._put_once(key, path.read_bytes(), meta)
        return self._multipart(path, key, meta)

    def start_upload(self, sha: str, meta: dict[str, str]) -> str:
        """A multipart upload of the object, after a marker under tmp/ whose age tells gc when the writer
        started (some servers report no real start time)."""
        self.bucket.call("write", "put_object", Key=self.bucket.key("tmp", f"upload-{sha}"), Body=b"")
        key = self.bucket.key("objects", sha)
        return str(self.bucket.call("write", "create_multipart_upload", Key=key, Metadata=meta)["UploadId"])

    def _multipart(self, path: Path, key: str, meta: dict[str, str]) -> bool:
        upload = self.start_upload(meta[SHA_META], meta)
        try:
            parts: list[dict[str, object]] = []
            with open(path, "rb") as f:
                while chunk := f.read(self.part_bytes):
                    n = len(parts) + 1
                    answer = self.bucket.call(
                        "write", "upload_part", Key=key, UploadId=upload, PartNumber=n, Body=chunk
                    )
                    parts.append({"PartNumber": n, "ETag": answer["ETag"]})
            code, _ = self.bucket.attempt(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            self.bucket.attempt("abort_multipart_upload", Key=key, UploadId=upload)
            raise
        if code:
            self.bucket.attempt("abort_multipart_upload", Key=key, UploadId=upload)
        return not code

    def _refresh(self, key: str, sha: str, size: int) -> bool:
        """The key exists: check it holds this content, then restart its age; False if it vanished."""
        code, head = self.bucket.attempt("head_object", Key=key)
        if code in MISSING_KEY:
            return False
        if head["Metadata"].get(SHA_META) != sha or head["ContentLength"] != size:
            raise AlreadyExists(
                f"{self.bucket.where}objects/{sha[:12]}... exists with other content: the bucket is shared "
                "with something else; point LLMK_OBJECTS_URL at a prefix only llmk writes"
            )
        source = {"Bucket": self.bucket.where.bucket, "Key": key}
        code, _ = self.bucket.attempt(
            "copy_object",
            Key=key,
            CopySource=source,
            Metadata={SHA_META: sha, WRITER_META: uuid.uuid4().hex},
            MetadataDirective="REPLACE",
        )
        return code not in MISSING_KEY

    # reading

    def manifest(self, sha: str) -> Manifest:
        if (known := self._manifests.get(sha)) is not None:
            return known
        raw = self.cache.get(sha, "manifest") if self.cache else None
        if raw is None:
            code, answer = self.bucket.attempt("get_object", Key=self.bucket.key("blocks", sha))
            if code:
                return self._manifest_of_whole(sha)
            with self.bucket.calling("read"):
                raw = answer["Body"].read()
            assert raw is not None
            self.downloaded += len(raw)
        manifest = Manifest.decode(sha, raw)
        if self.cache:
            self.cache.put(sha, "manifest", raw)
        self._manifests[sha] = manifest
        return manifest

    def _manifest_of_whole(self, sha: str) -> Manifest:
        """An object without a manifest (copied in by another tool): read it whole, check its sha256."""
        code, answer = self.bucket.attempt("get_object", Key=self.bucket.key("objects", sha))
        if code:
            raise Corrupt(f"object {sha[:12]} is missing from {self}")
        with self.bucket.calling("read"):
            data = answer["Body"].read()
        self.downloaded += len(data)
        if hashlib.sha256(data).hexdigest() != sha:
            raise Corrupt(f"object {sha[:12]} failed its checksum ({self}): refusing to serve it")
        return Manifest.of_bytes(sha, data)

    def reader(self, sha: str) -> BlockReader:
        key = self.bucket.key("objects", sha)

        def fetch(start: int, end: int) -> Body:
            return _Counted(self, self.bucket.ranged(key, start, end))

        return BlockReader(self.manifest(sha), fetch, self.cache)

    def count(self, n: int) -> None:
        with self._lock:  # downloads run on threads of their own
            self.downloaded += n

    def get_bytes(self, sha: str) -> bytes:
        reader = self.reader(sha)
        try:
            data = reader.read(0, reader.manifest.size)
        except Corrupt:
            raise
        except Exception as e:  # a key gone between the manifest and the read
            raise Corrupt(f"object {sha[:12]} is missing from {self}: {e}") from None
        finally:
            reader.close()
        if hashlib.sha256(data).hexdigest() != sha:
            raise Corrupt(f"object {sha[:12]} failed its checksum ({self}): refusing to serve it")
        return bytes(data)

    def open_tensors(self, sha: str) -> TensorFile:
        return TensorFile(RangedSafetensors(self.reader(sha), self.max_header_bytes), sha)  # type: ignore[arg-type]

    def open_unchecked(self, sha: str) -> TensorFile:
        return self.open_tensors(sha)  # every block is checked as it downloads

    def check(self, sha: str) -> None:
        """Nothing left to check: the blocks a reader used were checked as they came."""

    def verify(self, sha: str) -> Path:
        """Checked whole, into the local cache (a worker's copy); the port's path to a verified file."""
        data = self.get_bytes(sha)
        folder = Path(tempfile.gettempdir()) if self.cache is None else self.cache.root
        (path := folder / f"verified-{sha}").write_bytes(data)
        return path

    def size(self, sha: str) -> int:
        return self.verified_state(sha)[1]

    def verified_state(self, sha: str) -> FileState:
        """Every reader checks the blocks it downloads, so the store hands over only what it saw."""
        code, head = self.bucket.attempt("head_object", Key=self.bucket.key("objects", sha))
        if code:
            raise Corrupt(f"object {sha[:12]} is missing from {self}")
        return 0, int(head["ContentLength"]), int(head["LastModified"].timestamp() * 1e9), 0

    def trust(self, sha: str, state: FileState) -> None:
        """Nothing to take over: bytes from a bucket are checked by whoever downloads them."""

    # removing

    def discard(self, sha: str, referenced: Callable[[], bool]) -> bool:
        """Remove an object this process wrote for a write that was then refused, unless another writer
        re-published it since (its age restarted) or something references it."""
        with self._lock:
            written = self._created.pop(sha, None)
        if written is None:
            return False
        code, head = self.bucket.attempt("head_object", Key=self.bucket.key("objects", sha))
        return not code and head["Metadata"].get(WRITER_META) == written and self.remove(sha, referenced)

    def remove(self, sha: str, referenced: Callable[[], bool], inode: int | None = None) -> bool:
        """Move the object aside, and delete it only if still unreferenced; else put it back."""
        if referenced():
            return False
        key, aside = self.bucket.key("objects", sha), self.bucket.key("aside", f"{sha}-{uuid.uuid4().hex}")
        source = {"Bucket": self.bucket.where.bucket, "Key": key}
        code, _ = self.bucket.attempt("copy_object", Key=aside, CopySource=source)
        if code:
            return False
        self.bucket.call("remove", "delete_object", Key=key)
        removed = not referenced()
        if not removed:
            self.bucket.call("restore", "copy_object", Key=key, CopySource={**source, "Key": aside})
        self.bucket.call("remove", "delete_object", Key=aside)
        if removed:
            self._forget(sha)
        return removed

    def _forget(self, sha: str) -> None:
        self._manifests.pop(sha, None)
        if self.cache:
            self.cache.drop(sha)

    def scrub(self) -> builtins.list[str]:
        """Re-read every object whole; a damaged one (or one its manifest disagrees with) is quarantined."""
        damaged = []
        for sha, _ in self.listing("objects"):
            self._manifests.pop(sha, None)
            try:
                self.get_bytes(sha)
                continue
            except Corrupt:
                pass
            key = self.bucket.key("objects", sha)
            source = {"Bucket": self.bucket.where.bucket, "Key": key}
            code, _ = self.bucket.attempt(
                "copy_object", Key=self.bucket.key("quarantine", sha), CopySource=source
            )
            if code:
                continue  # removed meanwhile
            self.bucket.call("quarantine", "delete_object", Key=key)
            self._forget(sha)
            damaged.append(sha)
        return damaged

    def listing(self, kind: str) -> Iterator[tuple[str, float]]:
        """(name, age in seconds) of every key of `kind`."""
        now = time.time()
        for item in self.bucket.listing(kind):
            yield item["Key"].rsplit("/", 1)[-1], now - item["LastModified"].timestamp()

    def sweep(
        self, keep: Callable[[str], bool], grace_seconds: float, dry_run: bool = False
    ) -> builtins.list[str]:
        """Delete objects `keep` refuses once past the grace period (aged again just before), manifests
        without an object, stale temp and aside keys, and uploads whose writer died."""
        removed = []
        for sha, age in list(self.listing("objects")):
            if keep(sha) or age < grace_seconds or self._age(self.bucket.key("objects", sha)) < grace_seconds:
                continue
            removed.append(sha)
            if not dry_run:
                self.bucket.call("remove", "delete_object", Key=self.bucket.key("objects", sha))
                self._forget(sha)
        if dry_run:
            return removed
        self._abort_stale_uploads(grace_seconds)
        present = {sha for sha, _ in self.listing("objects")}
        for kind in ("blocks", "tmp", "aside"):
            for name, age in list(self.listing(kind)):
                if age >= grace_seconds and name not in present:
                    self.bucket.call("remove", "delete_object", Key=self.bucket.key(kind, name))
        return removed

    def _abort_stale_uploads(self, grace_seconds: float) -> None:
        markers = dict(self.listing("tmp"))
        for upload in self.bucket.uploads():
            sha = upload["Key"].rsplit("/", 1)[-1]
            started = time.time() - upload["Initiated"].timestamp()
            if min(started, markers.get(f"upload-{sha}", started)) >= grace_seconds:
                self.bucket.attempt("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])

    def _age(self, key: str) -> float:
        code, head = self.bucket.attempt("head_object", Key=key)
        return 0.0 if code else time.time() - head["LastModified"].timestamp()


class _Counted:
    """A ranged response whose bytes count towards S3Objects.downloaded."""

    def __init__(self, objects: S3Objects, body: RangedBody):
        self._objects, self._body = objects, body

    def read(self, n: int) -> bytes:
        data = self._body.read(n)
        self._objects.count(len(data))
        return data

    def close(self) -> None:
        self._body.close()


def open_bucket_objects(settings: Settings, readonly: bool = False, subfolder: str = "") -> S3Objects:
    """The bucket LLMK_OBJECTS_URL names, checked now (reachable, and writable unless `readonly`).
    `subfolder`: a store of its own under the prefix (its keys never match the store's listings), uncached."""
    where = Location.parse(settings.objects_url)
    if subfolder:
        where = Location(where.bucket, f"{where.prefix}{subfolder}/")
    bucket = Bucket(where, settings.s3_endpoint)
    bucket.check(writable=not readonly)
    limit = 0 if subfolder else settings.object_cache_bytes
    cache = BlockCache(settings.cache_path / "objects", limit) if limit > 0 else None
    return S3Objects(bucket, cache, settings.s3_part_bytes, settings.max_header_bytes)
