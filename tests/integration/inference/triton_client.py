"""Calls an Open Inference Protocol server with the unchanged tritonclient and prints what came back as JSON.

Run as a script in its own process: tritonclient registers the same `inference.*` protobuf symbols as
llmk.oip, and one process cannot import both. Usage: python triton_client.py HOST:PORT MODEL TEXTS LABELS
(TEXTS and LABELS as JSON lists).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def text_input(name: str, values: list[str]) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_))
    return tensor


def status(call: Any) -> str:
    try:
        call()
    except InferenceServerException as e:
        return str(e.status())
    return "OK"


def main(address: str, model: str, texts: list[str], labels: list[str]) -> dict[str, Any]:
    client = triton.InferenceServerClient(address)
    meta = client.get_model_metadata(model)
    outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")]
    result = client.infer(model, [text_input("text", texts), text_input("labels", labels)], outputs=outputs)
    only_label = client.infer(
        model, [text_input("text", ["fine"])], outputs=[triton.InferRequestedOutput("label")]
    )
    response = result.get_response()

    def infer(name: str = model, version: str = "", inputs: tuple = (("text", ["x"]),)) -> Any:
        return client.infer(name, [text_input(n, v) for n, v in inputs], model_version=version)

    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": [client.is_model_ready(model, v) for v in ("", "1", "2")]
        + [client.is_model_ready("other")],
        "server_name": client.get_server_metadata().name,
        "metadata": {
            "name": meta.name,
            "versions": list(meta.versions),
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in meta.outputs],
        },
        "probabilities": result.as_numpy("probabilities").tolist(),
        "dtype": str(result.as_numpy("probabilities").dtype),
        "labels": [b.decode() for b in result.as_numpy("label")],
        "model_version": response.model_version,
        "parameters": {k: v.string_param for k, v in response.parameters.items()},
        "only_label": [b.decode() for b in only_label.as_numpy("label")],
        "only_label_probabilities": only_label.as_numpy("probabilities") is None,
        "pinned_loaded": infer(version="1").get_response().model_version,
        "status": {
            "unknown model": status(lambda: infer(name="other")),
            "unknown version": status(lambda: infer(version="99")),
            "pinned, not loaded": status(lambda: infer(version="2")),
            "no text input": status(lambda: infer(inputs=(("prompt", ["x"]),))),
            "empty text": status(lambda: infer(inputs=(("text", [""]),))),
            "too many labels": status(
                lambda: infer(inputs=(("text", ["x"]), ("labels", [str(i) for i in range(200)])))
            ),
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]))))
