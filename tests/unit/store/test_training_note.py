"""Zero-shot honesty: until a version trained by feedback has passed its gate, the task's readers say the
answers are untrained; a new task starts untrained again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from llmk.bootstrap import Deployment
from llmk.domain.deltas import Delta, Kind
from llmk.domain.task_spec import TaskSpec, set_task, training_note
from llmk.domain.versions import CommitInfo
from services.store.usecases.store import Store
from tests.conftest import make_settings

TASK = TaskSpec(labels=("up", "down"), template="{text}\nMove:", max_tokens=8)


def tiny(home: Path) -> Store:
    store = Deployment(make_settings(home)).local_store()
    store.create_model("m", {"w": torch.zeros(4, 2)}, {}, {}, CommitInfo())
    set_task(store, "m", TASK)
    return store


def trained_step(store: Store, metric: float) -> int:
    """A version as an optimizer job commits it to the serving branch: its lineage names the job."""
    entry = Delta(Kind.DENSE, {"diff": torch.ones(4, 2)})
    info = CommitInfo("optimizer", "job step", {"job": "j1", "step": 4, "metric": metric})
    return store.commit("m", {"w": entry}, info=info).id


def test_untrained_until_a_job_version_lands_then_trained_with_its_gate_figure(tmp_path: Path) -> None:
    store = tiny(tmp_path / "home")
    assert training_note(store, "m").startswith("untrained for this task")
    version = trained_step(store, 0.625)
    assert (
        training_note(store, "m")
        == f"trained by feedback: version {version} passed its gate, held-out gate metric 0.625"
    )
    set_task(store, "m", TaskSpec(labels=("a", "b"), template="{text}:"))
    assert training_note(store, "m").startswith("untrained"), "a new task has not been trained yet"


def test_task_show_says_untrained(tmp_path: Path) -> None:
    tiny(tmp_path / "home").catalog.engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env |= {"LLMK_HOME": str(tmp_path / "home"), "PYTHONPATH": "shared:."}
    done = subprocess.run(
        [sys.executable, "-m", "llmk.cli.main", "task", "show", "m", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout)["training"].startswith("untrained for this task")
