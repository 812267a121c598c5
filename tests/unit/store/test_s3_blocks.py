"""The bucket's block reader over an in-memory object: one request per planned run however long, a bounded
read-ahead, every block checked before use, a broken response asked again, and the cache's segment files.
The same reader against a real S3 server: tests/contract/store/test_s3_objects.py."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from llmk.errors import Corrupt, Unavailable
from services.store.adapters import s3_blocks
from services.store.adapters.s3_blocks import BLOCK, SEGMENT, BlockCache, BlockReader, Manifest


class Server:
    """An object served by ranges, recording each request and how far each response was read."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self.data, self.fail_after = data, fail_after
        self.requests: list[tuple[int, int]] = []
        self.position = 0  # the furthest byte any response handed out
        self.open = 0

    def fetch(self, start: int, end: int) -> Body:
        self.requests.append((start, end))
        return Body(self, start, end)


class Body:
    def __init__(self, server: Server, start: int, end: int):
        self.server, self.at, self.end = server, start, end
        server.open += 1

    def read(self, n: int) -> bytes:
        s = self.server
        if s.fail_after is not None and self.at >= s.fail_after:
            s.fail_after = None  # once: the retry gets through
            raise Unavailable("S3 endpoint http://x does not answer (reset): check LLMK_S3_ENDPOINT")
        data = s.data[self.at : min(self.at + n, self.end)]
        self.at += len(data)
        s.position = max(s.position, self.at)
        return data

    def close(self) -> None:
        self.server.open -= 1


def an_object(blocks: int) -> tuple[bytes, Manifest]:
    data = bytes(range(256)) * (blocks * BLOCK // 256) + b"tail"  # the last block is short
    sha = hashlib.sha256(data).hexdigest()
    return data, Manifest.of_bytes(sha, data)


def read_all(reader: BlockReader, data: bytes, piece: int) -> None:
    """Reads the object in `piece`-sized tensors, as a fetch does, checking every byte."""
    reader.plan([(0, len(data))])
    for start in range(0, len(data), piece):
        assert reader.read(start, start + piece) == data[start : start + piece]


def test_a_planned_read_is_one_request_however_long(tmp_path: Path) -> None:
    data, manifest = an_object(3 * SEGMENT)
    server = Server(data)
    read_all(BlockReader(manifest, server.fetch, None), data, piece=3 * BLOCK + 17)
    assert server.requests == [(0, len(data))]


def test_the_read_ahead_stays_within_its_bound_of_a_slow_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_blocks, "AHEAD", 8 * BLOCK)
    monkeypatch.setattr(s3_blocks, "SEGMENT", 4)
    data, manifest = an_object(64)
    server = Server(data)
    reader = BlockReader(manifest, server.fetch, None)
    reader.plan([(0, len(data))])
    for i in range(0, 40, 4):
        assert reader.read(i * BLOCK, (i + 1) * BLOCK) == data[i * BLOCK : (i + 1) * BLOCK]
        time.sleep(0.02)  # the download runs on meanwhile, as far as it may
        assert server.position <= (i + 8 + 1) * BLOCK  # never more than AHEAD past the reader
    reader.close()


def test_a_damaged_block_is_refused_and_the_ones_before_it_are_served() -> None:
    data, manifest = an_object(40)
    damaged = bytearray(data)
    damaged[20 * BLOCK + 5] ^= 1
    reader = BlockReader(manifest, Server(bytes(damaged)).fetch, None)
    reader.plan([(0, len(data))])
    assert reader.read(0, 20 * BLOCK) == data[: 20 * BLOCK]
    with pytest.raises(Corrupt, match="block 20"):
        reader.read(20 * BLOCK, 21 * BLOCK)


def test_a_truncated_object_is_refused() -> None:
    data, manifest = an_object(12)
    reader = BlockReader(manifest, Server(data[: 7 * BLOCK + 10]).fetch, None)
    reader.plan([(0, len(data))])
    with pytest.raises(Corrupt, match="shorter"):
        reader.read(0, len(data))


