"""The store service's Prometheus metrics: what an operator reads off /metrics after commits, a conflict,
fetches and a damaged object."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.deltas import Delta, Kind
from llmk.errors import Conflict, Corrupt
from tests.conftest import make_settings


def sparse(indices: list[int], values: list[float]) -> Delta:
    return Delta(Kind.SPARSE, {"indices": torch.tensor(indices), "values": torch.tensor(values)})


def test_commits_conflicts_fetches_and_damage_are_counted(tmp_path: Path, llama_tiny) -> None:
    from services.store.main import build
    from services.store.metrics import Metrics
    from services.store.rpc.client import GrpcStoreClient

    settings = make_settings(tmp_path / "home")
    metrics = Metrics()
    server, port = build(Deployment(settings), metrics)
    server.start()
    client = GrpcStoreClient(f"127.0.0.1:{port}")
    try:
        first = client.create_model("m", llama_tiny.tensors, llama_tiny.config, llama_tiny.files)
        name = next(n for n in llama_tiny.tensors if n.endswith("up_proj.weight"))
        second = client.commit("m", {name: sparse([0, 1], [1.0, 2.0])}, "main", first.id)
        with pytest.raises(Conflict):
            client.commit("m", {name: sparse([2], [1.0])}, "main", first.id)
        fetched = client.fetch("m")
        sha = next(e.object for e in client.version("m", str(first.id)).entries if e.name == name)
        (settings.objects_path / sha[:2] / sha[2:]).write_bytes(b"not what was stored")
        with pytest.raises(Corrupt):
            client.fetch("m", str(first.id), names=[name])

        assert metrics.count("llmk_store_commits_total", kind="create") == 1
        assert metrics.count("llmk_store_commits_total", kind="delta") == 1
        assert metrics.count("llmk_store_conflicts_total") == 1
        assert metrics.count("llmk_store_requests_total", method="Commit", outcome="Conflict") == 1
        written = sum(e.nbytes for v in (first, second) for e in client.version("m", str(v.id)).entries)
        assert metrics.count("llmk_store_written_bytes_total") == written
        streamed = sum(t.numel() * t.element_size() for t in fetched.values())
        assert metrics.count("llmk_store_fetched_bytes_total") >= streamed
        assert metrics.count("llmk_store_fetch_seconds_total") > 0
        assert metrics.count("llmk_store_verification_failures_total") == 1

        metrics_port = metrics.serve(0)
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "llmk_store_conflicts_total 1.0" in page
    finally:
        client.close()
        server.stop(0).wait()
