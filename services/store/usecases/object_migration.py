"""Copying a store's objects to another object store (a folder to a bucket, or back), resumably: what the
target already holds is skipped, every copied object is read verified and re-hashed on arrival."""

from __future__ import annotations

from dataclasses import dataclass

from llmk.errors import Corrupt
from services.store.usecases.ports import Catalog, Objects


@dataclass(frozen=True)
class Migrated:
    copied: int
    skipped: int
    bytes_copied: int


def migrate(catalog: Catalog, source: Objects, target: Objects) -> Migrated:
    """Copy every object a model, version or snapshot references; safe to run again after an interruption."""
    copied = skipped = nbytes = 0
    for sha in sorted(catalog.referenced_objects() - {""}):
        try:
            target.size(sha)  # present there (a folder re-hashes it; a bucket's readers check every block)
            skipped += 1
            continue
        except Corrupt:
            pass
        data = source.get_bytes(sha)  # checked against its sha256
        landed, size = target.put_bytes(data)
        if landed != sha:
            raise Corrupt(f"object {sha[:12]} arrived as {landed[:12]}: the copy changed it")
        copied, nbytes = copied + 1, nbytes + size
    return Migrated(copied, skipped, nbytes)
