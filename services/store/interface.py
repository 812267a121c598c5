"""The store tier's interface: what its callers (the CLI, other tiers, tests) use, in-process or over gRPC.

  interface      in-process               gRPC
  StoreClient    usecases.store.Store     rpc.client.GrpcStoreClient
  HistoryClient  usecases.history.History rpc.history_client.GrpcHistoryClient

Both sides raise the same llmk errors and return the same records; tests/contract/store runs one suite
against both. llmk.bootstrap chooses which one a caller gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch loads only in the commands that need tensors
    import torch

    from llmk.domain.deltas import Delta
    from llmk.domain.versions import CommitInfo, Model, Ref, Version


@dataclass(frozen=True)
class Change:
    name: str
    kind: str  # the entry kind when one entry separates the versions, else "mixed"
    nnz: int
    norm: float
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """One version on the way from an older one: its typed entries, each against the version before."""

    version: int
    entries: dict[str, Delta]


@dataclass(frozen=True)
class VersionStats:
    version: int
    stored_bytes: int
    full_bytes: int


class HistoryClient(Protocol):
    """The store's metadata: models, their versions and refs. Never touches a tensor, so its callers (the
    listing and ref commands) start without torch."""

    def model(self, name: str) -> Model: ...
    def models(self) -> list[Model]: ...
    def refs(self, model: str) -> list[Ref]: ...
    def version(self, model: str, ref: str | None = None) -> Version: ...
    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]: ...
    def branch(self, model: str, name: str, from_ref: str | None = None) -> Ref: ...
    def tag(self, model: str, name: str, ref: str | None = None) -> Ref: ...
    def unfreeze(self, model: str, patterns: list[str]) -> Model: ...
    def head(self, model: str, branch: str = "main") -> int: ...
    def changed(self, model: str, a: int, b: int) -> list[str]: ...
    def close(self) -> None: ...


class StoreClient(HistoryClient, Protocol):
    """The parameter store: its history, and tensors in and out."""

    def create_model(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        config: dict[str, Any],
        files: Mapping[str, bytes],
        info: CommitInfo = ...,
    ) -> Version: ...
    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = ...,
    ) -> Version: ...
    def commit_full(
        self,
        model: str,
        tensors: Mapping[str, torch.Tensor],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = ...,
    ) -> Version: ...
    def file(self, model: str, name: str) -> bytes: ...
    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> dict[str, torch.Tensor]: ...
    def export(self, model: str, ref: str | None, out: Path, selector: str = "") -> int: ...
    def diff(self, model: str, a: str, b: str) -> list[Change]: ...
    def rollback(
        self, model: str, to: str, branch: str = "main", author: str = "llmk", force_frozen: bool = False
    ) -> Version: ...
    def freeze(self, model: str, patterns: list[str]) -> Model: ...
    def squash(self, model: str, ref: str | None = None, author: str = "llmk") -> Version: ...
    def gc(self, dry_run: bool = False) -> list[str]: ...
    def stats(self, model: str) -> list[VersionStats]: ...
    def steps(self, model: str, a: int, b: int) -> list[Step] | None: ...
