"""A client beside the store (LLMK_STORE_OBJECT_DIR): the store names the files, the client reads them.

What it adds to the shared contract (which runs every store test over this client too): no bytes cross
gRPC, a file damaged after the store checked it is never served, and a folder it cannot read from costs
only speed (the bytes are streamed instead)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.versions import CommitInfo
from llmk.errors import Corrupt
from services.store.adapters.objects import ObjectStore
from services.store.rpc.client import GrpcStoreClient
from tests.contract.store.contract_support import NORM, assert_same_tensors, flip_in_place, sparse

MODEL = "tiny"


@pytest.fixture
def beside(settings: Settings, grpc_server: Callable, llama_tiny) -> tuple[GrpcStoreClient, dict, list]:
    """A client reading the store's files, its expected tensors, and a log of the streamed fetches."""
    handle = grpc_server(settings)
    client = Deployment(
        handle.settings.model_copy(
            update={"store_address": handle.address, "store_object_dir": settings.objects_path}
        )
    ).store()
    assert isinstance(client, GrpcStoreClient)
    client.create_model(MODEL, llama_tiny.tensors, llama_tiny.config, llama_tiny.files, CommitInfo())
    streamed: list[object] = []
    stream = client._fetch_stream
    client._fetch_stream = lambda request, **kw: streamed.append(request) or stream(request, **kw)  # type: ignore[method-assign]
    yield client, dict(llama_tiny.tensors), streamed
    client.close()


def test_a_fetch_reads_the_files_and_streams_no_bytes(beside) -> None:
    client, tensors, streamed = beside
    client.commit(MODEL, {NORM: sparse([0, 5], [1.0, -2.0])})
    expected = dict(tensors)
    expected[NORM] = tensors[NORM].clone()
    expected[NORM][[0, 5]] += torch.tensor([1.0, -2.0])
    assert_same_tensors(client.fetch(MODEL), expected)
    assert_same_tensors(client.fetch(MODEL, names=[NORM]), {NORM: expected[NORM]})
    assert streamed == []


def test_steps_are_read_from_the_files_and_stream_no_bytes(beside) -> None:
    client, _, _ = beside
    first = client.version(MODEL).id
    fetched: list[object] = []
    stream = client.stub.FetchSteps
    client.stub.FetchSteps = lambda request, **kw: fetched.append(request) or stream(request, **kw)
    v = client.commit(MODEL, {NORM: sparse([3], [0.5])})
    (step,) = client.steps(MODEL, first, v.id) or []
    assert step.version == v.id
    assert torch.equal(step.entries[NORM].parts["indices"], torch.tensor([3]))
    assert fetched == []


def test_a_file_damaged_after_the_store_checked_it_is_never_served(beside, settings: Settings) -> None:
    client, _, _ = beside
    client.fetch(MODEL)  # the store has checked every file
    base = client.version(MODEL).entries[0].object
    flip_in_place(settings.objects_path / base[:2] / base[2:])
    with pytest.raises(Corrupt, match="checksum"):
        client.fetch(MODEL)


def test_files_other_than_those_the_store_checked_are_hashed_before_use(
    beside, settings: Settings, tmp_path: Path
) -> None:
    """A copy of the folder (other inodes): the store's check does not cover it, so the client hashes each
    file; a damaged copy is refused and the store's own bytes are streamed instead."""
    client, tensors, streamed = beside
    copy = tmp_path / "copy"
    shutil.copytree(settings.objects_path, copy)
    client.objects = ObjectStore(copy, readonly=True)
    assert_same_tensors(client.fetch(MODEL), tensors)
    assert streamed == []
    base = client.version(MODEL).entries[0].object
    flip_in_place(copy / base[:2] / base[2:])
    client.objects = ObjectStore(copy, readonly=True)  # a new process: nothing checked yet
    assert_same_tensors(client.fetch(MODEL), tensors)
    assert len(streamed) == 1


def test_a_folder_without_the_files_costs_only_speed(beside, tmp_path: Path) -> None:
    client, tensors, streamed = beside
    client.objects = ObjectStore(tmp_path / "elsewhere", readonly=True)
    assert_same_tensors(client.fetch(MODEL), tensors)
    assert len(streamed) == 1


def test_a_read_only_folder_is_only_read(tmp_path: Path) -> None:
    ObjectStore(tmp_path, readonly=True)
    assert list(tmp_path.iterdir()) == []
