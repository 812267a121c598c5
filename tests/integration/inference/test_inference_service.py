"""`llmk serve inference` as its own process: the CLI reaches it through LLMK_INFERENCE_ADDRESS, it exposes
Prometheus metrics, and it catches up with a commit made by another process by watching its branch head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from llmk.v1 import inference_pb2, inference_pb2_grpc
from tests.integration.inference.inference_processes import ROOT, ServiceProcess, free_port
from tests.unit.inference.hosting import LABELS, perturbed, settings_for

LLMK = [sys.executable, "-m", "llmk.cli.main"]


def llmk(address: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env.update(LLMK_INFERENCE_ADDRESS=address, LLMK_HOME=str(home), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = f"{ROOT / 'shared'}{os.pathsep}{ROOT}"
    return subprocess.run([*LLMK, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_metrics_and_head_polling_against_a_worker_process(
    tiny_home: tuple[Path, str], service: Callable[..., ServiceProcess]
) -> None:
    home, name = tiny_home
    worker = service(home, name, metrics_port=free_port(), version_poll_seconds=0.2)

    done = llmk(
        worker.address,
        home,
        "classify",
        "--model",
        name,
        "--labels",
        ",".join(LABELS),
        "--json",
        "good",
        "bad",
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["version"] == 1
    assert [r["label"] in LABELS for r in answer["results"]] == [True, True]

    done = llmk(
        worker.address, home, "generate", "--model", f"{name}@1", "--raw", "--max-tokens", "7", "--json", "Hi"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completion_tokens"] == 7

    done = llmk(worker.address, home, "generate", "--model", f"{name}@42", "x")
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr.startswith("llmk: error: ")
    assert len(done.stderr.strip().splitlines()) == 1

    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'llmk_inference_requests_total{outcome="ok",task="classify"} 1.0' in metrics
    assert f'llmk_inference_served_version{{branch="main",model="{name}"}} 1.0' in metrics
    assert "llmk_inference_resident_bytes" in metrics
    assert "llmk_inference_latency_seconds_bucket" in metrics

    # a commit from this process: no in-process event reaches the worker, its head check does
    from llmk.bootstrap import Deployment

    store = Deployment(settings_for(home)).local_store()
    v = store.commit_full(name, perturbed(store, name, ["model.norm.weight"], 1))
    with grpc.insecure_channel(worker.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        deadline = time.monotonic() + 30
        while stub.Info(inference_pb2.InfoRequest()).version != v.id:
            assert time.monotonic() < deadline, "the worker never served the new version"
            time.sleep(0.1)
    done = llmk(worker.address, home, "classify", "--model", f"{name}@{v.id}", "--json", "x")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == v.id
