"""The store's metadata over gRPC: services.store.interface.HistoryClient, without torch.

GrpcStoreClient (rpc.client) extends it with tensors; tests/contract/store runs the store suite against
both this family and the store in-process.
"""

from __future__ import annotations

from llmk.domain.versions import MAIN, Model, Ref, Version
from llmk.platform.grpc_errors import translate
from llmk.platform.security import ServiceClient, Tls
from llmk.v1 import store_pb2 as pb
from llmk.v1 import store_pb2_grpc
from llmk.v1.common_pb2 import Empty
from services.store.rpc import codec


class GrpcHistoryClient(ServiceClient):
    def __init__(
        self, address: str, token: str = "", max_message_bytes: int = 8 << 20, tls: Tls | None = None
    ):
        super().__init__(address, token, max_message_bytes, tls)
        self.stub = store_pb2_grpc.ParameterStoreStub(self.channel)

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
    def version(self, model: str, ref: str | None = None) -> Version:
        reply = self.stub.GetVersion(pb.VersionRequest(model=model, ref=ref or "", with_entries=True))
        return codec.version_from_pb(reply)

    @translate
    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]:
        reply = self.stub.ListVersions(pb.LogRequest(model=model, ref=ref or "", limit=limit))
        return [codec.version_from_pb(v) for v in reply.versions]

    @translate
    def branch(self, model: str, name: str, from_ref: str | None = None) -> Ref:
        request = pb.RefRequest(model=model, name=name, kind="branch", from_ref=from_ref or "")
        return codec.ref_from_pb(self.stub.CreateRef(request))

    @translate
    def tag(self, model: str, name: str, ref: str | None = None) -> Ref:
        request = pb.RefRequest(model=model, name=name, kind="tag", from_ref=ref or "")
        return codec.ref_from_pb(self.stub.CreateRef(request))

    @translate
    def unfreeze(self, model: str, patterns: list[str]) -> Model:
        request = pb.FreezeRequest(model=model, patterns=patterns)
        return codec.model_from_pb(self.stub.Unfreeze(request))

    @translate
    def head(self, model: str, branch: str = MAIN) -> int:
        return int(self.stub.Head(pb.HeadRequest(model=model, branch=branch)).version)

    @translate
    def changed(self, model: str, a: int, b: int) -> list[str]:
        return list(self.stub.Changed(pb.ChangedRequest(model=model, a=a, b=b)).names)
