"""Objects in an S3-compatible bucket (moto's server on loopback) against a local folder, same run (issue 24).

- Worker cold start: a fresh process builds SmolLM2 from the store and answers one classify request
  (bench.bench_load's worker), objects read from the bucket with an empty block cache, against the same
  worker reading the local object folder. Interleaved, medians of 5 (and the median of the per-round
  ratios). Also a restart whose block cache is warm (LLMK_OBJECT_CACHE_BYTES), which should download nothing.
- One plain ranged GET against one plain whole GET of the same object: what a request costs the server.
- Per-layer fetch: the bytes the S3 server sends for one layer of SmolLM2 (a fresh store, no cache: the block
  manifest and safetensors header included), against that layer's tensor bytes.
- A 1% commit (a sparse delta on every tensor): the bytes sent to the server, against the bytes of the
  objects the commit created.

Bytes are counted on the wire by a loopback TCP proxy in front of the server (HTTP headers included), not
estimated. The machine is shared: the load average is reported beside the timings.

PYTHONPATH=shared:. .venv/bin/python -m bench.bench_s3
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.bench_load import THREADS
from bench.bench_store import free_port, machine_load, sparse_change
from bench.common import write

ROUNDS = 5
LAYER = "model.layers.5."
RANGE = 128 << 20
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    sink = open(log, "wb")  # noqa: SIM115 - the server holds it until it ends
    server = subprocess.Popen(cmd, stdout=sink, stderr=sink)
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        assert server.poll() is None, f"the S3 server died ({server.returncode}): see {log}"
        server.kill()
        server.wait()
        sink.close()


class CountingProxy:
    """A loopback TCP relay to the S3 server that counts every byte each way."""

    def __init__(self, upstream_port: int):
        self.upstream_port, self.up, self.down = upstream_port, 0, 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()  # the client sees a dropped connection, as without the relay
                continue
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, way: str) -> None:
        try:
            while data := source.recv(1 << 20):
                with self._lock:
                    setattr(self, way, getattr(self, way) + len(data))
                sink.sendall(data)
        except OSError:
            pass
        finally:  # pass the end on, as TCP does: the other way may still be talking
            with suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def cold_start(home: Path, env: dict[str, str]) -> float:
    """Seconds from starting a worker process to its first answer (bench.bench_load's child)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.bench_load", "--child", "llmk", str(home)]
    subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - start


def raw_download(endpoint: str, key: str, byte_range: str = "") -> float:
    """Seconds for plain boto3 to read the object (or a range of it) from the same server: what the server
    allows."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    start = time.perf_counter()
    body = client.get_object(Bucket="bench", Key=key, **({"Range": byte_range} if byte_range else {}))["Body"]
    while body.read(8 << 20):
        pass
    return time.perf_counter() - start


def main() -> None:
    from llmk.bootstrap import Deployment
    from llmk.config import Settings
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.importers import load_source
    from services.store.usecases.object_migration import migrate

    load_before = os.getloadavg()[0]
    os.environ.update({k: os.environ.get(k, v) for k, v in CREDENTIALS.items()})
    base_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLMK_")},
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(THREADS),
    }
    log = Path(tempfile.gettempdir()) / "llmk-bench-s3-server.log"
    with tempfile.TemporaryDirectory(prefix="llmk-bench-s3-") as tmp, moto_server(log) as endpoint:
        home = Path(tmp) / "home"
        local = Deployment(Settings(home=home)).local_store()
        imported = load_source("smollm2")
        local.create_model("smollm2", imported.tensors, imported.config, imported.files, CommitInfo())
        url = "s3://bench/llmk"
        Deployment(Settings(home=home)).objects()  # the folder exists
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        in_bucket = Settings(home=home, objects_url=url, s3_endpoint=endpoint)
        migrate(local.catalog, local.objects, Deployment(in_bucket).objects())

        s3_env = {**base_env, "LLMK_OBJECTS_URL": url, "LLMK_S3_ENDPOINT": endpoint}
        times: dict[str, list[float]] = {"folder": [], "bucket": [], "bucket, warm cache": []}
        for _ in range(ROUNDS):
            times["folder"].append(cold_start(home, base_env))
            shutil.rmtree(home / "cache" / "objects", ignore_errors=True)
            times["bucket"].append(cold_start(home, s3_env))
            times["bucket, warm cache"].append(cold_start(home, s3_env))
            print({k: round(v[-1], 2) for k, v in times.items()}, os.getloadavg()[0], flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        [sha] = {e.object for e in local.version("smollm2").entries}
        raw = statistics.median(raw_download(endpoint, f"llmk/objects/{sha}") for _ in range(3))
        # what one ranged GET costs this server: moto copies the whole object out for each
        ranged = statistics.median(
            raw_download(endpoint, f"llmk/objects/{sha}", f"bytes=1-{RANGE}") for _ in range(3)
        )
        load_after_start = os.getloadavg()[0]

        direct = Deployment(in_bucket).objects()  # sizes, read beside the measurement
        whole = sum(direct.size(sha) for sha in {e.object for e in local.version("smollm2").entries})
        proxy = CountingProxy(int(endpoint.rsplit(":", 1)[1]))
        through = in_bucket.model_copy(update={"s3_endpoint": proxy.endpoint, "object_cache_bytes": 0})
        reader = Deployment(through).local_store()
        proxy.reset()
        layer = reader.fetch("smollm2", selector=f"{LAYER}*")
        layer_down = proxy.down
        layer_bytes = sum(t.numel() * t.element_size() for t in layer.values())
        expected = local.fetch("smollm2", selector=f"{LAYER}*")
        assert all(bool((layer[k] == v).all()) for k, v in expected.items()), "the layer differs"

        before = {e.object for e in reader.version("smollm2").entries}
        change = sparse_change(imported.tensors, seed=1)
        proxy.reset()
        v = reader.commit("smollm2", change, info=CommitInfo(message="1% change"))
        commit_up = proxy.up
        created = {e.object for e in v.entries} - before
        object_bytes = sum(direct.size(sha) for sha in created)

    load = f"load average {load_before:.1f} -> {load_after_start:.1f} on {os.cpu_count()} CPUs"
    ratio = med["bucket"] / med["folder"]
    per_round = statistics.median(b / f for b, f in zip(times["bucket"], times["folder"], strict=True))
    rows: list[dict[str, Any]] = [
        {
            "metric": "worker cold start (SmolLM2, to its first answer) with objects in a bucket (moto, "
            "loopback), empty block cache",
            "value": med["bucket"],
            "unit": "s",
            "baseline": f"same worker from the local object folder {med['folder']:.3g} s; median of the "
            f"per-round ratios {per_round:.3g}; runs "
            f"{[round(t, 2) for t in times['bucket']]} vs {[round(t, 2) for t in times['folder']]}; {load}",
            "ratio": round(ratio, 3),
            "goal": f"<= 1.5x: {'met' if ratio <= 1.5 else 'missed'}",
        },
        {
            "metric": "cold start's extra time over the folder / one plain boto3 GET of the whole object",
            "value": med["bucket"] - med["folder"],
            "unit": "s",
            "baseline": f"plain boto3 get_object of the {whole} B object from the same server {raw:.3g} s "
            f"(median of 3): the server's own transfer time",
            "ratio": round((med["bucket"] - med["folder"]) / raw, 3),
            "goal": "(reported)",
        },
        {
            "metric": f"one plain boto3 ranged GET of {RANGE >> 20} MiB / one plain GET of the whole object",
            "value": ranged,
            "unit": "s",
            "baseline": f"whole {whole} B object {raw:.3g} s, same server (medians of 3): on moto a range "
            "costs about a whole object's read, so the reader asks for the rest of an object in one request",
            "ratio": round(ranged / raw, 3),
            "goal": "(reported)",
        },
        {
            "metric": "worker restart with objects in a bucket, block cache warm",
            "value": med["bucket, warm cache"],
            "unit": "s",
            "baseline": f"local object folder {med['folder']:.3g} s",
            "ratio": round(med["bucket, warm cache"] / med["folder"], 3),
            "goal": "(reported)",
        },
        {
            "metric": f"per-layer fetch ({LAYER}*), bytes the S3 server sent / the layer's bytes",
            "value": layer_down,
            "unit": "B",
            "baseline": f"layer {layer_bytes} B of a {whole} B object; "
            "fresh store, no cache, manifest and header included, HTTP headers counted",
            "ratio": round(layer_down / layer_bytes, 4),
            "goal": f"<= 1.1x: {'met' if layer_down <= 1.1 * layer_bytes else 'missed'}",
        },
        {
            "metric": "1% commit (sparse delta on every tensor), bytes sent to the S3 server / object bytes",
            "value": commit_up,
            "unit": "B",
            "baseline": f"{len(created)} new object(s) of {object_bytes} B; HTTP headers counted",
            "ratio": round(commit_up / object_bytes, 4),
            "goal": f"<= 1.1x: {'met' if commit_up <= 1.1 * object_bytes else 'missed'}",
        },
        machine_load(load_before),
    ]
    write("s3", rows, "PYTHONPATH=shared:. .venv/bin/python -m bench.bench_s3")


if __name__ == "__main__":
    main()
