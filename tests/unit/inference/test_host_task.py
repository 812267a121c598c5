"""Train and serve agree: a classify with no labels or template scores the model's stored task exactly as
the optimizer's trainer scores it, and a new task version is served without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.task_spec import TaskSpec, require_task, set_task, task_of
from llmk.domain.versions import CommitInfo
from llmk.errors import InvalidInput, NotFound
from services.inference.usecases.host import Host
from services.optimizer.interface import Example
from services.optimizer.usecases.feedback import load_trainer
from services.store.usecases.store import Store

from .hosting import create_tiny, settings_for

TASK = TaskSpec(labels=("up", "down", "flat"), template="Headline: {text}\nMove:", max_tokens=12)
TEXTS = ["Shares jump after record quarter and a raised outlook", "Profit warning", "Board meets"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Host, Store]]:
    settings = settings_for(tmp_path / "home")
    client = Deployment(settings).local_store()
    create_tiny(client)
    set_task(client, "tiny", TASK)
    host = Host(settings, client, Deployment(settings).events())
    host.load("tiny")
    yield host, client
    host.close()


def test_classify_without_labels_scores_the_stored_task_as_the_trainer_does(
    served: tuple[Host, Store],
) -> None:
    host, client = served
    answer = host.classify(TEXTS)
    assert [list(r.probabilities) for r in answer.results] == [list(TASK.labels)] * len(TEXTS)
    trainer = load_trainer(client, "tiny", str(answer.version), task_of(client, "tiny", str(answer.version)))
    with torch.no_grad():
        expected = trainer._label_scores([Example(text=t) for t in TEXTS]).softmax(-1)
    served_probs = torch.tensor([list(r.probabilities.values()) for r in answer.results])
    torch.testing.assert_close(served_probs, expected, atol=1e-4, rtol=1e-4)


def test_a_new_task_version_is_served_without_a_restart(served: tuple[Host, Store]) -> None:
    host, client = served
    version = set_task(client, "tiny", TaskSpec(labels=("bull", "bear"), template="{text} ->"))
    deadline = time.monotonic() + 10
    while host.info().version != version.id and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = host.classify(["Shares jump"])
    assert answer.version == version.id
    assert list(answer.results[0].probabilities) == ["bull", "bear"]
    assert require_task(client, "tiny").labels == ("bull", "bear")
    assert require_task(client, "tiny", "2").labels == TASK.labels  # the older version keeps its task


def test_bad_tasks_are_refused_and_a_model_without_one_says_how_to_set_it(tmp_path: Path) -> None:
    client = Deployment(settings_for(tmp_path / "home")).local_store()
    create_tiny(client)
    with pytest.raises(NotFound, match="llmk task set"):
        require_task(client, "tiny")
    for bad, message in (
        ({"labels": ["a", "a"]}, "labels repeat"),
        ({"labels": ["a", "b"], "template": "no slot"}, "must contain"),
        ({"labels": ["a", "b"], "colour": "red"}, "unknown task field"),
        (["a", "b"], "JSON object"),
    ):
        with pytest.raises(InvalidInput, match=message):
            client.commit("tiny", {}, info=CommitInfo(metadata={"task": bad}))
    assert [v.id for v in client.log("tiny")] == [1]  # nothing half-written
