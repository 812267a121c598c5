"""gRPC ParameterStore: each handler decodes, calls one Store use case, encodes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc

from llmk.config import Settings
from llmk.domain.deltas import PARTS, Delta, parse_kind
from llmk.domain.versions import CommitInfo, part_key
from llmk.errors import InvalidInput
from llmk.platform.tensor_stream import chunks_in, encoded_chunks, from_chunks
from llmk.v1 import common_pb2, store_pb2_grpc
from llmk.v1 import store_pb2 as pb
from services.store.metrics import Metrics
from services.store.rpc import codec
from services.store.rpc import reads_codec as reads
from services.store.usecases.store import Store

SERVICE = "llmk.v1.ParameterStore"
MUTATING = {
    f"/{SERVICE}/{m}"
    for m in ("CreateModel", "Commit", "CreateRef", "Rollback", "Freeze", "Unfreeze", "Squash", "Gc")
}


def register(servicer: StoreServicer, server: grpc.Server) -> None:
    """The generated registration, except that FetchTensors' responses, serialized by hand, go out as
    they are (a response serializer of None)."""
    generated = _Registration()
    store_pb2_grpc.add_ParameterStoreServicer_to_server(servicer, generated)
    handlers = generated.handlers | {
        "FetchTensors": grpc.unary_stream_rpc_method_handler(
            servicer.FetchTensors, request_deserializer=pb.FetchRequest.FromString, response_serializer=None
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class _Registration:
    """Stands in for the server to catch the method handlers the generated code registers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = handlers


