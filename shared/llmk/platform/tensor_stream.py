"""Tensors as streams of at most `chunk_bytes` gRPC chunks, and back, with one copy each way."""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from concurrent.futures import Future
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from google.protobuf.message import DecodeError

from llmk.errors import Corrupt, InvalidInput, ResourceExhausted
from llmk.v1 import common_pb2

DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float32",
        "float16",
        "bfloat16",
        "float64",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
    )
}


MAX_DIMS = 32
DATA_FIELD = 6  # TensorChunk.data
DATA_KEY = bytes([DATA_FIELD << 3 | 2])  # its key: field number, wire type 2 (length-delimited)
FIXED = {1: 8, 5: 4}  # sizes of the fixed-width wire types
GROUP = {3: 1, 4: -1}  # start and end of a group
COPY_THREADS = 2
PARALLEL_BYTES = 256 << 10  # smaller chunks are copied inline: a thread hand-off costs more than they do
IN_FLIGHT = 8  # chunks received and waiting to be copied
M = TypeVar("M")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _pieces(
    tensors: Mapping[str, torch.Tensor], chunk_bytes: int
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """The fields of each chunk and a view of its data: a tensor's bytes in order, at most `chunk_bytes` each;
    the first chunk of a tensor declares its shape."""
    for name, t in tensors.items():
        raw = t.detach().contiguous().view(-1).view(torch.uint8).numpy()  # bytes view, no copy
        total, dtype, offset = raw.nbytes, dtype_name(t.dtype), 0
        while True:
            end = min(offset + chunk_bytes, total)
            fields = {
                "name": name,
                "dtype": dtype,
                "shape": list(t.shape) if offset == 0 else [],
                "offset": offset,
                "total_bytes": total,
            }
            yield fields, raw[offset:end]
            offset = end
            if offset >= total:
                break


def to_chunks(tensors: Mapping[str, torch.Tensor], chunk_bytes: int) -> Iterator[common_pb2.TensorChunk]:
    """One chunk per message (downloads, and streams of older clients)."""
    for fields, data in _pieces(tensors, chunk_bytes):
        yield common_pb2.TensorChunk(**fields, data=data.tobytes())


def encoded_chunks(tensors: Mapping[str, torch.Tensor], chunk_bytes: int) -> Iterator[bytes]:
    """Serialized TensorChunk messages, byte for byte what `to_chunks(...)`'s SerializeToString gives, with
    the data copied once (a message would copy it three times: tobytes, into the message, out of it). At
    line rate those copies are what a fetch over gRPC spends its time on; a response serializer of None
    sends these bytes as they are."""
    for fields, data in _pieces(tensors, chunk_bytes):
        head = common_pb2.TensorChunk(**fields).SerializeToString()
        if not data.size:  # proto3 leaves an empty field out
            yield head
            continue
        yield b"".join((head, DATA_KEY, _varint_bytes(data.size), data.data))


class Chunk(NamedTuple):
    """A TensorChunk as `decode_chunk` reads it: `data` is a view into the received message, not a copy."""

    name: str
    dtype: str
    shape: list[int]
    offset: int
    total_bytes: int
    data: memoryview


def decode_chunk(message: bytes) -> Chunk:
    """A serialized TensorChunk from any protobuf writer (fields in any order, repeated, unknown ones
    skipped); everything but `data` is parsed by protobuf itself. Raises Corrupt on a malformed message."""
    view, pos, head, data, depth = memoryview(message), 0, bytearray(), memoryview(b""), 0
    try:
        while pos < len(view):
            start = pos
            key, pos = _varint(view, pos)
            kind = key & 7
            if kind == 0:
                pos = _varint(view, pos)[1]
            elif kind in FIXED:
                pos += FIXED[kind]
            elif kind in GROUP:  # an unknown group's bounds (no writer sends them; protobuf skips them)
                depth += GROUP[kind]
            elif kind == 2:
                size, pos = _varint(view, pos)
                if key >> 3 == DATA_FIELD and not depth and pos + size <= len(view):
                    data, pos = view[pos : pos + size], pos + size
                    continue
                pos += size
            else:
                raise Corrupt(f"TensorChunk: unknown wire type {kind}")
            if pos > len(view):
                raise Corrupt("TensorChunk: message ends inside a field")
            head += view[start:pos]
        m = common_pb2.TensorChunk.FromString(bytes(head))
    except (IndexError, DecodeError) as e:
        raise Corrupt(f"TensorChunk: malformed message ({e or 'ends inside a number'})") from e
    return Chunk(m.name, m.dtype, list(m.shape), m.offset, m.total_bytes, data)


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    """The base-128 number at `pos` and the position after it."""
    value = shift = 0
    while shift < 64:
        b = view[pos]
        value, pos, shift = value | (b & 0x7F) << shift, pos + 1, shift + 7
        if b < 0x80:
            return value, pos
    raise Corrupt("TensorChunk: a number longer than 10 bytes")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def packed(tensors: Mapping[str, torch.Tensor], chunk_bytes: int, message: Callable[[], M]) -> Iterator[M]:
    """`message()`s (CommitRequest, StepsChunk) whose `chunks` hold consecutive chunks of the tensors, at most
    `chunk_bytes` of data per message (a bigger chunk alone). Chunks are added to the message in place:
    protobuf copies a sub-message assigned to a field, which cost more than the bytes' own transfer."""
    out, size, count = message(), 0, 0
    for fields, data in _pieces(tensors, chunk_bytes):
        if count and size + data.size > chunk_bytes:
            yield out
            out, size, count = message(), 0, 0
        out.chunks.chunks.add(**fields, data=data.tobytes())  # type: ignore[attr-defined]
        size, count = size + data.size, count + 1
    if count:
        yield out


def chunks_in(messages: Iterable[Any], stream: str) -> Iterator[common_pb2.TensorChunk]:
    """The tensor chunks of a stream's messages after its header, one chunk or several per message."""
    for m in messages:
        item = m.WhichOneof("item")
        if item == "chunk":
            yield m.chunk
        elif item == "chunks":
            yield from m.chunks.chunks
        else:
            raise InvalidInput(f"a {stream} stream has one header, then tensor chunks only")


def from_chunks(
    chunks: Iterable[common_pb2.TensorChunk | Chunk], max_total_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """Reassemble tensors: every declared byte must arrive, in order, once; anything else is an error.

    A buffer is allocated from what a first chunk declares, so declarations are bounded (by
    `max_total_bytes`) before any allocation: a small message cannot make the receiver reserve terabytes.
    """
    buffers: dict[str, torch.Tensor] = {}
    meta: dict[str, tuple[torch.dtype, list[int]]] = {}
    arrays: dict[str, np.ndarray] = {}  # numpy views of the buffers: one copy per chunk
    arrived: dict[str, int] = {}
    declared = 0
    with _Copies() as copies:
        for c in chunks:
            if c.name not in buffers:
                dtype, shape, size = _declared(c)
                declared += size
                if max_total_bytes is not None and declared > max_total_bytes:
                    raise ResourceExhausted(f"stream declares more than the {max_total_bytes}-byte limit")
                buffers[c.name] = torch.empty(size, dtype=torch.uint8)
                arrays[c.name] = buffers[c.name].numpy()
                meta[c.name], arrived[c.name] = (dtype, shape), 0
            data = c.data  # a protobuf message makes a new bytes object at each read of it
            start, end = c.offset, c.offset + len(data)
            if start != arrived[c.name] or end > arrays[c.name].size:
                raise InvalidInput(
                    f"{c.name}: chunk of bytes {start}..{end} does not follow byte {arrived[c.name]} "
                    f"of the declared {arrays[c.name].size}"
                )
            copies.put(arrays[c.name][start:end], data)
            arrived[c.name] = end
    short = [
        f"{n} ({arrived[n]} of {buffers[n].numel()} bytes)"
        for n in buffers
        if arrived[n] < buffers[n].numel()
    ]
    if short:
        raise InvalidInput(f"stream ended before every declared byte arrived: {', '.join(short[:5])}")
    return {n: buffers[n].view(meta[n][0]).reshape(meta[n][1]) for n in buffers}


class _Copies:
    """Copies chunks into their tensors, the big ones on COPY_THREADS threads while the stream is read.

    Most of a big copy's time is paging in the tensor's new memory (on the CI VM, about as long as receiving
    the bytes); numpy copies without the GIL, so two threads page in two chunks at once. At most IN_FLIGHT
    chunks wait, so a fast stream cannot pile up received messages. Leaving waits for every copy."""

    def __init__(self) -> None:
        self.room = threading.BoundedSemaphore(IN_FLIGHT)
        self.pending: list[Future[None]] = []

    def put(self, target: np.ndarray, data: bytes | memoryview) -> None:
        if len(data) < PARALLEL_BYTES:
            _copy(target, data)
            return
        self.room.acquire()
        try:
            done = _copier(os.getpid()).submit(_copy, target, data)
        except BaseException:
            self.room.release()
            raise
        done.add_done_callback(lambda _: self.room.release())
        self.pending.append(done)

    def __enter__(self) -> _Copies:
        return self

    def __exit__(self, *failed: object) -> None:
        futures.wait(self.pending)
        if failed[0] is None:
            for done in self.pending:
                done.result()  # a copy's own error


def _copy(target: np.ndarray, data: bytes | memoryview) -> None:
    target[:] = np.frombuffer(data, dtype=np.uint8)


@functools.cache
def _copier(pid: int) -> futures.ThreadPoolExecutor:
    """Threads that only copy bytes (numpy, no torch: they start no OpenMP pool); one pool per process, since
    a forked child inherits the pool but not its threads."""
    return futures.ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="llmk-copy")


def _declared(c: common_pb2.TensorChunk | Chunk) -> tuple[torch.dtype, list[int], int]:
    """The dtype, shape and byte size a first chunk declares, checked before anything is allocated."""
    if c.dtype not in DTYPES:
        raise InvalidInput(f"{c.name}: unsupported dtype {c.dtype!r}")
    dtype, shape = DTYPES[c.dtype], list(c.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{c.name}: negative dimension in shape {shape}")
    if len(shape) > MAX_DIMS or math.prod(d for d in shape if d) >= 2**63:  # torch's own limits
        raise InvalidInput(f"{c.name}: shape {shape[: MAX_DIMS + 1]} has too many dimensions or elements")
    size = math.prod(shape) * dtype.itemsize
    if c.offset != 0 or c.total_bytes != size:
        raise InvalidInput(f"{c.name}: first chunk must start at 0 and size {shape} {c.dtype}")
    return dtype, shape, size
