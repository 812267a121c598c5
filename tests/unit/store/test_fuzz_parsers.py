"""Fuzz targets for every parser a user's bytes reach: any input is a valid result or a clean llmk error,
never another exception. `make test` runs each briefly; `make fuzz` runs them long (LLMK_FUZZ_EXAMPLES)."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmk.cli.context import split_ref
from llmk.domain.versions import CommitInfo
from llmk.errors import InvalidInput, LlmkError, NotFound
from llmk.platform.tensor_stream import DTYPES, from_chunks
from llmk.v1.common_pb2 import TensorChunk
from services.store.adapters.gguf import read_header
from services.store.adapters.objects import check_safetensors_header, read_safetensors
from services.store.usecases.store import Store

FUZZ = settings(
    max_examples=int(os.environ.get("LLMK_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_HEADER = 1 << 16
STREAM_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "input"


def clean(call: Callable[[], object], *allowed: type[LlmkError]) -> object:
    """The call's result, or None when it raised one of the `allowed` llmk errors (anything else fails)."""
    try:
        return call()
    except allowed:
        return None


def safetensors_like() -> st.SearchStrategy[bytes]:
    """Random bytes, and files whose 8-byte length and JSON header are close to valid."""
    header = st.dictionaries(
        st.text(max_size=8),
        st.one_of(
            st.fixed_dictionaries(
                {
                    "dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "X"]),
                    "shape": st.lists(st.integers(-2, 5), max_size=3),
                    "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3),
                }
            ),
            st.integers(),
            st.text(max_size=4),
        ),
        max_size=3,
    ).map(lambda h: json.dumps(h).encode())
    framed = st.tuples(header, st.binary(max_size=64), st.integers(-8, 8)).map(
        lambda t: struct.pack("<Q", max(0, len(t[0]) + t[2])) + t[0] + t[1]
    )
    return st.one_of(st.binary(max_size=256), framed)


@FUZZ
@given(data=safetensors_like())
def test_safetensors_reader(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    clean(lambda: check_safetensors_header(scratch, MAX_HEADER), InvalidInput)
    tensors = clean(lambda: read_safetensors(scratch, MAX_HEADER), InvalidInput)
    assert tensors is None or all(isinstance(t, torch.Tensor) for t in tensors.values())  # type: ignore[attr-defined]


def gguf_like() -> st.SearchStrategy[bytes]:
    """Random bytes, and GGUF prefixes (magic, version, counts) followed by random or near-valid entries."""
    string = st.binary(max_size=12).map(lambda b: struct.pack("<Q", len(b)) + b)
    kv = st.tuples(string, st.integers(0, 13), st.binary(max_size=16)).map(
        lambda t: t[0] + struct.pack("<I", t[1]) + t[2]
    )
    prefix = st.tuples(
        st.sampled_from([2, 3, 1, 99]), st.integers(0, 4), st.integers(0, 4) | st.just(2**63)
    ).map(lambda t: b"GGUF" + struct.pack("<IQQ", *t))
    body = st.lists(kv | st.binary(max_size=24), max_size=4).map(b"".join)
    return st.one_of(st.binary(max_size=128), st.tuples(prefix, body).map(b"".join))


@FUZZ
@given(data=gguf_like())
def test_gguf_header_reader(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    clean(lambda: read_header(scratch), InvalidInput)


def chunks() -> st.SearchStrategy[list[TensorChunk]]:
    chunk = st.builds(
        TensorChunk,
        name=st.sampled_from(["a", "b", ""]),
        dtype=st.sampled_from([*DTYPES, "complex64", ""]),
        shape=st.lists(st.integers(-3, 40) | st.just(2**40), max_size=4),
        offset=st.integers(0, 64) | st.just(2**62),
        total_bytes=st.integers(0, 256) | st.just(2**62),
        data=st.binary(max_size=64),
    )
    return st.lists(chunk, max_size=5)


@FUZZ
@given(stream=chunks())
@example(stream=[TensorChunk(name="a", dtype="float32", shape=[2**40, 2**40, 0])])  # found: numel overflow
@example(stream=[TensorChunk(name="a", dtype="uint8", shape=[1] * 100, total_bytes=1, data=b"x")])
def test_commit_stream_decoder(stream: list[TensorChunk]) -> None:
    tensors = clean(lambda: from_chunks(stream, STREAM_LIMIT), InvalidInput)
    if tensors is None:
        return
    for t in tensors.values():  # type: ignore[attr-defined]
        assert t.numel() * t.element_size() <= STREAM_LIMIT


@pytest.fixture(scope="module")
def one_model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    from llmk.bootstrap import Deployment
    from llmk.config import Settings

    store = Deployment(
        Settings(_env_file=None, home=tmp_path_factory.mktemp("home"), database_url="")
    ).local_store()
    store.create_model("m", {"w": torch.ones(2)}, {}, {}, CommitInfo())
    store.tag("m", "v1", "main")
    yield store
    store.catalog.engine.dispose()


REF_TEXT = (
    st.text(max_size=40)
    | st.from_regex(r"m@[0-9²٣]{0,30}", fullmatch=True)
    | st.sampled_from(
        ["m", "m@", "@", "m@main", "m@v1", "m@1", "m@0", "m@-1", "m@9223372036854775808", "m@ 1", "m@1.0"]
    )
)


@FUZZ
@given(text=REF_TEXT)
def test_ref_parser(one_model_store: Store, text: str) -> None:
    parsed = clean(lambda: split_ref(text), InvalidInput)
    if parsed is None:
        return
    model, ref = parsed  # type: ignore[misc]
    version = clean(lambda: one_model_store.resolve(model, ref), NotFound, InvalidInput)
    assert version is None or version == 1