class StoreServicer(store_pb2_grpc.ParameterStoreServicer):
    def __init__(self, store: Store, settings: Settings, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.chunk_bytes = min(settings.chunk_bytes, 4 << 20)
        self.max_stream_bytes = settings.max_model_bytes

    def CreateModel(
        self, request_iterator: Iterator[pb.CommitRequest], context: grpc.ServicerContext
    ) -> pb.VersionInfo:
        with self.metrics.track("CreateModel"):
            header, parts = _read_commit(request_iterator, self.max_stream_bytes)
            tensors = _full_tensors(header, parts)
            config = _json(header.config_json, "config_json")
            v = self.store.create_model(header.model, tensors, config, dict(header.files), _info(header))
        self.metrics.committed("create", v)
        return codec.version_to_pb(v)

    def Commit(
        self, request_iterator: Iterator[pb.CommitRequest], context: grpc.ServicerContext
    ) -> pb.VersionInfo:
        with self.metrics.track("Commit"):
            header, parts = _read_commit(request_iterator, self.max_stream_bytes)
            parent = header.parent if header.HasField("parent") else None
            branch = header.branch or "main"
            if header.full_weights:
                tensors = _full_tensors(header, parts)
                v = self.store.commit_full(header.model, tensors, branch, parent, _info(header))
            else:
                entries = {n: _delta(n, kind, parts) for n, kind in header.kinds.items()}
                v = self.store.commit(header.model, entries, branch, parent, _info(header))
        self.metrics.committed("full" if header.full_weights else "delta", v)
        return codec.version_to_pb(v)

    def GetModel(self, request: pb.ModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        return codec.model_to_pb(self.store.model(request.model), self.store.refs(request.model))

    def ListModels(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> pb.ModelList:
        return pb.ModelList(
            models=[codec.model_to_pb(m, self.store.refs(m.name)) for m in self.store.models()]
        )

    def GetFile(self, request: pb.FileRequest, context: grpc.ServicerContext) -> pb.FileData:
        with self.metrics.track("GetFile"):
            return pb.FileData(data=self.store.file(request.model, request.name))

    def GetVersion(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionInfo:
        return codec.version_to_pb(self.store.version(request.model, request.ref or None))

    def ListVersions(self, request: pb.LogRequest, context: grpc.ServicerContext) -> pb.VersionList:
        versions = self.store.log(request.model, request.ref or None, request.limit or 100)
        return pb.VersionList(versions=[codec.version_to_pb(v) for v in versions])

    def FetchTensors(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Serialized TensorChunks: `register` sends them as they are."""
        return self.metrics.streamed("FetchTensors", self._chunks(request))

    def _chunks(self, request: pb.FetchRequest) -> Iterator[bytes]:
        tensors = self.store.fetch(
            request.model, request.ref or None, request.selector, list(request.names) or None
        )
        yield from encoded_chunks(tensors, self.chunk_bytes)

    def Diff(self, request: pb.DiffRequest, context: grpc.ServicerContext) -> pb.DiffReply:
        changes = self.store.diff(request.model, request.a, request.b)
        return pb.DiffReply(
            a=self.store.resolve(request.model, request.a),
            b=self.store.resolve(request.model, request.b),
            changes=[reads.change_to_pb(c) for c in changes],
        )

    def CreateRef(self, request: pb.RefRequest, context: grpc.ServicerContext) -> pb.RefInfo:
        if request.kind not in ("branch", "tag"):
            raise InvalidInput(f"ref kind must be 'branch' or 'tag', not {request.kind!r}")
        make = self.store.branch if request.kind == "branch" else self.store.tag
        return codec.ref_to_pb(make(request.model, request.name, request.from_ref or None))

    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext) -> pb.VersionInfo:
        with self.metrics.track("Rollback"):
            v = self.store.rollback(
                request.model,
                request.to,
                request.branch or "main",
                request.author or "llmk",
                request.force_frozen,
            )
        self.metrics.committed("rollback", v)
        return codec.version_to_pb(v)

    def Freeze(self, request: pb.FreezeRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        m = self.store.freeze(request.model, list(request.patterns))
        return codec.model_to_pb(m, self.store.refs(request.model))

    def Unfreeze(self, request: pb.FreezeRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        m = self.store.unfreeze(request.model, list(request.patterns))
        return codec.model_to_pb(m, self.store.refs(request.model))

    def Squash(self, request: pb.SquashRequest, context: grpc.ServicerContext) -> pb.VersionInfo:
        with self.metrics.track("Squash"):
            v = self.store.squash(request.model, request.ref or None, request.author or "llmk")
        self.metrics.committed("squash", v)
        return codec.version_to_pb(v)

    def Gc(self, request: pb.GcRequest, context: grpc.ServicerContext) -> pb.GcReply:
        return pb.GcReply(removed=self.store.gc(request.dry_run))

    def Stats(self, request: pb.ModelRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        return pb.StatsReply(versions=[reads.stats_to_pb(s) for s in self.store.stats(request.model)])

    def Head(self, request: pb.HeadRequest, context: grpc.ServicerContext) -> pb.HeadReply:
        return pb.HeadReply(version=self.store.head(request.model, request.branch or "main"))

    def Changed(self, request: pb.ChangedRequest, context: grpc.ServicerContext) -> pb.ChangedReply:
        return pb.ChangedReply(names=self.store.changed(request.model, request.a, request.b))

    def FetchSteps(self, request: pb.StepsRequest, context: grpc.ServicerContext) -> Iterator[pb.StepsChunk]:
        with self.metrics.track("FetchSteps"):
            steps = self.store.steps(request.model, request.from_version, request.to_version)
            yield from reads.steps_to_chunks(steps, self.chunk_bytes)

    def Locate(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> pb.LocateReply:
        located = self.store.locate(
            request.model, request.ref or None, request.selector, list(request.names) or None
        )
        return reads.located_to_pb(located)

    def LocateSteps(self, request: pb.StepsRequest, context: grpc.ServicerContext) -> pb.StepsLocated:
        versions, checked = self.store.locate_steps(request.model, request.from_version, request.to_version)
        return reads.steps_located_to_pb(versions, checked)


def _read_commit(requests: Iterator[pb.CommitRequest], max_bytes: int) -> tuple[pb.CommitHeader, dict]:
    """The header, then exactly the parts it names: a part it does not name is refused, not dropped."""
    first = next(requests, None)
    if first is None or not first.HasField("header"):
        raise InvalidInput("a commit stream must start with its header")
    parts = from_chunks(chunks_in(requests, "commit"), max_bytes)
    named = {part_key(n, p) for n, kind in first.header.kinds.items() for p in PARTS[parse_kind(kind)]}
    if extra := sorted(set(parts) - named):
        raise InvalidInput(f"the stream carries part(s) its header does not name: {extra[:5]}")
    return first.header, parts


def _delta(name: str, kind: str, parts: dict) -> Delta:
    k = parse_kind(kind)
    missing = [p for p in PARTS[k] if part_key(name, p) not in parts]
    if missing:
        raise InvalidInput(f"{name}: {kind} entry sent without part(s) {missing}")
    return Delta(k, {p: parts[part_key(name, p)] for p in PARTS[k]})


def _full_tensors(header: pb.CommitHeader, parts: dict) -> dict:
    return {n: _delta(n, "full", parts).parts["tensor"] for n in header.kinds}


def _json(text: str, field: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{field} is not JSON: {e}") from None
    except RecursionError:
        raise InvalidInput(f"{field} is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object, not {type(value).__name__}")
    return value


def _info(h: pb.CommitHeader) -> CommitInfo:
    metadata = _json(h.metadata_json, "metadata_json")
    return CommitInfo(h.author or "llmk", h.message, metadata, h.idempotency_key or None)
