"""Upkeep of the object files beneath the versions: what each version costs on disk, and collecting the files
no version references."""

from __future__ import annotations

from services.store.interface import VersionStats
from services.store.usecases import materialize
from services.store.usecases.ports import Catalog, Objects


def stats(catalog: Catalog, objects: Objects, model: str) -> list[VersionStats]:
    """Per version: the bytes of the object files it references, and what a full copy would take."""
    versions = catalog.versions(model)
    full = materialize.state_bytes(versions)
    sizes: dict[str, int] = {}
    out = []
    for v in versions:
        objs = {e.object for e in v.entries}
        for sha in objs - set(sizes):
            sizes[sha] = objects.size(sha)
        out.append(VersionStats(v.id, sum(sizes[s] for s in objs), full[v.id]))
    return out


def gc(catalog: Catalog, objects: Objects, grace_seconds: float, dry_run: bool = False) -> list[str]:
    """Delete object files no version references, and stale temp files, once older than the grace period."""
    referenced = catalog.referenced_objects()
    return objects.sweep(referenced.__contains__, grace_seconds, dry_run)
