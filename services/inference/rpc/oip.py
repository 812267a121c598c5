"""The Open Inference Protocol (KServe v2) gRPC service over the Host, for standard clients (tritonclient).

The served model classifies text: input `text` (BYTES, one element per text) and optional `labels` (BYTES;
default LLMK_DEFAULT_LABELS), or the request parameters `labels` (comma-separated) and `template`. Outputs
`probabilities` (FP32 [batch, n_labels], in the order of the labels) and `label` (BYTES [batch]). llmk's
version id is the `model_version`, and also the response parameter `version`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import grpc
import numpy as np

import llmk
from llmk.errors import InvalidInput, NotFound
from llmk.oip import grpc_service_pb2 as pb
from llmk.oip import grpc_service_pb2_grpc
from services.inference.usecases.host import Classification, Host

SERVICE = "inference.GRPCInferenceService"
PLATFORM = "llmk_classifier"
OUTPUTS = ("probabilities", "label")

Tensor = pb.ModelMetadataResponse.TensorMetadata


class OipServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, host: Host):
        self.host = host

    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self.host.info().model))

    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        info = self.host.info()
        ready = bool(info.model) and request.name == info.model and request.version in ("", str(info.version))
        return pb.ModelReadyResponse(ready=ready)

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="llmk", version=llmk.__version__, extensions=[])

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        info = self.host.info()
        if not info.model or request.name != info.model:
            raise NotFound(f"model {request.name!r} is not served here (serving {info.model or 'nothing'})")
        return pb.ModelMetadataResponse(
            name=info.model,
            versions=[str(info.version)],
            platform=PLATFORM,
            inputs=[
                Tensor(name="text", datatype="BYTES", shape=[-1]),
                Tensor(name="labels", datatype="BYTES", shape=[-1]),
            ],
            outputs=[
                Tensor(name="probabilities", datatype="FP32", shape=[-1, -1]),
                Tensor(name="label", datatype="BYTES", shape=[-1]),
            ],
        )

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        inputs = decode_inputs(request)
        if "text" not in inputs:
            raise InvalidInput("ModelInfer needs a BYTES input named 'text'")
        labels = inputs.get("labels") or split(param(request, "labels"))
        answer = self.host.classify(
            inputs["text"], labels, param(request, "template"), request.model_name, request.model_version
        )
        wanted = [o.name for o in request.outputs] or list(OUTPUTS)
        return encode_outputs(request, answer, wanted)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, list[str]]:
    """Every input as a list of strings; BYTES only, from the raw contents or the typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw input contents for {len(request.inputs)} inputs")
    out = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {tensor.name!r} must be BYTES, not {tensor.datatype}")
        items = unpack_bytes(raw[i]) if raw else list(tensor.contents.bytes_contents)
        if len(items) != int(np.prod(tensor.shape)):
            raise InvalidInput(
                f"input {tensor.name!r} has {len(items)} elements for shape {list(tensor.shape)}"
            )
        try:
            out[tensor.name] = [item.decode("utf-8") for item in items]
        except UnicodeDecodeError as e:
            raise InvalidInput(f"input {tensor.name!r} is not UTF-8: {e}") from None
    return out


def encode_outputs(
    request: pb.ModelInferRequest, answer: Classification, wanted: list[str]
) -> pb.ModelInferResponse:
    unknown = sorted(set(wanted) - set(OUTPUTS))
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
    labels = list(answer.results[0].probabilities)
    rows = [[s.probabilities[label] for label in labels] for s in answer.results]
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=str(answer.version), id=request.id
    )
    response.parameters["version"].string_param = str(answer.version)
    response.parameters["labels"].string_param = ",".join(labels)
    for name in wanted:
        if name == "probabilities":
            shape, data = [len(rows), len(labels)], np.asarray(rows, dtype="<f4").tobytes()
            response.outputs.add(name=name, datatype="FP32", shape=shape)
        else:
            data = pack_bytes(s.label.encode() for s in answer.results)
            response.outputs.add(name=name, datatype="BYTES", shape=[len(rows)])
        response.raw_output_contents.append(data)
    return response


def unpack_bytes(raw: bytes) -> list[bytes]:
    """The protocol's BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput("truncated BYTES tensor")
        (n,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + n > len(raw):
            raise InvalidInput("truncated BYTES tensor")
        items.append(raw[offset + 4 : offset + 4 + n])
        offset += 4 + n
    return items


def pack_bytes(items: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def param(request: pb.ModelInferRequest, name: str) -> str:
    return request.parameters[name].string_param if name in request.parameters else ""


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
