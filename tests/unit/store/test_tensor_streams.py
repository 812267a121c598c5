"""Tensors as gRPC chunks: many small parts travel packed into a few messages, and arrive exactly; chunks
serialized and read by hand are protobuf's own bytes and fields."""

from __future__ import annotations

import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmk.errors import Corrupt, InvalidInput
from llmk.platform.tensor_stream import (
    chunks_in,
    decode_chunk,
    encoded_chunks,
    from_chunks,
    packed,
    to_chunks,
)
from llmk.v1 import common_pb2
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


TENSORS = {
    "w": torch.arange(3000, dtype=torch.float32).reshape(30, 100),  # several chunks
    "b": torch.arange(7, dtype=torch.bfloat16),
    "empty": torch.empty(0, 4),
    "scalar": torch.tensor(2.5),
}


@pytest.mark.parametrize("chunk_bytes", [1, 100, 1 << 20])
def test_chunks_serialized_by_hand_are_the_bytes_protobuf_writes(chunk_bytes: int) -> None:
    by_hand = list(encoded_chunks(TENSORS, chunk_bytes))
    assert by_hand == [m.SerializeToString() for m in to_chunks(TENSORS, chunk_bytes)]
    got = from_chunks(decode_chunk(m) for m in by_hand)
    assert all(torch.equal(got[n], t) and got[n].dtype == t.dtype for n, t in TENSORS.items())


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = common_pb2.TensorChunk(offset=number << 3 | wire).SerializeToString()[1:]  # the varint alone
    if wire == 2:
        return key + common_pb2.TensorChunk(offset=len(payload)).SerializeToString()[1:] + payload
    return key + payload


def test_a_chunk_from_another_writer_reads_the_same_fields_in_any_order() -> None:
    head = common_pb2.TensorChunk(name="x", dtype="uint8", shape=[2, 3], total_bytes=6).SerializeToString()
    unknown = _field(99, 2, b"later field") + _field(98, 5, b"\x00\x00\x80?") + _field(97, 1, bytes(8))
    message = _field(6, 2, b"old") + unknown + _field(6, 2, b"abcdef") + head  # data first, twice: last wins
    assert common_pb2.TensorChunk.FromString(message).data == b"abcdef"
    c = decode_chunk(message)
    assert (c.name, c.dtype, c.shape, c.offset, c.total_bytes, bytes(c.data)) == (
        "x",
        "uint8",
        [2, 3],
        0,
        6,
        b"abcdef",
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
@example(bytes([9 << 3 | 3, 9 << 3 | 4]))  # an empty unknown group: protobuf skips it
@example(bytes([9 << 3 | 3]) + bytes([6 << 3 | 2, 1, 7]) + bytes([9 << 3 | 4]))  # a field 6 inside a group
def test_any_bytes_decode_as_protobuf_reads_them_or_fail_as_corrupt(message: bytes) -> None:
    try:
        expected = common_pb2.TensorChunk.FromString(message)
    except DecodeError:
        expected = None
    try:
        c = decode_chunk(message)
    except Corrupt:
        assert expected is None, "a message protobuf reads must decode"
        return
    assert expected is not None, "a message protobuf refuses must not decode"
    got = (c.name, c.dtype, c.shape, c.offset, c.total_bytes, bytes(c.data))
    assert got == (
        expected.name,
        expected.dtype,
        list(expected.shape),
        expected.offset,
        expected.total_bytes,
        expected.data,
    )


def test_big_chunks_copied_on_threads_arrive_exactly_and_a_bad_one_still_fails() -> None:
    big = {f"t{i}": torch.randn(300_000 + i) for i in range(4)}  # 1.2 MB each, chunks of 300 KB: threaded
    messages = list(encoded_chunks(big, 300 << 10))
    got = from_chunks(decode_chunk(m) for m in messages)
    assert all(torch.equal(got[n], t) for n, t in big.items())
    swapped = [messages[0], messages[2], messages[1], *messages[3:]]  # t0 in the wrong order
    with pytest.raises(InvalidInput, match="does not follow"):
        from_chunks(decode_chunk(m) for m in swapped)
