"""The real SmolLM2 served from the store: built from its stored config, tokenizer files and tensors, it
generates transformers' greedy tokens, and batched classification through the service equals lone calls."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.versions import CommitInfo
from llmk.v1 import inference_pb2 as pb
from llmk.v1 import inference_pb2_grpc
from services.inference.main import Worker, build
from tests.conftest import SmolLM2
from tests.unit.inference.hosting import settings_for
from tests.unit.inference.test_smollm2 import CHATS, HEADLINES, LABELS, TEMPLATE

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(smollm2: SmolLM2, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """SmolLM2 stored the way `llmk store import smollm2` stores it, then served by a worker."""
    settings = settings_for(
        tmp_path_factory.mktemp("smollm2") / "home",
        serve_model="smollm2",
        max_context_tokens=256,
        max_wait_ms=50.0,
        classify_template=TEMPLATE.replace("{prompt}", "{text}"),
    )
    config = smollm2.hf.config.to_dict()
    tensors = {k: v for k, v in smollm2.hf.state_dict().items() if k != "lm_head.weight"}  # tied
    with tempfile.TemporaryDirectory() as tmp:
        smollm2.tokenizer.save_pretrained(tmp)
        files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
    files["config.json"] = json.dumps(config, default=str).encode()
    Deployment(settings).local_store().create_model("smollm2", tensors, config, files, CommitInfo())
    running = build(Deployment(settings))
    running.server.start()
    yield running
    running.stop()


def test_greedy_chat_generation_equals_transformers_generate(worker: Worker, smollm2: SmolLM2) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        for chat in CHATS:
            messages = [pb.ChatMessage(role=m["role"], content=m["content"]) for m in chat]
            *pieces, last = stub.Generate(pb.GenerateRequest(messages=messages, max_tokens=24))
            tokenizer = smollm2.tokenizer
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            prompt = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
            with torch.no_grad():
                expected = smollm2.hf.generate(prompt, do_sample=False, max_new_tokens=24)[
                    0, prompt.shape[1] :
                ]
            assert "".join(p.text for p in pieces) == tokenizer.decode(expected, skip_special_tokens=True)
            assert (last.prompt_tokens, last.completion_tokens) == (prompt.shape[1], len(expected))
            assert last.version == 1


def test_batched_classify_through_the_service_equals_one_at_a_time(worker: Worker) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        def ask(texts: list[str]) -> pb.ClassifyReply:
            return stub.Classify(pb.ClassifyRequest(texts=texts, labels=LABELS))

        alone = [ask([h]) for h in HEADLINES]
        together = ask(HEADLINES)
        with ThreadPoolExecutor(len(HEADLINES)) as pool:
            concurrent = list(pool.map(lambda h: ask([h]), HEADLINES))
    rows = [[r.probabilities[label] for label in LABELS] for reply in alone for r in reply.results]
    for replies in ([together], concurrent):
        got = [[r.probabilities[label] for label in LABELS] for reply in replies for r in reply.results]
        assert [p for row in got for p in row] == pytest.approx([p for row in rows for p in row], abs=1e-4)
    assert [r.label for r in together.results] == [a.results[0].label for a in alone]
    assert worker.host.metrics.count("llmk_inference_batch_size_count") < 2 * len(HEADLINES) + 1
