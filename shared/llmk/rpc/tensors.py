"""Tensors as streams of at most `chunk_bytes` gRPC chunks, and back, with one copy each way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch

from llmk.errors import InvalidInput
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


def from_chunks(
    chunks: Iterable[common_pb2.TensorChunk], max_total_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """Reassemble; every chunk is checked so a malformed stream is an error, not a crash."""
    buffers: dict[str, torch.Tensor] = {}
    meta: dict[str, tuple[torch.dtype, list[int]]] = {}
    arrays: dict[str, np.ndarray] = {}  # numpy views of the buffers: one copy per chunk
    received = 0
    for c in chunks:
        if c.name not in buffers:
            if c.dtype not in DTYPES:
                raise InvalidInput(f"{c.name}: unsupported dtype {c.dtype!r}")
            dtype, shape = DTYPES[c.dtype], list(c.shape)
            expected = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            if c.offset != 0 or c.total_bytes != expected:
                raise InvalidInput(f"{c.name}: first chunk must start at 0 and size {shape} {c.dtype}")
            received += expected
            if max_total_bytes is not None and received > max_total_bytes:
                raise InvalidInput(f"stream exceeds the {max_total_bytes}-byte limit")
            buffers[c.name] = torch.empty(expected, dtype=torch.uint8)
            arrays[c.name] = buffers[c.name].numpy()
            meta[c.name] = (dtype, shape)
        buf = buffers[c.name]
        end = c.offset + len(c.data)
        if end > buf.numel():
            raise InvalidInput(f"{c.name}: chunk at {c.offset} overruns the tensor's {buf.numel()} bytes")
        arrays[c.name][c.offset : end] = np.frombuffer(c.data, dtype=np.uint8)
    return {n: buffers[n].view(meta[n][0]).reshape(meta[n][1]) for n in buffers}
