"""gRPC llmk.v1.Inference: each handler unpacks, calls the Host, packs. Errors become statuses in the
server's interceptor."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from llmk.v1 import inference_pb2 as pb
from llmk.v1 import inference_pb2_grpc
from services.inference.engine.generator import Request, Result
from services.inference.usecases.host import Classification, Host, Info

SERVICE = "llmk.v1.Inference"
MUTATING = {f"/{SERVICE}/Load", f"/{SERVICE}/Unload"}
DEFAULT_MAX_TOKENS = 64


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, host: Host):
        self.host = host

    def Generate(
        self, request: pb.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GenerateChunk]:
        generation = self.host.generate(request_of(request), request.model, request.version)
        context.add_callback(generation.cancel)  # a client that goes away frees its sequence
        for item in generation:
            if isinstance(item, Result):
                yield last_chunk(item)
            else:
                yield pb.GenerateChunk(text=item)

    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext) -> pb.ClassifyReply:
        answer = self.host.classify(
            list(request.texts), list(request.labels), request.template, request.model, request.version
        )
        return classify_reply(answer)

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:
        return info_reply(self.host.info())

    def Load(self, request: pb.LoadRequest, context: grpc.ServicerContext) -> pb.InfoReply:
        return info_reply(self.host.load(request.model, request.ref or None, list(request.options)))

    def Unload(self, request: pb.UnloadRequest, context: grpc.ServicerContext) -> pb.InfoReply:
        return info_reply(self.host.unload())


def request_of(r: pb.GenerateRequest) -> Request:
    messages = [{"role": m.role, "content": m.content} for m in r.messages] or None
    return Request(
        prompt=r.prompt,
        messages=messages,
        max_tokens=r.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=r.temperature,
        top_p=r.top_p or 1.0,
        top_k=r.top_k,
        seed=r.seed if r.HasField("seed") else None,
        stop=list(r.stop),
    )


def last_chunk(result: Result) -> pb.GenerateChunk:
    return pb.GenerateChunk(
        done=True,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        version=result.version,
    )


def classify_reply(answer: Classification) -> pb.ClassifyReply:
    results = [
        pb.LabelScores(probabilities=s.probabilities, label=s.label, prompt_tokens=s.prompt_tokens)
        for s in answer.results
    ]
    return pb.ClassifyReply(results=results, version=answer.version)


def info_reply(info: Info) -> pb.InfoReply:
    return pb.InfoReply(
        model=info.model,
        version=info.version,
        branch=info.branch,
        device=info.device,
        dtype=info.dtype,
        resident_bytes=info.resident_bytes,
        total_bytes=info.total_bytes,
        options=list(info.options),
        update_error=info.update_error,
    )
