"""gRPC llmk.v1.Rec: the handler unpacks, asks the worker, packs. Errors become statuses in the server's
interceptor."""

from __future__ import annotations

import grpc

from llmk.errors import NotFound
from llmk.v1 import rec_pb2 as pb
from llmk.v1 import rec_pb2_grpc
from services.rec.interface import Recommendation
from services.rec.usecases.following import RecWorker

SERVICE = "llmk.v1.Rec"
DEFAULT_K = 10


class RecServicer(rec_pb2_grpc.RecServicer):
    def __init__(self, worker: RecWorker):
        self.worker = worker

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendReply:
        if request.model and request.model != self.worker.model:
            raise NotFound(f"this worker serves {self.worker.model!r}, not {request.model!r}")
        answer = self.worker.recommend(request.user, request.k or DEFAULT_K, frozenset(request.exclude))
        return reply_of(answer)


def reply_of(answer: Recommendation) -> pb.RecommendReply:
    items = [pb.ScoredItem(item=s.item, title=s.title, score=s.score) for s in answer.items]
    return pb.RecommendReply(
        user=answer.user, version=answer.version, popular_fallback=answer.popular, items=items
    )
