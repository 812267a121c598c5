"""The store tier's factory: `connect` picks the gRPC client or the store in this process from Settings.

Both implement llmk.app.clients.StoreClient, raise the same llmk errors and return the same records;
tests/contract runs one suite against both so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llmk.app.clients import StoreClient
from llmk.app.reading import Change, Step
from llmk.app.store import MAIN, CommitInfo, Store
from llmk.app.upkeep import VersionStats
from llmk.config import Settings
from llmk.domain.deltas import Delta
from llmk.domain.versions import Model, Ref, Version


class LocalStoreClient:
    """The embedded store: same process, same database and object files."""

    def __init__(self, store: Store):
        self.store = store

    def create_model(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        config: dict[str, Any],
        files: Mapping[str, bytes],
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        return self.store.create_model(name, tensors, config, files, info)

    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = MAIN,
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        return self.store.commit(model, entries, branch, parent, info)

    def commit_full(
        self,
        model: str,
        tensors: Mapping[str, torch.Tensor],
        branch: str = MAIN,
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        return self.store.commit_full(model, tensors, branch, parent, info)

    def model(self, name: str) -> Model:
        return self.store.model(name)

    def models(self) -> list[Model]:
        return self.store.models()

    def refs(self, model: str) -> list[Ref]:
        return self.store.refs(model)

    def file(self, model: str, name: str) -> bytes:
        return self.store.file(model, name)

    def version(self, model: str, ref: str | None = None) -> Version:
        return self.store.version(model, ref)

    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]:
        return self.store.log(model, ref, limit)

    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        return self.store.materialize(model, ref, selector, names)

    def export(self, model: str, ref: str | None, out: Path, selector: str = "") -> int:
        return self.store.export(model, ref, out, selector)

    def diff(self, model: str, a: str, b: str) -> list[Change]:
        return self.store.diff(model, a, b)

    def branch(self, model: str, name: str, from_ref: str | None = None) -> Ref:
        return self.store.branch(model, name, from_ref)

    def tag(self, model: str, name: str, ref: str | None = None) -> Ref:
        return self.store.tag(model, name, ref)

    def rollback(
        self, model: str, to: str, branch: str = MAIN, author: str = "llmk", force_frozen: bool = False
    ) -> Version:
        return self.store.rollback(model, to, branch, CommitInfo(author=author), force_frozen)

    def freeze(self, model: str, patterns: list[str]) -> Model:
        return self.store.freeze(model, patterns)

    def unfreeze(self, model: str, patterns: list[str]) -> Model:
        return self.store.unfreeze(model, patterns)

    def squash(self, model: str, ref: str | None = None, author: str = "llmk") -> Version:
        return self.store.squash(model, ref, CommitInfo(author=author))

    def gc(self, dry_run: bool = False) -> list[str]:
        return self.store.gc(dry_run)

    def stats(self, model: str) -> list[VersionStats]:
        return self.store.stats(model)

    def head(self, model: str, branch: str = MAIN) -> int:
        return self.store.head(model, branch)

    def changed(self, model: str, a: int, b: int) -> list[str]:
        return self.store.changed(model, a, b)

    def steps(self, model: str, a: int, b: int) -> list[Step] | None:
        return self.store.steps(model, a, b)

    def close(self) -> None:
        pass


def connect(settings: Settings) -> StoreClient:
    """The store named by settings: a gRPC service when LLMK_STORE_ADDRESS is set, else embedded."""
    if settings.store_address:
        from llmk.adapters.objects import ObjectStore
        from llmk.rpc.security import Tls
        from llmk.rpc.store import GrpcStoreClient

        beside = settings.store_object_dir
        return GrpcStoreClient(
            settings.store_address,
            settings.auth_token,
            settings.max_message_bytes,
            settings.chunk_bytes,
            Tls.of(settings),
            ObjectStore(beside, settings.max_header_bytes, readonly=True) if beside else None,
        )
    from llmk.wiring import open_store

    return LocalStoreClient(open_store(settings))


__all__ = ["LocalStoreClient", "StoreClient", "connect"]
