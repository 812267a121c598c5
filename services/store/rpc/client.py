"""The parameter store's service client: services.store.interface.StoreClient over gRPC.

It raises the same llmk errors and returns the same records as the store in-process (llmk.bootstrap
chooses); tests/contract/store runs one suite against both so they cannot drift.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from llmk.domain.deltas import Delta
from llmk.domain.versions import MAIN, CommitInfo, Model, Version, part_key
from llmk.errors import Corrupt
from llmk.platform.grpc_errors import translate
from llmk.platform.security import Tls
from llmk.platform.tensor_stream import decode_chunk, from_chunks, packed
from llmk.v1 import store_pb2 as pb
from services.store.interface import Change, Step, VersionStats
from services.store.rpc import codec
from services.store.rpc import reads_codec as reads
from services.store.rpc.history_client import GrpcHistoryClient
from services.store.usecases import exports, materialize
from services.store.usecases.materialize import Located
from services.store.usecases.ports import FileState, Objects

log = logging.getLogger(__name__)


class GrpcStoreClient(GrpcHistoryClient):
    """The store service over gRPC; tensors stream in chunks of at most settings.chunk_bytes."""

    def __init__(
        self,
        address: str,
        token: str = "",
        max_message_bytes: int = 8 << 20,
        chunk_bytes: int = 4 << 20,
        tls: Tls | None = None,
        objects: Objects | None = None,
    ):
        """`objects`: the store's object directory, when this process can read it (LLMK_STORE_OBJECT_DIR)."""
        super().__init__(address, token, max_message_bytes, tls)
        self.chunk_bytes = chunk_bytes
        self.objects = objects
        self._fetch_stream = self.channel.unary_stream(  # the stub's method, with chunks read in place
            "/llmk.v1.ParameterStore/FetchTensors",
            request_serializer=pb.FetchRequest.SerializeToString,
            response_deserializer=decode_chunk,
        )

    def _commit_stream(
        self, header: pb.CommitHeader, tensors: Mapping[str, torch.Tensor]
    ) -> Iterator[pb.CommitRequest]:
        yield pb.CommitRequest(header=header)
        yield from packed(tensors, self.chunk_bytes, pb.CommitRequest)

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
        return codec.version_from_pb(self.stub.CreateModel(self._commit_stream(header, parts)))

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
        return codec.version_from_pb(self.stub.Commit(self._commit_stream(header, parts)))

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
        return codec.version_from_pb(self.stub.Commit(self._commit_stream(header, parts)))

    @translate
    def file(self, model: str, name: str) -> bytes:
        return bytes(self.stub.GetFile(pb.FileRequest(model=model, name=name)).data)

    @translate
    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        if self.objects is not None:
            try:
                return self._read_files(self.locate(model, ref, selector, names))
            except (Corrupt, OSError) as e:  # a file evicted or changed since the store checked it
                log.warning("reading %s from the object files failed (%s); streaming it instead", model, e)
        request = pb.FetchRequest(model=model, ref=ref or "", selector=selector, names=names or [])
        return from_chunks(self._fetch_stream(request))

    @translate
    def locate(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> Located:
        request = pb.FetchRequest(model=model, ref=ref or "", selector=selector, names=names or [])
        return reads.located_from_pb(self.stub.Locate(request))

    def _read_files(self, located: Located) -> dict[str, torch.Tensor]:
        """The bytes from the files: the store's check of each file is taken while the file stays exactly
        as it was checked."""
        assert self.objects is not None
        self._trust(located.checked)
        return materialize.load(self.objects, located.plan)

    def export(self, model: str, ref: str | None, out: Path, selector: str = "") -> int:
        exports.check_target(out)
        vid = self.version(model, ref).id  # fetch exactly this version, even if the branch moves meanwhile
        return exports.write(self.fetch(model, str(vid), selector), out, model, vid, selector)

    @translate
    def diff(self, model: str, a: str, b: str) -> list[Change]:
        return [
            reads.change_from_pb(c) for c in self.stub.Diff(pb.DiffRequest(model=model, a=a, b=b)).changes
        ]

    @translate
    def rollback(
        self, model: str, to: str, branch: str = MAIN, author: str = "llmk", force_frozen: bool = False
    ) -> Version:
        request = pb.RollbackRequest(
            model=model, to=to, branch=branch, author=author, force_frozen=force_frozen
        )
        return codec.version_from_pb(self.stub.Rollback(request))

    @translate
    def freeze(self, model: str, patterns: list[str]) -> Model:
        request = pb.FreezeRequest(model=model, patterns=patterns)
        return codec.model_from_pb(self.stub.Freeze(request))

    @translate
    def squash(self, model: str, ref: str | None = None, author: str = "llmk") -> Version:
        request = pb.SquashRequest(model=model, ref=ref or "", author=author)
        return codec.version_from_pb(self.stub.Squash(request))

    @translate
    def gc(self, dry_run: bool = False) -> list[str]:
        return list(self.stub.Gc(pb.GcRequest(dry_run=dry_run)).removed)

    @translate
    def stats(self, model: str) -> list[VersionStats]:
        return [reads.stats_from_pb(s) for s in self.stub.Stats(pb.ModelRequest(model=model)).versions]

    @translate
    def steps(self, model: str, a: int, b: int) -> list[Step] | None:
        request = pb.StepsRequest(model=model, from_version=a, to_version=b)
        if self.objects is not None:
            try:
                versions, checked = reads.steps_located_from_pb(self.stub.LocateSteps(request))
                self._trust(checked)
                return None if versions is None else materialize.read_steps(self.objects, versions)
            except (Corrupt, OSError) as e:
                log.warning("reading steps of %s from the object files failed (%s); streaming them", model, e)
        return reads.steps_from_chunks(self.stub.FetchSteps(request))

    def _trust(self, checked: Mapping[str, FileState]) -> None:
        assert self.objects is not None
        for sha, state in checked.items():
            self.objects.trust(sha, state)
