"""`llmk train` fine-tunes from a CSV file in embedded mode and prints the versions it committed;
`llmk jobs` lists and shows jobs."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmk.bootstrap import Deployment
from llmk.cli.main import app
from llmk.config import Settings
from llmk.errors import InvalidInput
from services.store.adapters.importers import load_source


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMK_HOME", str(tmp_path))
    monkeypatch.setenv("LLMK_BROKER_URL", "memory://")
    monkeypatch.setenv("LLMK_OPTIMIZER_QUEUE", f"optimizer-cli-{uuid.uuid4().hex[:8]}")
    store = Deployment(Settings()).store()
    imported = load_source("synthetic:llama-tiny")
    store.create_model("tiny", imported.tensors, imported.config, imported.files)
    store.close()
    return tmp_path


def write_csv(path: Path, labels: list[str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([f"is {i} odd?", label] for i, label in enumerate(labels))
    return path


def train(data: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", "tiny", "--task", "classification", "--labels", "no,yes", "--data", str(data),
        "--steps", "2", "--batch-size", "4", "--holdout", "4", "--topk", "0.05", "--lr", "0.01", *extra,
    ]  # fmt: skip


def test_train_prints_the_committed_versions_and_jobs_lists_them(home: Path) -> None:
    data = write_csv(home / "data.csv", ["0", "1"] * 8)  # numeric labels index --labels
    result = CliRunner().invoke(app, train(data, "--json"))
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "completed"
    assert [c["step"] for c in job["commits"]] == [1, 2]
    assert all(c["version"] and c["metric"] is not None for c in job["commits"])

    listed = CliRunner().invoke(app, ["jobs", "--json"])
    assert listed.exit_code == 0
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    shown = CliRunner().invoke(app, ["jobs", job["id"]])
    assert shown.exit_code == 0
    assert "held-out metric" in shown.stdout


def test_train_refuses_a_label_outside_the_set(home: Path) -> None:
    data = write_csv(home / "bad.csv", ["yes", "no", "maybe"] * 4)
    result = CliRunner().invoke(app, train(data))
    assert isinstance(result.exception, InvalidInput)
    assert "label 'maybe', which is not in the task's label set" in str(result.exception)
    [failed] = json.loads(CliRunner().invoke(app, ["jobs", "--json"]).stdout)
    assert failed["status"] == "failed"
    assert "maybe" in failed["error"]
