"""The background scrub of `llmk serve store`: a byte flipped in an object file while the service runs is
found within the interval, quarantined (reads then fail as Corrupt, never serve it), logged and counted on
/metrics; SIGTERM stops the service and its scrub cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.versions import CommitInfo
from llmk.errors import Corrupt
from services.store.metrics import Metrics
from services.store.scrubber import Scrubber
from tests.conftest import make_settings
from tests.contract.store.contract_support import flip_in_place

LLMK = str(Path(sys.executable).with_name("llmk"))
DAMAGED = "llmk_store_scrub_damaged_objects_total"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def metric(port: int, name: str) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lines = [line for line in page.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def test_serve_store_scrubs_in_the_background_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Deployment(make_settings(home)).local_store()
    v = store.create_model("m", {"w": torch.arange(64.0).view(8, 8)}, {}, {}, CommitInfo())
    [sha] = {e.object for e in v.entries}
    store.catalog.engine.dispose()
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")} | {
        "LLMK_HOME": str(home),
        "LLMK_LISTEN": "127.0.0.1:0",
        "LLMK_SCRUB_INTERVAL_SECONDS": "0.3",
        "LLMK_METRICS_PORT": str(metrics_port),
    }
    server = subprocess.Popen(
        [LLMK, "serve", "store"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        while "listening on" not in (line := server.stdout.readline()):
            assert line, "the store service exited before listening"
        address = line.split()[-1]
        wait_for(lambda: metric(metrics_port, "llmk_store_scrubs_total") >= 1)
        assert metric(metrics_port, DAMAGED) == 0

        flip_in_place(home / "objects" / sha[:2] / sha[2:])
        wait_for(lambda: metric(metrics_port, DAMAGED) == 1)
        assert (home / "objects" / "quarantine" / sha).exists()
        client = Deployment(make_settings(home, store_address=address)).store()
        with pytest.raises(Corrupt):
            client.fetch("m", str(v.id))
        client.close()
        time.sleep(1)  # more passes: the quarantined object is not found (or counted) again
        assert metric(metrics_port, DAMAGED) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert f"1 damaged object(s) moved to quarantine/ (reads of them fail until restored): {sha[:12]}" in err


def test_the_scrubber_is_off_at_zero_and_stops_between_passes(tmp_path: Path) -> None:
    store = Deployment(make_settings(tmp_path / "home")).local_store()
    off = Scrubber(store, 0).start()
    assert not off._thread.is_alive()
    metrics = Metrics()
    on = Scrubber(store, 0.05, metrics).start()
    wait_for(lambda: metrics.count("llmk_store_scrubs_total") >= 2, timeout=30)
    started = time.monotonic()
    on.stop()
    assert not on._thread.is_alive()
    assert time.monotonic() - started < 5
    store.catalog.engine.dispose()
