"""The object-store port's guarantees, run against the local folder and an S3 bucket (moto's server), so
the two adapters cannot drift: written once, verified on read, damaged objects quarantined, gc and
discards that never take an object something references."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.errors import Corrupt
from tests.contract.store.contract_support import flip_in_place
from tests.s3_server import S3Server, objects_settings

Damage = Callable[[str], None]


@pytest.fixture(params=["folder", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Damage]]:
    """(objects, damage): an adapter and a way to flip bytes of one stored object behind its back."""
    if request.param == "folder":
        objects: Any = Deployment(Settings(home=tmp_path / "home")).objects()
        yield objects, lambda sha: flip_in_place(objects.path(sha))
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.bucket(f"port-{uuid.uuid4().hex[:12]}")
    objects = Deployment(
        Settings(home=tmp_path / "home", **objects_settings(tmp_path, server, bucket))
    ).objects()

    def damage(sha: str) -> None:
        key, client = objects.bucket.key("objects", sha), server.client()
        data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata={"llmk-sha256": sha})
        objects._forget(sha)  # this process's memory of it: the test plays another process reading it

    yield objects, damage


PACK = {"w": torch.randn(64, 32), "indices": torch.tensor([3, 9, 700, 7000]), "b": torch.ones(5)}


def read_all(objects: Any, sha: str) -> dict[str, torch.Tensor]:
    with objects.open_tensors(sha) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_tensors_and_bytes_read_back_as_written(backend: tuple[Any, Damage]) -> None:
    objects, _ = backend
    sha, size = objects.put_tensors(PACK, {"note": "hello"})
    back = read_all(objects, sha)
    assert sorted(back) == sorted(PACK)
    assert all(torch.equal(back[k], PACK[k]) for k in PACK)
    with objects.open_tensors(sha) as f:
        assert f.metadata()["note"] == "hello"
        assert f.get_slice("w").get_shape() == [64, 32]
    assert objects.size(sha) == size
    blob, _ = objects.put_bytes(b"tokenizer bytes")
    assert objects.get_bytes(blob) == b"tokenizer bytes"


def test_the_same_content_written_concurrently_is_one_object_and_no_error(
    backend: tuple[Any, Damage],
) -> None:
    objects, _ = backend
    with ThreadPoolExecutor(4) as pool:
        shas = set(pool.map(lambda _: objects.put_tensors(PACK)[0], range(8)))
    assert len(shas) == 1
    assert objects.sweep(lambda s: s in shas, 0.0, dry_run=True) == []


def test_a_damaged_object_is_refused_and_scrub_quarantines_it(backend: tuple[Any, Damage]) -> None:
    objects, damage = backend
    sha, _ = objects.put_tensors(PACK)
    good, _ = objects.put_bytes(b"intact")
    damage(sha)
    with pytest.raises(Corrupt, match="failed its checksum"):
        read_all(objects, sha)
    assert objects.scrub() == [sha]
    with pytest.raises(Corrupt, match="missing"):
        objects.get_bytes(sha)
    assert objects.get_bytes(good) == b"intact"


def read_then_check(objects: Any, sha: str) -> None:
    with objects.open_unchecked(sha) as f:
        for key in f.keys():
            f.get_tensor(key)
    objects.check(sha)


def test_an_object_read_before_its_check_is_still_refused(backend: tuple[Any, Damage]) -> None:
    """open_unchecked lets a reader overlap reading with hashing (a commit's diff); the check that must
    follow still refuses a damaged object (a folder hashes the file, a bucket each block it downloads)."""
    objects, damage = backend
    sha, _ = objects.put_tensors(PACK)
    with objects.open_unchecked(sha) as f:
        assert torch.equal(f.get_tensor("w"), PACK["w"])
    objects.check(sha)
    damage(sha)
    with pytest.raises(Corrupt, match="failed its checksum"):
        read_then_check(objects, sha)


def test_gc_takes_only_unkept_objects_past_the_grace_period(backend: tuple[Any, Damage]) -> None:
    objects, _ = backend
    kept, _ = objects.put_bytes(b"referenced")
    loose, _ = objects.put_bytes(b"unreferenced")
    assert objects.sweep(lambda s: s == kept, 3600.0) == []  # too young
    assert objects.sweep(lambda s: s == kept, 0.0) == [loose]
    assert objects.get_bytes(kept) == b"referenced"
    with pytest.raises(Corrupt):
        objects.get_bytes(loose)


def test_a_refused_write_is_discarded_unless_referenced_or_republished(backend: tuple[Any, Damage]) -> None:
    objects, _ = backend
    sha, _ = objects.put_bytes(b"refused")
    assert not objects.discard(sha, lambda: True)  # referenced meanwhile: kept (and forgotten)
    assert objects.get_bytes(sha) == b"refused"
    mine, _ = objects.put_bytes(b"mine alone")
    assert objects.discard(mine, lambda: False)
    with pytest.raises(Corrupt):
        objects.get_bytes(mine)
    shared, _ = objects.put_bytes(b"written twice")
    objects.put_bytes(b"written twice")  # another writer publishes the same content
    assert not objects.discard(shared, lambda: False)
    assert objects.get_bytes(shared) == b"written twice"


def test_remove_keeps_an_object_that_becomes_referenced(backend: tuple[Any, Damage]) -> None:
    objects, _ = backend
    sha, _ = objects.put_bytes(b"cache entry")
    answers = iter([False, True])  # unreferenced when checked first, referenced once moved aside
    assert not objects.remove(sha, lambda: next(answers))
    assert objects.get_bytes(sha) == b"cache entry"
