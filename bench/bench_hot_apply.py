"""Hot apply across processes: a committer commits a 1%-sparse version, and the clock stops at the first
answer a serving worker gives on it.

The store (`llmk serve store`, PostgreSQL metadata) and the worker (`llmk serve inference`, following version
events on RabbitMQ) are separate processes; this process is the committer and the client, over gRPC. The
probe is a one-token answer to a one-word prompt, so the figure is the update's propagation. The worker
sees the store's object directory (LLMK_STORE_OBJECT_DIR), as docker-compose and Kubernetes deploy it.
Goals (issue 8): every tensor p50 < 500 ms and p99 < 1000 ms; the last 4 layers' MLPs p50 < 200 ms.

    python -m bench.bench_hot_apply
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
import torch

from bench.bench_inference import sparse_version
from bench.common import write
from llmk.bootstrap import Deployment
from llmk.cli.processes import TierProcesses
from llmk.config import Settings
from llmk.domain.versions import CommitInfo
from llmk.v1 import inference_pb2, inference_pb2_grpc
from services.store.adapters.importers import load_source

RUNS = 20
AMQP = os.environ.get("LLMK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES = os.environ.get("LLMK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database for this run, dropped at the end."""
    admin_url = POSTGRES.replace("+psycopg", "")
    name = f"llmk_bench_hot_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def served_version(stub: inference_pb2_grpc.InferenceStub) -> int:
    request = inference_pb2.GenerateRequest(prompt="Hi", max_tokens=1)
    *_, last = stub.Generate(request)
    return last.version


def hot_apply(store, stub, tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, list[float]]:
    """Per run, milliseconds: the commit call, and commit start to the first answer on the new version."""
    out: dict[str, list[float]] = {"commit": [], "total": []}
    for i in range(RUNS):
        change = sparse_version(tensors, names, 1000 + i)
        start = time.perf_counter()
        v = store.commit("smollm2", change, info=CommitInfo(message=f"bench 1% sparse {i}"))
        out["commit"].append((time.perf_counter() - start) * 1000)
        while served_version(stub) != v.id:
            pass
        out["total"].append((time.perf_counter() - start) * 1000)
    return out


def rows_for(label: str, ms: dict[str, list[float]], goal: str) -> list[dict]:
    total = sorted(ms["total"])
    p99 = total[min(len(total) - 1, round(0.99 * (len(total) - 1)))]
    return [
        {
            "metric": f"hot apply across processes of a 1%-sparse version ({label}), commit to first answer, "
            "p50, PostgreSQL + RabbitMQ",
            "value": statistics.median(total),
            "unit": "ms",
            "baseline": f"p99 {p99:.0f} ms, min {total[0]:.0f} ms over {len(total)}; the commit call "
            f"itself p50 {statistics.median(ms['commit']):.0f} ms",
            "goal": goal,
        }
    ]


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="llmk-bench-hot-"))
    try:
        rows = measure(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # about 1 GB of objects
    write("hot_apply", rows, "python -m bench.bench_hot_apply")


def measure(home: Path) -> list[dict]:
    imported = load_source("smollm2")
    layers = imported.config["num_hidden_layers"]
    mlps = [
        f"model.layers.{i}.mlp.{p}.weight"
        for i in range(layers - 4, layers)
        for p in ("gate_proj", "up_proj", "down_proj")
    ]
    with fresh_database() as url, TierProcesses(Settings(home=home), home / "logs") as tiers:
        common = {"LLMK_DATABASE_URL": url, "LLMK_BROKER_URL": AMQP, "LLMK_DEVICE": "cpu"}
        address = tiers.start("store", LLMK_HOME=str(home / "store"), **common)
        store = Deployment(Settings(home=home / "client", store_address=address)).store()
        store.create_model("smollm2", imported.tensors, imported.config, imported.files, CommitInfo())
        served = tiers.start(
            "inference",
            LLMK_HOME=str(home / "worker"),
            LLMK_STORE_ADDRESS=address,
            LLMK_STORE_OBJECT_DIR=str(home / "store" / "objects"),  # beside the store, as deployed
            LLMK_SERVE_MODEL="smollm2",
            LLMK_VERSION_POLL_SECONDS="0",
            **common,
        )
        stub = inference_pb2_grpc.InferenceStub(grpc.insecure_channel(served))
        served_version(stub)  # warm
        rows = rows_for("last 4 layers' MLPs", hot_apply(store, stub, imported.tensors, mlps), "p50 < 200 ms")
        every = hot_apply(store, stub, imported.tensors, sorted(imported.tensors))
        rows += rows_for("every tensor", every, "p50 < 500 ms, p99 < 1000 ms")
        store.close()
    return rows


if __name__ == "__main__":
    main()
