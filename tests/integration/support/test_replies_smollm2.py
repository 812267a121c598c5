"""Thumbs teach the real SmolLM2-135M: `llmk feedback add` with rated Bitext replies (the agent's reference
up-rated, another intent's reply down-rated) commits gated versions after which the up-rated replies are
more likely and the down-rated ones less likely than under the imported version."""

from __future__ import annotations

import csv
import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmk.bootstrap import Deployment
from llmk.cli.main import app
from llmk.config import Settings
from services.optimizer.interface import DOWN, UP, Example, reply_example
from services.optimizer.usecases.replies import load_reply_trainer
from services.support.usecases.learning import HELD_OUT
from tests.conftest import smollm2_folder

pytestmark = [pytest.mark.smollm2, pytest.mark.slow, pytest.mark.timeout(900)]
UPS, DOWNS, CHARS = 16, 8, 240  # replies cut to their first CHARS characters: enough text, fewer tokens


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    smollm2_folder()  # fails in CI, skips on a laptop, when the weights are missing
    monkeypatch.setenv("LLMK_HOME", str(tmp_path))
    monkeypatch.setenv("LLMK_BROKER_URL", "memory://")
    monkeypatch.setenv("LLMK_OPTIMIZER_QUEUE", f"optimizer-smol-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def rated_rows() -> list[tuple[str, str, str]]:
    with HELD_OUT.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[: UPS + DOWNS]
    out = [(r["instruction"], r["response"][:CHARS], UP) for r in rows[:UPS]]
    wrong = [r["response"][:CHARS] for r in rows[UPS:]][::-1]  # another conversation's reply: unhelpful here
    return out + [(r["instruction"], w, DOWN) for r, w in zip(rows[UPS:], wrong, strict=True)]


def examples(rows: list[tuple[str, str, str]]) -> list[Example]:
    # evaluate() reads up-rated replies: every reply re-labelled up, to read its likelihood
    return [replace(reply_example([("user", p)], r, rating), rating=UP) for p, r, rating in rows]


def test_thumbs_raise_up_rated_replies_and_lower_down_rated_ones(home: Path) -> None:
    cli = CliRunner()
    imported = cli.invoke(app, ["store", "import", "smollm2", "--model", "smol", "--json"])
    assert imported.exit_code == 0, imported.output
    rows = rated_rows()
    rows = rows[:4] + [r for pair in zip(rows[4:UPS], rows[UPS:] * 2, strict=False) for r in pair]  # mixed
    path = home / "thumbs.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["prompt", "reply", "rating"], *rows])
    added = cli.invoke(
        app,
        ["feedback", "add", "--model", "smol", "--file", str(path), "--holdout", "4", "--batch-size", "4",
         "--commit-every", "1", "--lr", "3e-4", "--topk", "0.2", "--tolerance", "0.05", "--json"],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    job = json.loads(added.stdout)
    assert job["versions"]
    assert job["head_version"] in job["versions"]

    store = Deployment(Settings()).store()
    zero_shot, tuned = str(store.log("smol")[-1].id), str(job["head_version"])
    trained = rows[4:]
    ups = examples([r for r in trained if r[2] == UP])
    downs = examples([r for r in trained if r[2] == DOWN])
    before, after = load_reply_trainer(store, "smol", zero_shot), load_reply_trainer(store, "smol", tuned)
    assert after.evaluate(ups) > before.evaluate(ups)
    assert after.evaluate(downs) < before.evaluate(downs)
