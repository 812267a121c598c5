"""The rec service's client: the tier's RecClient over gRPC, answering the same records and raising the
same llmk errors as a recommender served in this process."""

from __future__ import annotations

from llmk.platform.grpc_errors import translate
from llmk.platform.security import ServiceClient, Tls
from llmk.v1 import rec_pb2 as pb
from llmk.v1 import rec_pb2_grpc
from services.rec.interface import Recommendation, Scored


class GrpcRecClient(ServiceClient):
    """The recommender served by the worker at `address`; `model` must be the one it serves."""

    def __init__(
        self,
        address: str,
        model: str,
        token: str = "",
        max_message_bytes: int = 8 << 20,
        tls: Tls | None = None,
    ):
        self.model = model
        super().__init__(address, token, max_message_bytes, tls)
        self.stub = rec_pb2_grpc.RecStub(self.channel)

    @translate
    def recommend(self, user: int, k: int = 10, exclude: frozenset[int] = frozenset()) -> Recommendation:
        request = pb.RecommendRequest(model=self.model, user=user, k=k, exclude=sorted(exclude))
        reply = self.stub.Recommend(request)
        items = [Scored(s.item, s.title, s.score) for s in reply.items]
        return Recommendation(reply.user, reply.version, items, reply.popular_fallback)
