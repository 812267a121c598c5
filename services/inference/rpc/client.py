"""The inference service's client: the tier's InferenceClient over gRPC, answering the same records and
raising the same llmk errors as the model served in-process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from llmk.platform.grpc_errors import from_rpc_error, translate
from llmk.platform.security import ServiceClient, Tls
from llmk.v1 import inference_pb2 as pb
from llmk.v1 import inference_pb2_grpc
from services.inference.interface import Classification, Finished, GenerateRequest, LabelScores


class GrpcInferenceClient(ServiceClient):
    """One model of the worker at `address`, pinned to `ref` when one is given (the worker refuses with
    FailedPrecondition when it serves another version)."""

    def __init__(
        self,
        address: str,
        model: str,
        ref: str | None = None,
        token: str = "",
        max_message_bytes: int = 8 << 20,
        tls: Tls | None = None,
    ):
        self.model, self.ref = model, ref or ""
        super().__init__(address, token, max_message_bytes, tls)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)

    @translate
    def classify(
        self, texts: Sequence[str], labels: Sequence[str] = (), template: str = ""
    ) -> Classification:
        request = pb.ClassifyRequest(
            model=self.model, version=self.ref, texts=texts, labels=labels, template=template
        )
        reply = self.stub.Classify(request)
        results = [LabelScores(r.label, dict(r.probabilities), r.prompt_tokens) for r in reply.results]
        return Classification(reply.version, results)

    @translate
    def version(self) -> int:
        return int(self.stub.Info(pb.InfoRequest()).version)

    def generate(self, request: GenerateRequest) -> Iterator[str | Finished]:
        call = self.stub.Generate(self._generate_request(request))
        try:
            for chunk in call:
                if chunk.text:
                    yield chunk.text
                if chunk.done:
                    yield Finished(
                        chunk.version, chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens
                    )
        except grpc.RpcError as e:  # a stream fails while it is read, not when it is opened
            raise from_rpc_error(e) from None
        finally:
            call.cancel()  # a no-op once the stream ended; else the worker frees the sequence

    def _generate_request(self, r: GenerateRequest) -> pb.GenerateRequest:
        fields: dict[str, Any] = dict(
            model=self.model,
            version=r.pin or self.ref,
            max_tokens=r.max_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=r.seed,
            stop=list(r.stop),
        )
        if r.messages:
            fields["messages"] = [pb.ChatMessage(role=role, content=text) for role, text in r.messages]
        elif r.chat:
            fields["messages"] = [pb.ChatMessage(role="user", content=r.prompt)]
        else:
            fields["prompt"] = r.prompt
        return pb.GenerateRequest(**fields)
