"""llmk.v1.Inference over real gRPC: batched answers equal lone ones, text streams as produced, and each
bad request gets its status while the worker keeps serving."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmk.bootstrap import Deployment
from llmk.v1 import inference_pb2 as pb
from llmk.v1 import inference_pb2_grpc
from services.inference.main import Worker, build
from tests.unit.inference.hosting import LABELS, TEXTS, create_tiny, settings_for


@dataclass
class Running:
    worker: Worker
    stub: inference_pb2_grpc.InferenceStub
    channel: grpc.Channel


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Factory: a worker serving the tiny model on a free port, with settings overrides."""
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        settings = settings_for(tmp_path / "home", serve_model="tiny", **overrides)
        create_tiny(Deployment(settings).local_store())
        worker = build(Deployment(settings))
        worker.server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{worker.port}")
        started.append(Running(worker, inference_pb2_grpc.InferenceStub(channel), channel))
        return started[-1]

    yield start
    for running in started:
        running.channel.close()
        running.worker.stop()


def probabilities(*replies: pb.ClassifyReply) -> list[float]:
    return [r.probabilities[label] for reply in replies for r in reply.results for label in LABELS]


def test_batched_classify_equals_one_at_a_time(serve: Callable[..., Running]) -> None:
    running = serve(max_wait_ms=50.0)
    alone = [running.stub.Classify(pb.ClassifyRequest(texts=[t], labels=LABELS)) for t in TEXTS]
    together = running.stub.Classify(pb.ClassifyRequest(texts=TEXTS, labels=LABELS))
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        concurrent = list(
            pool.map(lambda t: running.stub.Classify(pb.ClassifyRequest(texts=[t], labels=LABELS)), TEXTS)
        )
    expected = probabilities(*alone)
    assert probabilities(together) == pytest.approx(expected, abs=1e-5)
    assert probabilities(*concurrent) == pytest.approx(expected, abs=1e-5)
    assert {r.version for r in [*alone, together, *concurrent]} == {1}
    assert [r.results[0].label for r in alone] == [r.label for r in together.results]
    metrics = running.worker.host.metrics
    batches = metrics.count("llmk_inference_batch_size_count")
    assert metrics.count("llmk_inference_batch_size_sum") == 3 * len(TEXTS)
    assert batches < 2 * len(TEXTS) + 1  # the concurrent callers shared forward passes


def test_generate_streams_text_then_a_summary(serve: Callable[..., Running]) -> None:
    running = serve()
    chunks = list(running.stub.Generate(pb.GenerateRequest(prompt="The market", max_tokens=24)))
    *pieces, last = chunks
    assert len(pieces) >= 2
    assert all(not c.done and c.text for c in pieces)
    assert last.done
    assert (last.finish_reason, last.completion_tokens, last.prompt_tokens) == ("length", 24, 10)
    assert last.version == 1
    chat = list(
        running.stub.Generate(pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="hi")]))
    )
    assert chat[-1].prompt_tokens == len("<user>hi\n<assistant>")
    assert chat[-1].completion_tokens <= 64


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


BAD = [
    ("empty prompt", lambda s: s.Generate(pb.GenerateRequest(prompt="")), "INVALID_ARGUMENT"),
    ("oversized prompt", lambda s: s.Generate(pb.GenerateRequest(prompt="y" * 300)), "INVALID_ARGUMENT"),
    (
        "max tokens over the limit",
        lambda s: s.Generate(pb.GenerateRequest(prompt="y", max_tokens=51)),
        "INVALID_ARGUMENT",
    ),
    ("empty text", lambda s: s.Classify(pb.ClassifyRequest(texts=[""], labels=LABELS)), "INVALID_ARGUMENT"),
    (
        "oversized text",
        lambda s: s.Classify(pb.ClassifyRequest(texts=["y" * 300], labels=LABELS)),
        "INVALID_ARGUMENT",
    ),
    (
        "too many labels",
        lambda s: s.Classify(pb.ClassifyRequest(texts=["y"], labels=list("abcde"))),
        "INVALID_ARGUMENT",
    ),
    ("unknown model", lambda s: s.Classify(pb.ClassifyRequest(model="nope", texts=["y"])), "NOT_FOUND"),
    ("unknown version", lambda s: s.Generate(pb.GenerateRequest(prompt="y", version="99")), "NOT_FOUND"),
    (
        "pinned, not loaded",
        lambda s: s.Classify(pb.ClassifyRequest(texts=["y"], version="2")),
        "FAILED_PRECONDITION",
    ),
    ("load unknown model", lambda s: s.Load(pb.LoadRequest(model="nope")), "NOT_FOUND"),
]


