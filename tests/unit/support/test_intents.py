"""The packaged banking77 intent task: its 77 labels are the shipped data set's categories, as words."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from llmk.domain.intents import banking77_label
from llmk.domain.task_spec import CLASSIFICATION, packaged

DATA = Path(__file__).resolve().parents[3] / "services" / "support" / "data" / "banking77"


def test_banking77_task_labels_are_the_shipped_categories() -> None:
    task = packaged("banking77")
    categories = json.loads((DATA / "categories.json").read_text())
    assert task.kind == CLASSIFICATION
    assert list(task.labels) == [banking77_label(c) for c in categories]
    assert len(task.labels) == 77
    with (DATA / "heldout.csv").open(newline="") as f:
        held_out = list(csv.DictReader(f))
    assert {banking77_label(r["category"]) for r in held_out} <= set(task.labels)
