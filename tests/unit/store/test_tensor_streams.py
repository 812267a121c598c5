"""Tensors as gRPC chunks: many small parts travel packed into a few messages, and arrive exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmk.errors import InvalidInput
from llmk.rpc.tensors import chunks_in, from_chunks, packed
from llmk.v1 import store_pb2 as pb

CHUNK = 1024


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=40))
def test_packed_parts_arrive_exactly_within_the_message_size(sizes: list[int]) -> None:
    tensors = {f"t{i}/values": torch.arange(n, dtype=torch.float32) for i, n in enumerate(sizes)}
    messages = list(packed(tensors, CHUNK, pb.StepsChunk))
    for m in messages:
        assert len(m.chunks.chunks) == 1 or sum(len(c.data) for c in m.chunks.chunks) <= CHUNK
    got = from_chunks(chunks_in(messages, "steps"))
    assert list(got) == list(tensors)
    assert all(torch.equal(got[n], t) for n, t in tensors.items())


def test_a_sparse_version_of_many_tensors_takes_a_few_messages() -> None:
    parts = {f"layer{i}/indices": torch.arange(100, dtype=torch.int32) for i in range(272)}
    messages = list(packed(parts, 64 << 10, pb.CommitRequest))
    assert len(messages) == 2  # 272 parts of 400 bytes each: 108,800 bytes


def test_a_header_among_the_chunks_is_refused() -> None:
    stream = [pb.StepsChunk(header=pb.StepsHeader())]
    with pytest.raises(InvalidInput, match="one header, then tensor chunks only"):
        list(chunks_in(stream, "steps"))
