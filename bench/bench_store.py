"""Store benchmarks on a 135M-parameter model (SmolLM2's shapes), ratios against a baseline.

python -m bench.bench_store
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.common import best_of, touch_all, write
from llmk.adapters.importers import load_source
from llmk.app.store import CommitInfo, Store
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind
from llmk.rpc.store import GrpcStoreClient
from llmk.wiring import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CHAIN = 10
FRACTION = 0.01


def sparse_change(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, Delta]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in tensors.items():
        k = max(1, int(t.numel() * FRACTION))
        idx = torch.randperm(t.numel(), generator=g)[:k].to(torch.int32)
        out[name] = Delta(Kind.SPARSE, {"indices": idx, "values": torch.randn(k, generator=g) * 1e-3})
    return out


def commit_chain(store: Store, tensors: dict[str, torch.Tensor], full: int) -> list[dict[str, Any]]:
    changes = [sparse_change(tensors, i) for i in range(CHAIN)]  # generated outside the timing
    times, added = [], 0
    for i, change in enumerate(changes):
        t0 = time.perf_counter()
        v = store.commit("m", change, info=CommitInfo(message=f"delta {i}"))
        times.append(time.perf_counter() - t0)
        added = sum(e.nbytes for e in v.entries)
    times.sort()
    return [
        {
            "metric": "commit 1%-sparse delta (typed), p50 latency",
            "value": times[len(times) // 2] * 1000,
            "unit": "ms",
            "goal": "< 200 ms",
        },
        {
            "metric": "commit 1%-sparse delta, bytes added / full copy",
            "value": added / full,
            "unit": "ratio",
            "goal": "<= 0.025",
        },
    ]


def materialize(store: Store, flat: Path, nbytes: int) -> list[dict[str, Any]]:
    baseline = best_of(lambda: touch_all(load_file(str(flat))))
    cold = best_of(lambda: touch_all(store.materialize("m")))
    store.cache_chain_length = 8
    touch_all(store.materialize("m"))  # writes the cached materialization
    cached = best_of(lambda: touch_all(store.materialize("m")))
    base = f"load_file {nbytes / baseline / 1e6:.0f} MB/s"
    metric = f"materialize end of {CHAIN}-delta chain"
    return [
        {
            "metric": f"{metric}, chain applied",
            "value": nbytes / cold / 1e6,
            "unit": "MB/s",
            "baseline": base,
            "ratio": round(baseline / cold, 3),
            "goal": "(reported)",
        },
        {
            "metric": f"{metric}, served from cache",
            "value": nbytes / cached / 1e6,
            "unit": "MB/s",
            "baseline": base,
            "ratio": round(baseline / cached, 3),
            "goal": ">= 0.7x (aim 0.9x)",
        },
    ]


def full_commit(store: Store, full: int) -> list[dict[str, Any]]:
    changed = {n: t.clone() for n, t in store.materialize("m").items()}
    for t in changed.values():
        t.view(-1)[:: int(1 / FRACTION)] += 1e-3
    t0 = time.perf_counter()
    v = store.commit_full("m", changed, info=CommitInfo(message="full weights"))
    elapsed = time.perf_counter() - t0
    return [
        {
            "metric": "commit full weights with 1% changed (--from), latency",
            "value": elapsed * 1000,
            "unit": "ms",
            "goal": "(reported)",
        },
        {
            "metric": "commit full weights with 1% changed, bytes added / full copy",
            "value": sum(e.nbytes for e in v.entries) / full,
            "unit": "ratio",
            "goal": "<= 0.025",
        },
    ]


def grpc_fetch(store: Store, settings: Settings, nbytes: int) -> list[dict[str, Any]]:
    """The service runs in its own process, as deployed: client and server do not share a GIL."""
    port = free_port()
    env = {**os.environ, "LLMK_HOME": str(settings.home), "LLMK_LISTEN": f"127.0.0.1:{port}"}
    server = subprocess.Popen([sys.executable, "-m", "services.store.main"], env=env, stdout=subprocess.PIPE)
    client = GrpcStoreClient(f"127.0.0.1:{port}", max_message_bytes=settings.max_message_bytes)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "listening on ..."
        touch_all(client.fetch("m"))  # the service verifies object checksums on first read
        local = best_of(lambda: touch_all(store.materialize("m")))
        remote = best_of(lambda: touch_all(client.fetch("m")))
    finally:
        client.close()
        server.terminate()
        server.wait(10)
    return [
        {
            "metric": "fetch over gRPC (loopback, server process), throughput",
            "value": nbytes / remote / 1e6,
            "unit": "MB/s",
            "baseline": f"local materialize from cache {nbytes / local / 1e6:.0f} MB/s",
            "ratio": round(local / remote, 3),
            "goal": ">= 0.5x",
        }
    ]


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="llmk-bench-"))
    settings = Settings(home=home, listen="127.0.0.1:0", cache_chain_length=10_000)  # no cache until asked
    store = open_store(settings)
    imported = load_source("synthetic:llama-135m")
    store.create_model("m", imported.tensors, imported.config, imported.files, CommitInfo())
    full = sum(t.numel() * t.element_size() for t in imported.tensors.values())
    rows = commit_chain(store, imported.tensors, full)
    flat = home / "flat.safetensors"
    save_file(store.materialize("m"), str(flat))
    rows += materialize(store, flat, flat.stat().st_size)
    rows += grpc_fetch(store, settings, flat.stat().st_size)
    rows += full_commit(store, full)
    write("store", rows, "python -m bench.bench_store")


if __name__ == "__main__":
    main()