def test_a_response_that_breaks_midway_is_asked_again_from_where_it_stopped() -> None:
    data, manifest = an_object(40)
    server = Server(data, fail_after=17 * BLOCK)
    read_all(BlockReader(manifest, server.fetch, None), data, piece=BLOCK + 3)
    assert [start for start, _ in server.requests] == [0, 17 * BLOCK]


def test_a_server_that_stays_down_raises_its_error() -> None:
    data, manifest = an_object(10)

    def down(start: int, end: int) -> Body:
        raise Unavailable("S3 endpoint http://x does not answer: check LLMK_S3_ENDPOINT")

    with pytest.raises(Unavailable, match="LLMK_S3_ENDPOINT"):
        BlockReader(manifest, down, None).read(0, len(data))


def test_the_rest_of_an_object_is_asked_for_whole() -> None:
    """Servers that copy each range out of the object (moto) answer a whole GET far sooner: when a run
    reaches the end and skips at most 1% of the object, it starts at byte 0 and the skipped blocks are
    read past."""
    data, manifest = an_object(120)
    server = Server(data)
    reader = BlockReader(manifest, server.fetch, None)
    assert reader.read(0, 10) == data[:10]  # a header
    read_all(reader, data, piece=2 * BLOCK + 1)
    assert server.requests == [(0, BLOCK), (0, len(data))]


def test_closing_a_reader_stops_its_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_blocks, "AHEAD", 4 * BLOCK)
    monkeypatch.setattr(s3_blocks, "SEGMENT", 4)
    data, manifest = an_object(64)
    server = Server(data)
    reader = BlockReader(manifest, server.fetch, None)
    reader.plan([(0, len(data))])
    reader.read(0, BLOCK)
    reader.close()
    deadline = time.monotonic() + 10
    while server.open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.open == 0  # the response is closed, its connection given back
    assert server.position < len(data)
    assert not [t for t in threading.enumerate() if t.name.startswith("llmk-s3-read")]


def test_whole_segments_are_cached_as_one_file_and_read_back_without_a_request(tmp_path: Path) -> None:
    data, manifest = an_object(2 * SEGMENT + 3)
    cache = BlockCache(tmp_path / "cache", 1 << 30)
    read_all(BlockReader(manifest, Server(data).fetch, cache), data, piece=5 * BLOCK)
    names = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert names == ["s0", "s1", "s2"]  # the object's last, short segment too
    again = Server(data)
    read_all(BlockReader(manifest, again.fetch, BlockCache(tmp_path / "cache", 1 << 30)), data, piece=BLOCK)
    assert again.requests == []


def test_a_damaged_cache_file_costs_only_its_block(tmp_path: Path) -> None:
    data, manifest = an_object(SEGMENT)
    cache = BlockCache(tmp_path / "cache", 1 << 30)
    read_all(BlockReader(manifest, Server(data).fetch, cache), data, piece=BLOCK)
    [segment] = [p for p in (tmp_path / "cache").rglob("s0")]
    raw = bytearray(segment.read_bytes())
    raw[9 * BLOCK + 1] ^= 1
    segment.write_bytes(raw)
    again = Server(data)
    read_all(BlockReader(manifest, again.fetch, BlockCache(tmp_path / "cache", 1 << 30)), data, piece=BLOCK)
    assert again.requests == [(9 * BLOCK, 10 * BLOCK)]  # the damaged block alone, checked again


def test_the_cache_never_holds_more_than_its_limit(tmp_path: Path) -> None:
    data, manifest = an_object(3 * SEGMENT)
    limit = 5 * BLOCK
    cache = BlockCache(tmp_path / "cache", limit)
    sizes: list[int] = []
    put = cache.put

    def watched(sha: str, name: str, *parts: s3_blocks.Buffer) -> None:
        put(sha, name, *parts)
        sizes.append(sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file()))

    cache.put = watched  # type: ignore[method-assign]
    read_all(BlockReader(manifest, Server(data).fetch, cache), data, piece=7 * BLOCK)
    assert sizes
    assert max(sizes) <= limit
