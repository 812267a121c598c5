"""What only the gRPC transport adds: status codes, the bearer token, message limits, bad streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.deltas import Delta, full
from llmk.domain.versions import part_key
from llmk.errors import Unauthenticated
from llmk.platform.security import message_options
from llmk.platform.tensor_stream import from_chunks, to_chunks
from llmk.v1 import common_pb2, store_pb2_grpc
from llmk.v1 import store_pb2 as pb
from services.store.adapters.importers import Imported
from services.store.rpc.client import GrpcStoreClient
from services.store.usecases.store import Store
from tests.contract.store.contract_support import K1, NORM, Q0, UP0, corrupt_in_place, sparse

MODEL = "tiny"


@pytest.fixture
def served(settings: Settings, grpc_server: Callable, llama_tiny: Imported) -> Iterator[tuple]:
    """A store service holding llama-tiny, a raw stub to it, and a store to inspect its rows."""
    handle = grpc_server(settings)
    t = llama_tiny
    handle.client.create_model(MODEL, t.tensors, t.config, t.files)
    channel = grpc.insecure_channel(handle.address, options=message_options(64 << 20))
    inspect = Deployment(settings).local_store()
    yield handle, store_pb2_grpc.ParameterStoreStub(channel), inspect
    channel.close()
    inspect.catalog.engine.dispose()


def commit_stream(
    entries: dict[str, Delta], parent: int | None = None, chunk_bytes: int = 1 << 20, **header: object
) -> Iterator[pb.CommitRequest]:
    header.setdefault("kinds", {n: d.kind.value for n, d in entries.items()})
    yield pb.CommitRequest(header=pb.CommitHeader(model=MODEL, parent=parent, **header))
    parts = {part_key(n, k): t for n, d in entries.items() for k, t in d.parts.items()}
    for chunk in to_chunks(parts, chunk_bytes):
        yield pb.CommitRequest(chunk=chunk)


def status(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call_to_the_end(call)
    return caught.value.code()


def call_to_the_end(call: Callable[[], object]) -> None:
    """Make the call and read a streamed answer to its end: a streaming call fails only while it is read."""
    result = call()
    if isinstance(result, Iterator):
        list(result)


def history(inspect: Store) -> list[tuple[int, int | None]]:
    return [(v.id, v.parent) for v in inspect.catalog.versions(MODEL)]


def test_a_plain_protobuf_client_reads_the_fetch_stream_the_store_writes_by_hand(served, llama_tiny) -> None:
    _, stub, _ = served
    got = from_chunks(stub.FetchTensors(pb.FetchRequest(model=MODEL)))  # the generated stub's own parsing
    assert sorted(got) == sorted(llama_tiny.tensors)
    assert all(torch.equal(got[n], t) for n, t in llama_tiny.tensors.items())


def test_each_error_class_has_its_status_code(served) -> None:
    handle, stub, inspect = served
    code = grpc.StatusCode
    assert status(lambda: stub.GetVersion(pb.VersionRequest(model="nope"))) == code.NOT_FOUND
    assert status(lambda: stub.FetchTensors(pb.FetchRequest(model=MODEL, ref="999"))) == code.NOT_FOUND
    assert status(lambda: stub.CreateRef(pb.RefRequest(model=MODEL, name="main", kind="branch"))) == (
        code.ALREADY_EXISTS
    )
    stub.Commit(commit_stream({UP0: sparse([0], [1.0])}, parent=1))
    assert status(lambda: stub.Commit(commit_stream({UP0: sparse([1], [1.0])}, parent=1))) == code.ABORTED
    nan = {UP0: sparse([0], [float("nan")])}
    assert status(lambda: stub.Commit(commit_stream(nan))) == code.INVALID_ARGUMENT
    stub.Freeze(pb.FreezeRequest(model=MODEL, patterns=["model.norm"]))
    frozen = {NORM: full(torch.zeros(64))}
    assert status(lambda: stub.Commit(commit_stream(frozen))) == code.PERMISSION_DENIED
    assert [v for v, _ in history(inspect)] == [1, 2]
    sha = inspect.version(MODEL, "1").entries[0].object
    corrupt_in_place(handle.settings.objects_path / sha[:2] / sha[2:])
    assert status(lambda: stub.FetchTensors(pb.FetchRequest(model=MODEL))) == code.DATA_LOSS
    assert status(lambda: stub.Squash(pb.SquashRequest(model=MODEL))) == code.DATA_LOSS
    assert [v for v, _ in history(inspect)] == [1, 2]


BAD_STREAMS = {
    "no header": lambda: iter([pb.CommitRequest(chunk=next(to_chunks({"x": torch.ones(1)}, 64)))]),
    "empty stream": lambda: iter([]),
    "unknown kind": lambda: commit_stream({}, kinds={UP0: "quantized"}),
    "missing part": lambda: commit_stream({}, kinds={UP0: "sparse"}),
    "missing full tensor": lambda: commit_stream({}, kinds={NORM: "full"}, full_weights=True),
    "bad metadata": lambda: commit_stream({UP0: sparse([0], [1.0])}, metadata_json="{not json"),
    "metadata that is a list": lambda: commit_stream({UP0: sparse([0], [1.0])}, metadata_json="[1, 2]"),
    "metadata that is a string": lambda: commit_stream({UP0: sparse([0], [1.0])}, metadata_json='"x"'),
    "unsupported dtype": lambda: iter(
        [
            pb.CommitRequest(header=pb.CommitHeader(model=MODEL, kinds={NORM: "full"})),
            pb.CommitRequest(
                chunk=common_pb2.TensorChunk(
                    name=part_key(NORM, "tensor"), dtype="complex64", shape=[64], total_bytes=512
                )
            ),
        ]
    ),
    "chunk overruns its tensor": lambda: iter(
        [
            pb.CommitRequest(header=pb.CommitHeader(model=MODEL, kinds={NORM: "full"})),
            pb.CommitRequest(
                chunk=common_pb2.TensorChunk(
                    name=part_key(NORM, "tensor"),
                    dtype="float32",
                    shape=[64],
                    total_bytes=256,
                    data=bytes(300),
                )
            ),
        ]
    ),
    "first chunk not at 0": lambda: iter(
        [
            pb.CommitRequest(header=pb.CommitHeader(model=MODEL, kinds={NORM: "full"})),
            pb.CommitRequest(
                chunk=common_pb2.TensorChunk(
                    name=part_key(NORM, "tensor"), dtype="float32", shape=[64], offset=4, total_bytes=256
                )
            ),
        ]
    ),
}


def q0_stream(*chunks: common_pb2.TensorChunk, kinds: dict | None = None) -> Iterator[pb.CommitRequest]:
    """A full (64, 64) float32 entry for Q0 (16384 bytes), sent as the chunks given."""
    yield pb.CommitRequest(header=pb.CommitHeader(model=MODEL, kinds=kinds or {Q0: "full"}))
    for c in chunks:
        yield pb.CommitRequest(chunk=c)


def q0_chunk(offset: int, size: int, name: str = part_key(Q0, "tensor")) -> common_pb2.TensorChunk:
    shape = [64, 64] if offset == 0 else []
    data = bytes([7]) * size
    return common_pb2.TensorChunk(
        name=name, dtype="float32", shape=shape, offset=offset, total_bytes=16384, data=data
    )


BAD_STREAMS |= {
    "a header then no data": lambda: q0_stream(q0_chunk(0, 0)),
    "half of the declared bytes": lambda: q0_stream(q0_chunk(0, 8192)),
    "a gap between chunks": lambda: q0_stream(q0_chunk(0, 4096), q0_chunk(8192, 8192)),
    "a chunk sent twice": lambda: q0_stream(q0_chunk(0, 8192), q0_chunk(0, 8192), q0_chunk(8192, 8192)),
    "bytes after the last": lambda: q0_stream(q0_chunk(0, 16384), q0_chunk(16384, 4)),
    "a part the header does not name": lambda: q0_stream(
        q0_chunk(0, 16384), q0_chunk(0, 16384, part_key(K1, "tensor"))
    ),
    "a second header": lambda: iter([*q0_stream(q0_chunk(0, 16384)), *q0_stream()]),
    "a gap inside one packed message": lambda: iter(
        [
            pb.CommitRequest(header=pb.CommitHeader(model=MODEL, kinds={Q0: "full"})),
            pb.CommitRequest(
                chunks=common_pb2.TensorChunks(chunks=[q0_chunk(0, 4096), q0_chunk(8192, 8192)])
            ),
        ]
    ),
    "packed chunks before the header": lambda: iter(
        [pb.CommitRequest(chunks=common_pb2.TensorChunks(chunks=[q0_chunk(0, 16384)]))]
    ),
    "a negative dimension": lambda: iter(
        [
            pb.CommitRequest(header=pb.CommitHeader(model=MODEL, kinds={NORM: "full"})),
            pb.CommitRequest(
                chunk=common_pb2.TensorChunk(
                    name=part_key(NORM, "tensor"), dtype="float32", shape=[-64, -1], total_bytes=256
                )
            ),
        ]
    ),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_a_malformed_commit_stream_is_invalid_argument(served, case: str) -> None:
    _, stub, inspect = served
    before = history(inspect)
    assert status(lambda: stub.Commit(BAD_STREAMS[case]())) == grpc.StatusCode.INVALID_ARGUMENT
    assert history(inspect) == before


@pytest.mark.parametrize("bad", ["missing tensor", "config not json", "config null"])
def test_a_malformed_create_model_is_invalid_argument(served, bad: str) -> None:
    _, stub, inspect = served
    w = {"w": full(torch.ones(2))}
    requests = {
        "missing tensor": lambda: commit_stream({}, kinds={"w": "full"}, config_json="{}"),
        "config not json": lambda: commit_stream(w, config_json="{nope"),
        "config null": lambda: commit_stream(w, config_json="null"),
    }[bad]
    renamed = (r if r.HasField("chunk") else pb.CommitRequest(header=rename(r.header)) for r in requests())
    assert status(lambda: stub.CreateModel(renamed)) == grpc.StatusCode.INVALID_ARGUMENT
    assert [m.name for m in inspect.models()] == [MODEL]


def rename(header: pb.CommitHeader) -> pb.CommitHeader:
    header.model = "other"
    return header


def test_mutating_calls_need_the_token_and_reads_do_not(settings, grpc_server, llama_tiny) -> None:
    handle = grpc_server(settings.model_copy(update={"auth_token": "s3cret"}))
    owner = handle.client
    t = llama_tiny
    v1 = owner.create_model(MODEL, t.tensors, t.config, t.files)
    anonymous = GrpcStoreClient(handle.address)
    wrong = GrpcStoreClient(handle.address, token="guess")
    try:
        for client in (anonymous, wrong):
            denied = {
                "create_model": lambda c=client: c.create_model("other", {"w": torch.ones(1)}, {}, {}),
                "commit": lambda c=client: c.commit(MODEL, {UP0: sparse([0], [1.0])}),
                "commit_full": lambda c=client: c.commit_full(MODEL, {NORM: torch.zeros(64)}),
                "branch": lambda c=client: c.branch(MODEL, "b"),
                "tag": lambda c=client: c.tag(MODEL, "t"),
                "rollback": lambda c=client: c.rollback(MODEL, "1"),
                "freeze": lambda c=client: c.freeze(MODEL, ["model"]),
                "squash": lambda c=client: c.squash(MODEL),
                "gc": lambda c=client: c.gc(),
            }
            for name, call in denied.items():
                with pytest.raises(Unauthenticated):  # noqa: PT012 - fail() runs only if nothing was raised, naming the call
                    call()
                    pytest.fail(f"{name} went through without the token")
            assert client.version(MODEL).id == v1.id
            assert [v.id for v in client.log(MODEL)] == [v1.id]
            assert client.fetch(MODEL, names=[NORM])[NORM].shape == (64,)
            assert client.diff(MODEL, "main", "main") == []
            assert [s.version for s in client.stats(MODEL)] == [v1.id]
            assert [m.name for m in client.models()] == [MODEL]
            assert client.model(MODEL).frozen == []
        v2 = owner.commit(MODEL, {UP0: sparse([0], [1.0])})
        assert anonymous.version(MODEL).id == v2.id
    finally:
        anonymous.close()
        wrong.close()


def test_an_oversized_message_is_refused_and_commits_nothing(settings, grpc_server, llama_tiny) -> None:
    limit = 1 << 20
    handle = grpc_server(settings.model_copy(update={"max_message_bytes": limit, "chunk_bytes": 256 << 10}))
    t = llama_tiny
    v1 = handle.client.create_model(MODEL, t.tensors, t.config, t.files)  # 12 MiB in 256 KiB chunks
    channel = grpc.insecure_channel(handle.address, options=message_options(64 << 20))
    stub = store_pb2_grpc.ParameterStoreStub(channel)
    big = {"model.big": full(torch.zeros(2 * limit // 4 + 1))}
    inspect = Deployment(handle.settings).local_store()
    try:
        code = status(lambda: stub.Commit(commit_stream(big, chunk_bytes=4 * limit)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [v.id for v in inspect.catalog.versions(MODEL)] == [v1.id]
        v2 = handle.client.commit(MODEL, big)  # the client's own chunks stay under the limit
        assert (
            handle.client.fetch(MODEL, names=["model.big"])["model.big"].numel()
            == big["model.big"].parts["tensor"].numel()
        )
        assert handle.client.version(MODEL).id == v2.id
    finally:
        channel.close()
        inspect.catalog.engine.dispose()


def test_a_declared_size_beyond_the_model_limit_is_refused_before_allocation(served) -> None:
    """100 bytes that declare 4 TiB: refused on the declaration, nothing allocated or written."""
    _, stub, inspect = served
    before, objects = history(inspect), sorted(inspect.objects.list())
    huge = common_pb2.TensorChunk(
        name=part_key(Q0, "tensor"), dtype="float32", shape=[1 << 20, 1 << 20], total_bytes=4 << 40
    )
    assert status(lambda: stub.Commit(q0_stream(huge))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert history(inspect) == before
    assert sorted(inspect.objects.list()) == objects