@pytest.mark.parametrize(("call", "status"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_get_their_status(
    serve: Callable[..., Running], call: Callable[..., Any], status: str
) -> None:
    running = serve(max_new_tokens=50, max_prompt_tokens=200, max_labels=4)
    if status == "FAILED_PRECONDITION":  # version 2 exists in the store, but this worker serves a tag
        store = running.worker.host.store
        store.tag("tiny", "v1", "1")
        running.stub.Load(pb.LoadRequest(model="tiny", ref="v1"))
        store.commit_full(
            "tiny",
            {
                "model.norm.weight": store.fetch("tiny", "1", names=["model.norm.weight"])[
                    "model.norm.weight"
                ]
                * 2
            },
        )
    assert code_of(lambda: call(running.stub)) == getattr(grpc.StatusCode, status)
    assert running.stub.Classify(pb.ClassifyRequest(texts=["still fine"], labels=LABELS)).version == 1


def test_a_burst_beyond_the_queue_is_resource_exhausted(serve: Callable[..., Running]) -> None:
    running = serve(max_queue=2, max_sequences=1, max_wait_ms=0.0)
    served = running.worker.host._served
    assert served is not None

    def burst(n: int, call: Callable[[], Any]) -> list[grpc.StatusCode]:
        with ThreadPoolExecutor(n) as pool:
            calls = [pool.submit(code_of, call) for _ in range(n)]
            time.sleep(0.5)  # every call has arrived: queued or refused
            release()
            return [c.result() for c in calls]

    served.batcher.lock.acquire()  # the batch taken first blocks; two more queue up
    release = served.batcher.lock.release
    codes = burst(8, lambda: running.stub.Classify(pb.ClassifyRequest(texts=["x"])))
    assert (codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED), codes.count(grpc.StatusCode.OK)) == (5, 3)

    served.generator.pause()  # nothing is admitted; two requests wait
    release = served.generator.resume
    codes = burst(6, lambda: running.stub.Generate(pb.GenerateRequest(prompt="x", max_tokens=2)))
    assert (codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED), codes.count(grpc.StatusCode.OK)) == (4, 2)


def test_a_client_that_disconnects_mid_stream_frees_its_sequence(serve: Callable[..., Running]) -> None:
    running = serve(max_context_tokens=2048)
    generator = running.worker.host._served.generator  # type: ignore[union-attr]
    call = running.stub.Generate(pb.GenerateRequest(prompt="The market", max_tokens=1000))
    first = next(call)
    assert first.text
    assert generator.active_count == 1
    call.cancel()
    deadline = time.monotonic() + 5
    while generator.active_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert generator.active_count == 0
    metrics = running.worker.host.metrics
    assert metrics.count("llmk_inference_requests_total", task="generate", outcome="cancelled") == 1
    assert metrics.count("llmk_inference_tokens_total", kind="completion") == 0  # it never finished


def test_info_load_and_unload_need_the_token_when_one_is_set(serve: Callable[..., Running]) -> None:
    running = serve(auth_token="s3cret")
    info = running.stub.Info(pb.InfoRequest())
    assert (info.model, info.version, info.branch, info.device, info.dtype) == (
        "tiny",
        1,
        "main",
        "cpu",
        "float32",
    )
    assert info.resident_bytes == info.total_bytes > 0
    assert info.update_error == ""
    assert (
        code_of(lambda: running.stub.Load(pb.LoadRequest(model="tiny", ref="1")))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    token = [("authorization", "Bearer s3cret")]
    loaded = running.stub.Load(pb.LoadRequest(model="tiny", ref="1"), metadata=token)
    assert (loaded.version, loaded.branch) == (1, "")
    assert running.stub.Unload(pb.UnloadRequest(), metadata=token).model == ""
    assert (
        code_of(lambda: running.stub.Classify(pb.ClassifyRequest(texts=["x"])))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_load_options_name_what_the_engine_applies(serve: Callable[..., Running]) -> None:
    """A worker loads without options unless asked; `none` overrides LLMK_LOAD_OPTIONS."""
    running = serve()
    assert list(running.stub.Load(pb.LoadRequest(model="tiny", options=["none"])).options) == []


def test_a_running_generation_blocks_nothing_else(serve: Callable[..., Running]) -> None:
    running = serve()
    stream = running.stub.Generate(pb.GenerateRequest(prompt="long", max_tokens=300))
    next(stream)
    reply = running.stub.Classify(pb.ClassifyRequest(texts=["quick"], labels=LABELS), timeout=10)
    assert reply.version == 1
    assert list(stream)[-1].completion_tokens == 300
