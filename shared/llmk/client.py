"""One store client interface, two ways to reach it: in-process or over gRPC.

Both raise the same llmk errors and return the same records; tests/contract runs one suite
against both so they cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from llmk.app import exports
from llmk.app.reading import Change, Step
from llmk.app.store import MAIN, CommitInfo, Store, VersionStats
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind, full
from llmk.domain.versions import Model, Ref, Version, part_key
from llmk.rpc import codec
from llmk.rpc.errors import translate
from llmk.rpc.security import Tls, open_channel
from llmk.rpc.server import message_options
from llmk.rpc.tensors import from_chunks, to_chunks
from llmk.v1 import store_pb2 as pb
from llmk.v1 import store_pb2_grpc
from llmk.v1.common_pb2 import Empty


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


class GrpcStoreClient:
    """The store service over gRPC; tensors stream in chunks of at most settings.chunk_bytes."""

    def __init__(
        self,
        address: str,
        token: str = "",
        max_message_bytes: int = 8 << 20,
        chunk_bytes: int = 4 << 20,
        tls: Tls | None = None,
    ):
        self.channel = open_channel(address, message_options(max_message_bytes), tls, token)
        self.stub = store_pb2_grpc.ParameterStoreStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.chunk_bytes = chunk_bytes

    def _commit_stream(
        self, header: pb.CommitHeader, tensors: Mapping[str, torch.Tensor]
    ) -> Iterator[pb.CommitRequest]:
        yield pb.CommitRequest(header=header)
        for chunk in to_chunks(tensors, self.chunk_bytes):
            yield pb.CommitRequest(chunk=chunk)

    @staticmethod
    def _header(
        model: str, branch: str, parent: int | None, info: CommitInfo, **extra: Any
    ) -> pb.CommitHeader:
        return pb.CommitHeader(
            model=model,
            branch=branch,
            parent=parent,
            author=info.author,
            message=info.message,
            metadata_json=json.dumps(info.metadata or {}),
            idempotency_key=info.idempotency_key or "",
            **extra,
        )

    @translate
    def create_model(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        config: dict[str, Any],
        files: Mapping[str, bytes],
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        header = self._header(
            name,
            MAIN,
            None,
            info,
            config_json=json.dumps(config),
            files=dict(files),
            kinds={n: "full" for n in tensors},
        )
        parts = {part_key(n, "tensor"): t for n, t in tensors.items()}
        return codec.version_from_pb(
            self.stub.CreateModel(self._commit_stream(header, parts), metadata=self.metadata)
        )

    @translate
    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = MAIN,
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        header = self._header(
            model, branch, parent, info, kinds={n: d.kind.value for n, d in entries.items()}
        )
        parts = {part_key(n, k): t for n, d in entries.items() for k, t in d.parts.items()}
        return codec.version_from_pb(
            self.stub.Commit(self._commit_stream(header, parts), metadata=self.metadata)
        )

    @translate
    def commit_full(
        self,
        model: str,
        tensors: Mapping[str, torch.Tensor],
        branch: str = MAIN,
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        header = self._header(
            model, branch, parent, info, full_weights=True, kinds={n: "full" for n in tensors}
        )
        parts = {part_key(n, "tensor"): t for n, t in tensors.items()}
        return codec.version_from_pb(
            self.stub.Commit(self._commit_stream(header, parts), metadata=self.metadata)
        )

    @translate
    def model(self, name: str) -> Model:
        return codec.model_from_pb(self.stub.GetModel(pb.ModelRequest(model=name)))

    @translate
    def models(self) -> list[Model]:
        return [codec.model_from_pb(m) for m in self.stub.ListModels(Empty()).models]

    @translate
    def refs(self, model: str) -> list[Ref]:
        return [codec.ref_from_pb(r) for r in self.stub.GetModel(pb.ModelRequest(model=model)).refs]

    @translate
    def file(self, model: str, name: str) -> bytes:
        return bytes(self.stub.GetFile(pb.FileRequest(model=model, name=name)).data)

    @translate
    def version(self, model: str, ref: str | None = None) -> Version:
        reply = self.stub.GetVersion(pb.VersionRequest(model=model, ref=ref or "", with_entries=True))
        return codec.version_from_pb(reply)

    @translate
    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]:
        reply = self.stub.ListVersions(pb.LogRequest(model=model, ref=ref or "", limit=limit))
        return [codec.version_from_pb(v) for v in reply.versions]

    @translate
    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        request = pb.FetchRequest(model=model, ref=ref or "", selector=selector, names=names or [])
        return from_chunks(self.stub.FetchTensors(request))

    def export(self, model: str, ref: str | None, out: Path, selector: str = "") -> int:
        exports.check_target(out)
        vid = self.version(model, ref).id  # fetch exactly this version, even if the branch moves meanwhile
        return exports.write(self.fetch(model, str(vid), selector), out, model, vid, selector)

    @translate
    def diff(self, model: str, a: str, b: str) -> list[Change]:
        return [
            codec.change_from_pb(c) for c in self.stub.Diff(pb.DiffRequest(model=model, a=a, b=b)).changes
        ]

    @translate
    def branch(self, model: str, name: str, from_ref: str | None = None) -> Ref:
        request = pb.RefRequest(model=model, name=name, kind="branch", from_ref=from_ref or "")
        return codec.ref_from_pb(self.stub.CreateRef(request, metadata=self.metadata))

    @translate
    def tag(self, model: str, name: str, ref: str | None = None) -> Ref:
        request = pb.RefRequest(model=model, name=name, kind="tag", from_ref=ref or "")
        return codec.ref_from_pb(self.stub.CreateRef(request, metadata=self.metadata))

    @translate
    def rollback(
        self, model: str, to: str, branch: str = MAIN, author: str = "llmk", force_frozen: bool = False
    ) -> Version:
        request = pb.RollbackRequest(
            model=model, to=to, branch=branch, author=author, force_frozen=force_frozen
        )
        return codec.version_from_pb(self.stub.Rollback(request, metadata=self.metadata))

    @translate
    def freeze(self, model: str, patterns: list[str]) -> Model:
        request = pb.FreezeRequest(model=model, patterns=patterns)
        return codec.model_from_pb(self.stub.Freeze(request, metadata=self.metadata))

    @translate
    def unfreeze(self, model: str, patterns: list[str]) -> Model:
        request = pb.FreezeRequest(model=model, patterns=patterns)
        return codec.model_from_pb(self.stub.Unfreeze(request, metadata=self.metadata))

    @translate
    def squash(self, model: str, ref: str | None = None, author: str = "llmk") -> Version:
        request = pb.SquashRequest(model=model, ref=ref or "", author=author)
        return codec.version_from_pb(self.stub.Squash(request, metadata=self.metadata))

    @translate
    def gc(self, dry_run: bool = False) -> list[str]:
        return list(self.stub.Gc(pb.GcRequest(dry_run=dry_run), metadata=self.metadata).removed)

    @translate
    def stats(self, model: str) -> list[VersionStats]:
        return [codec.stats_from_pb(s) for s in self.stub.Stats(pb.ModelRequest(model=model)).versions]

    @translate
    def head(self, model: str, branch: str = MAIN) -> int:
        return int(self.stub.Head(pb.HeadRequest(model=model, branch=branch)).version)

    @translate
    def changed(self, model: str, a: int, b: int) -> list[str]:
        return list(self.stub.Changed(pb.ChangedRequest(model=model, a=a, b=b)).names)

    @translate
    def steps(self, model: str, a: int, b: int) -> list[Step] | None:
        request = pb.StepsRequest(model=model, from_version=a, to_version=b)
        return codec.steps_from_chunks(self.stub.FetchSteps(request))

    def close(self) -> None:
        self.channel.close()


StoreClient = LocalStoreClient | GrpcStoreClient


def connect(settings: Settings) -> StoreClient:
    """The store named by settings: a gRPC service when LLMK_STORE_ADDRESS is set, else embedded."""
    if settings.store_address:
        return GrpcStoreClient(
            settings.store_address,
            settings.auth_token,
            settings.max_message_bytes,
            settings.chunk_bytes,
            Tls.of(settings),
        )
    from llmk.wiring import open_store

    return LocalStoreClient(open_store(settings))


__all__ = ["CommitInfo", "Delta", "Kind", "StoreClient", "connect", "full"]
