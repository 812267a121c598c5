"""What only a bucket can get wrong: bad settings, parts and uploads, ranged reads, the worker's cache, a
server that restarts. Every setting a user can get wrong fails at open with one line naming it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from llmk.errors import AlreadyExists, LlmkError, NotFound, Unauthenticated, Unavailable
from services.store.adapters.importers import load_source
from tests.s3_server import LockedServer, S3Server, free_port, objects_settings

LAYER = "model.layers.1."


def settings(tmp_path: Path, server: S3Server, bucket: str = "", **overrides: Any) -> Settings:
    bucket = bucket or server.bucket(f"llmk-{uuid.uuid4().hex[:12]}")
    return Settings(home=tmp_path / "home", **objects_settings(tmp_path, server, bucket, **overrides))


def one_line(e: pytest.ExceptionInfo[LlmkError], setting: str) -> None:
    assert "\n" not in str(e.value)
    assert setting in str(e.value)


# bad settings


def test_a_missing_bucket_names_the_url_setting(tmp_path: Path, s3_server: S3Server) -> None:
    with pytest.raises(NotFound) as e:
        Deployment(settings(tmp_path, s3_server, bucket="no-such-bucket")).objects()
    one_line(e, "LLMK_OBJECTS_URL")


def test_an_endpoint_that_does_not_answer_names_the_endpoint_setting(
    tmp_path: Path, s3_server: S3Server
) -> None:
    s = settings(tmp_path, s3_server).model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(Unavailable) as e:
        Deployment(s).objects()
    one_line(e, "LLMK_S3_ENDPOINT")


def test_wrong_credentials_name_the_credential_settings(
    tmp_path: Path, locked_s3: LockedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    s = Settings(home=tmp_path, objects_url=f"s3://{locked_s3.bucket}/x", s3_endpoint=locked_s3.endpoint)
    with pytest.raises(Unauthenticated) as e:
        Deployment(s).objects()
    one_line(e, "AWS_ACCESS_KEY_ID")


def test_a_bucket_without_write_permission_fails_at_open_and_reads_still_work(
    tmp_path: Path, locked_s3: LockedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in locked_s3.reader.items():
        monkeypatch.setenv(k, v)
    s = Settings(home=tmp_path, objects_url=f"s3://{locked_s3.bucket}/x", s3_endpoint=locked_s3.endpoint)
    with pytest.raises(Unauthenticated, match="denied permission to write") as e:
        Deployment(s).objects()
    one_line(e, "LLMK_OBJECTS_URL")
    Deployment(s).objects(readonly=True)  # a worker only reads: that is allowed


def test_a_key_holding_other_content_is_refused_and_left_alone(tmp_path: Path, s3_server: S3Server) -> None:
    s = settings(tmp_path, s3_server)
    objects: Any = Deployment(s).objects()
    sha, _ = objects.put_bytes(b"ours")
    other = Deployment(s.model_copy(update={"objects_url": s.objects_url})).objects()
    key = objects.bucket.key("objects", sha)
    s3_server.client().put_object(Bucket=objects.bucket.where.bucket, Key=key, Body=b"someone else's")
    with pytest.raises(AlreadyExists) as e:
        other.put_bytes(b"ours")
    one_line(e, "LLMK_OBJECTS_URL")
    body = s3_server.client().get_object(Bucket=objects.bucket.where.bucket, Key=key)["Body"].read()
    assert body == b"someone else's"


# uploads


class FailingParts:
    """A client whose second part upload fails, as a network cut halfway through a put would."""

    def __init__(self, client: Any):
        self._client, self.parts = client, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        self.parts += 1
        if self.parts == 2:
            raise ConnectionResetError("cut halfway")
        return self._client.upload_part(**kwargs)


def test_a_put_failing_halfway_leaves_no_object_and_no_open_upload(
    tmp_path: Path, s3_server: S3Server
) -> None:
    objects: Any = Deployment(settings(tmp_path, s3_server, s3_part_bytes=5 << 20)).objects()
    objects.bucket.client = FailingParts(objects.bucket.client)
    big = {"w": torch.randn(3 << 20)}  # 12 MiB: three parts
    with pytest.raises(ConnectionResetError):
        objects.put_tensors(big)
    assert list(objects.listing("objects")) == []
    assert objects.bucket.uploads() == []
    objects.bucket.client = objects.bucket.client._client
    sha, _ = objects.put_tensors(big)  # a retry publishes it whole
    with objects.open_tensors(sha) as f:
        assert torch.equal(f.get_tensor("w"), big["w"])


def test_gc_aborts_an_upload_whose_writer_died(tmp_path: Path, s3_server: S3Server) -> None:
    objects: Any = Deployment(settings(tmp_path, s3_server)).objects()
    objects.start_upload("f" * 64, {"llmk-sha256": "f" * 64})  # and then the writer was killed
    assert len(objects.bucket.uploads()) == 1
    objects.sweep(lambda _: False, 3600.0)
    assert len(objects.bucket.uploads()) == 1  # young: its writer may still be at it
    objects.sweep(lambda _: False, 0.0)
    assert objects.bucket.uploads() == []


# reads


@pytest.fixture
def tiny_in_bucket(tmp_path: Path, s3_server: S3Server) -> Settings:
    s = settings(tmp_path, s3_server)
    tiny = load_source("synthetic:llama-tiny")
    store = Deployment(s).local_store()
    store.create_model("tiny", tiny.tensors, tiny.config, tiny.files, CommitInfo())
    store.catalog.engine.dispose()
    return s


def test_a_store_on_a_bucket_serves_what_was_committed(tiny_in_bucket: Settings) -> None:
    store = Deployment(tiny_in_bucket.model_copy(update={"gc_grace_seconds": 0.0})).local_store()
    tiny = load_source("synthetic:llama-tiny")
    name = "model.norm.weight"
    store.commit("tiny", {name: Delta(Kind.DENSE, {"diff": torch.ones_like(tiny.tensors[name])})})
    fetched = store.fetch("tiny")
    assert torch.equal(fetched[name], tiny.tensors[name] + 1)
    assert all(torch.equal(fetched[k], v) for k, v in tiny.tensors.items() if k != name)
    assert store.gc() == []  # every object is referenced
    store.catalog.engine.dispose()


def test_one_layer_downloads_about_that_layers_bytes(tiny_in_bucket: Settings) -> None:
    store = Deployment(tiny_in_bucket.model_copy(update={"object_cache_bytes": 0})).local_store()
    objects: Any = store.objects
    [sha] = {e.object for e in store.version("tiny", "main").entries}
    layer = store.fetch("tiny", selector=f"{LAYER}*")
    layer_bytes = sum(t.numel() * t.element_size() for t in layer.values())
    objects.downloaded = 0
    store.fetch("tiny", selector=f"{LAYER}*")
    header_and_edges = 3 * 256 * 1024
    assert objects.downloaded <= layer_bytes + header_and_edges
    assert objects.downloaded < objects.size(sha) / 4
    store.catalog.engine.dispose()


def test_a_whole_fetch_downloads_in_a_few_large_requests(tiny_in_bucket: Settings) -> None:
    """A fetch says which tensors it will read, so the bucket sees a few ranged requests, not one a tensor
    (each costs a round trip, and some servers copy the whole object per range)."""
    from services.store.adapters.s3_blocks import WINDOW

    store = Deployment(tiny_in_bucket.model_copy(update={"object_cache_bytes": 0})).local_store()
    objects: Any = store.objects
    ranges: list[str] = []
    objects.bucket.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: ranges.append(params.get("Range", "whole"))
    )
    values = store.fetch("tiny")
    [sha] = {e.object for e in store.version("tiny", "main").entries}
    size = objects.size(sha)
    assert len(values) > 10
    assert len(ranges) <= 3 + size // WINDOW, ranges  # manifest, header, then windows of tensors
    assert objects.downloaded <= size + 64 * 1024  # nothing read twice: the manifest is small
    expected = load_source("synthetic:llama-tiny").tensors
    assert all(torch.equal(values[k], v) for k, v in expected.items())
    store.catalog.engine.dispose()


def test_a_restarted_worker_reads_from_its_cache_without_downloading(tiny_in_bucket: Settings) -> None:
    first = Deployment(tiny_in_bucket).local_store()
    values = first.fetch("tiny")
    restarted = Deployment(tiny_in_bucket).local_store()
    objects: Any = restarted.objects
    assert all(torch.equal(restarted.fetch("tiny")[k], v) for k, v in values.items())
    assert objects.downloaded == 0
    for s in (first, restarted):
        s.catalog.engine.dispose()


def test_the_cache_stays_within_its_size_setting(tiny_in_bucket: Settings) -> None:
    limit = 1 << 20
    store = Deployment(tiny_in_bucket.model_copy(update={"object_cache_bytes": limit})).local_store()
    store.fetch("tiny")
    cached = sum(p.stat().st_size for p in (tiny_in_bucket.cache_path / "objects").rglob("*") if p.is_file())
    assert cached <= limit
    store.catalog.engine.dispose()


def test_a_fetch_survives_the_server_restarting_midway(tiny_in_bucket: Settings, s3_server: S3Server) -> None:
    store = Deployment(tiny_in_bucket.model_copy(update={"object_cache_bytes": 0})).local_store()
    [sha] = {e.object for e in store.version("tiny", "main").entries}
    expected = load_source("synthetic:llama-tiny").tensors
    with store.objects.open_tensors(sha) as f:  # the header is read
        s3_server.restart()
        assert all(torch.equal(f.get_tensor(k), expected[k.removesuffix("/tensor")]) for k in f.keys())
    store.catalog.engine.dispose()


def test_a_remote_client_reads_the_bucket_itself(tiny_in_bucket: Settings, grpc_server: Any) -> None:
    """Through the store service, with the bucket in reach: the store names the objects, the client downloads
    them (checked block by block), and only what it asked for."""
    remote = grpc_server(tiny_in_bucket).client
    remote.objects = Deployment(tiny_in_bucket.model_copy(update={"object_cache_bytes": 0})).objects(
        readonly=True
    )
    expected = load_source("synthetic:llama-tiny").tensors
    fetched = remote.fetch("tiny")
    assert all(torch.equal(fetched[k], v) for k, v in expected.items())
    assert remote.objects.downloaded > 0  # read from the bucket, not streamed
