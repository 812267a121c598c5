"""Sampling parameters are checked where a request enters (finite, in range), and a sequence whose sampling
fails anyway fails alone: the other sequences of its decode step go on."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmk.bootstrap import Deployment
from llmk.errors import InvalidInput
from llmk.v1 import inference_pb2 as pb
from llmk.v1 import inference_pb2_grpc
from services.inference.engine.generator import Generator, Request, Result
from services.inference.interface import GenerateRequest
from services.inference.main import build

from .conftest import Pair
from .hosting import create_tiny, settings_for

BAD_PARAMS = [
    {"temperature": math.nan},
    {"temperature": math.inf},
    {"temperature": 1e-45},
    {"temperature": -1.0},
    {"top_p": math.nan},
    {"top_p": 1.5},
    {"top_p": -0.5},
    {"top_k": -1},
]


@pytest.fixture
def generator(tiny_llama: Pair, byte_tokenizer: Any) -> Iterator[Generator]:
    with Generator(tiny_llama.ours, byte_tokenizer, max_seq_len=128, eos_token_ids=[]) as g:
        yield g


@pytest.mark.parametrize("params", BAD_PARAMS, ids=str)
def test_the_generator_refuses_bad_sampling_parameters(generator: Generator, params: dict) -> None:
    with pytest.raises(InvalidInput):
        generator.submit(Request("hi", **params))
    assert generator.waiting_count == generator.active_count == 0


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -math.inf, 1e-45, -1.0])
def test_a_generate_request_refuses_a_bad_temperature(temperature: float) -> None:
    with pytest.raises(InvalidInput, match="temperature"):
        GenerateRequest("hi", temperature=temperature)


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[inference_pb2_grpc.InferenceStub]:
    settings = settings_for(tmp_path / "home", serve_model="tiny")
    create_tiny(Deployment(settings).local_store())
    worker = build(Deployment(settings))
    worker.server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{worker.port}")
    yield inference_pb2_grpc.InferenceStub(channel)
    channel.close()
    worker.stop()


@pytest.mark.parametrize("params", BAD_PARAMS, ids=str)
def test_grpc_refuses_bad_sampling_parameters_as_invalid_argument(
    stub: inference_pb2_grpc.InferenceStub, params: dict
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=4, **params)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=4)))[-1].done


def test_a_sequence_whose_sampling_fails_fails_alone(generator: Generator) -> None:
    with generator.paused():  # all three share their steps
        streams = [generator.submit(Request("abc", max_tokens=8, temperature=0.7, seed=i)) for i in range(3)]
        poisoned = generator._waiting[1].params  # past the checks, as a bug in sampling would be
        object.__setattr__(poisoned, "temperature", math.nan)
    outcomes: list[Any] = []
    for stream in streams:
        try:
            outcomes.append(stream.result())
        except Exception as e:
            outcomes.append(e)
    first, poisoned_outcome, third = outcomes
    assert isinstance(first, Result)
    assert isinstance(third, Result)
    assert first.completion_tokens == third.completion_tokens == 8
    assert isinstance(poisoned_outcome, RuntimeError)
    assert generator.active_count == 0
