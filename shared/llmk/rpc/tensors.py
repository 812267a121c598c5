"""Tensors as streams of at most `chunk_bytes` gRPC chunks, and back, with one copy each way."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from llmk.errors import InvalidInput, ResourceExhausted
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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_chunks(tensors: Mapping[str, torch.Tensor], chunk_bytes: int) -> Iterator[common_pb2.TensorChunk]:
    for name, t in tensors.items():
        raw = t.detach().contiguous().view(-1).view(torch.uint8).numpy()  # bytes view, no copy
        total = raw.nbytes
        offset = 0
        while True:
            end = min(offset + chunk_bytes, total)
            yield common_pb2.TensorChunk(
                name=name,
                dtype=dtype_name(t.dtype),
                shape=list(t.shape) if offset == 0 else [],
                offset=offset,
                total_bytes=total,
                data=raw[offset:end].tobytes(),
            )
            offset = end
            if offset >= total:
                break


def packed(chunks: Iterable[common_pb2.TensorChunk], chunk_bytes: int) -> Iterator[common_pb2.TensorChunks]:
    """Consecutive chunks grouped into messages of at most `chunk_bytes` of data (a bigger chunk alone)."""
    batch: list[common_pb2.TensorChunk] = []
    size = 0
    for c in chunks:
        if batch and size + len(c.data) > chunk_bytes:
            yield common_pb2.TensorChunks(chunks=batch)
            batch, size = [], 0
        batch.append(c)
        size += len(c.data)
    if batch:
        yield common_pb2.TensorChunks(chunks=batch)


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
    chunks: Iterable[common_pb2.TensorChunk], max_total_bytes: int | None = None
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
    for c in chunks:
        if c.name not in buffers:
            dtype, shape, size = _declared(c)
            declared += size
            if max_total_bytes is not None and declared > max_total_bytes:
                raise ResourceExhausted(f"stream declares more than the {max_total_bytes}-byte limit")
            buffers[c.name] = torch.empty(size, dtype=torch.uint8)
            arrays[c.name] = buffers[c.name].numpy()
            meta[c.name], arrived[c.name] = (dtype, shape), 0
        start, end = c.offset, c.offset + len(c.data)
        if start != arrived[c.name] or end > arrays[c.name].size:
            raise InvalidInput(
                f"{c.name}: chunk of bytes {start}..{end} does not follow byte {arrived[c.name]} "
                f"of the declared {arrays[c.name].size}"
            )
        arrays[c.name][start:end] = np.frombuffer(c.data, dtype=np.uint8)
        arrived[c.name] = end
    short = [
        f"{n} ({arrived[n]} of {buffers[n].numel()} bytes)"
        for n in buffers
        if arrived[n] < buffers[n].numel()
    ]
    if short:
        raise InvalidInput(f"stream ended before every declared byte arrived: {', '.join(short[:5])}")
    return {n: buffers[n].view(meta[n][0]).reshape(meta[n][1]) for n in buffers}


def _declared(c: common_pb2.TensorChunk) -> tuple[torch.dtype, list[int], int]:
    """The dtype, shape and byte size a first chunk declares, checked before anything is allocated."""
    if c.dtype not in DTYPES:
        raise InvalidInput(f"{c.name}: unsupported dtype {c.dtype!r}")
    dtype, shape = DTYPES[c.dtype], list(c.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{c.name}: negative dimension in shape {shape}")
    if len(shape) > MAX_DIMS or math.prod(d for d in shape if d) >= 2**63:  # torch's own limits
        raise InvalidInput(f"{c.name}: shape {shape[: MAX_DIMS + 1]} has too many dimensions or elements")
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if c.offset != 0 or c.total_bytes != size:
        raise InvalidInput(f"{c.name}: first chunk must start at 0 and size {shape} {c.dtype}")
    return dtype, shape, size
