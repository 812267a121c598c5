"""The Open Inference Protocol service, reached by the unchanged tritonclient gRPC client (in a process of
its own: see triton_client.py), against a worker serving the tiny model pinned to version 1 of 2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmk.bootstrap import Deployment
from services.inference.main import Worker, build
from tests.unit.inference.hosting import LABELS, TEXTS, create_tiny, settings_for

SCRIPT = Path(__file__).with_name("triton_client.py")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    settings = settings_for(tmp_path_factory.mktemp("oip") / "home", serve_model="tiny@1")
    store = Deployment(settings).local_store()
    create_tiny(store)
    norm = store.fetch("tiny", "1", names=["model.norm.weight"])["model.norm.weight"]
    store.commit_full("tiny", {"model.norm.weight": norm * 2})  # version 2 exists; the worker serves 1
    running = build(Deployment(settings))
    running.server.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def seen(worker: Worker) -> dict[str, Any]:
    """Everything tritonclient saw, from one run of the client script."""
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"127.0.0.1:{worker.port}",
            "tiny",
            json.dumps(TEXTS),
            json.dumps(LABELS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_health_and_metadata(seen: dict[str, Any]) -> None:
    assert seen["live"]
    assert seen["ready"]
    assert seen["server_name"] == "llmk"
    assert seen["model_ready"] == [True, True, False, False]  # any version, 1, not 2, not another model
    assert seen["metadata"] == {
        "name": "tiny",
        "versions": ["1"],
        "inputs": [["text", "BYTES", [-1]], ["labels", "BYTES", [-1]]],
        "outputs": [["probabilities", "FP32", [-1, -1]], ["label", "BYTES", [-1]]],
    }


def test_infer_returns_the_probabilities_labels_and_version_of_the_host(
    seen: dict[str, Any], worker: Worker
) -> None:
    expected = worker.host.classify(TEXTS, LABELS)  # the texts the script sent
    rows = [[s.probabilities[label] for label in LABELS] for s in expected.results]
    assert seen["dtype"] == "float32"
    assert [p for row in seen["probabilities"] for p in row] == pytest.approx(
        [p for r in rows for p in r], abs=1e-5
    )
    assert seen["labels"] == [s.label for s in expected.results]
    assert seen["model_version"] == "1" == seen["pinned_loaded"]
    assert seen["parameters"] == {"version": "1", "labels": ",".join(LABELS)}


def test_default_labels_and_chosen_outputs(seen: dict[str, Any]) -> None:
    assert seen["only_label_probabilities"]
    assert seen["only_label"][0] in LABELS


def test_bad_requests_get_their_status(seen: dict[str, Any]) -> None:
    assert seen["status"] == {
        "unknown model": "StatusCode.NOT_FOUND",
        "unknown version": "StatusCode.NOT_FOUND",
        "pinned, not loaded": "StatusCode.FAILED_PRECONDITION",
        "no text input": "StatusCode.INVALID_ARGUMENT",
        "empty text": "StatusCode.INVALID_ARGUMENT",
        "too many labels": "StatusCode.INVALID_ARGUMENT",
    }
