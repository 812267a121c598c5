"""`llmk feedback add` with rated replies: a CSV (prompt,reply,rating[,correction]) or JSON lines file feeds
the model's standing replies job, which commits gated versions; a file with one bad row queues nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from llmk.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[3]


def llmk(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env.update(PYTHONPATH=f"{ROOT / 'shared'}:{ROOT}", LLMK_HOME=str(home), HF_HUB_OFFLINE="1")
    code = "import sys; from llmk.cli.main import run; sys.argv = ['llmk', *sys.argv[1:]]; run()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env
    )


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["prompt", "reply", "rating", "correction"], *rows])
    return path


def rows(n: int) -> list[list[str]]:
    return [
        [f"cancel order {i}", "done" if i % 2 else "zzz", "up" if i % 2 else "down", "" if i % 2 else "done"]
        for i in range(n)
    ]


def test_rated_replies_train_the_model_and_a_bad_row_queues_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert llmk(home, "store", "import", "synthetic:llama-tiny", "-m", "m").returncode == 0
    bad = write_csv(tmp_path / "bad.csv", [*rows(10), ["hello", "hi", "sideways", ""]])
    refused = llmk(home, "feedback", "add", "-m", "m", "--file", str(bad), "--holdout", "2")
    assert refused.returncode == InvalidInput.exit_code
    assert (
        refused.stderr.strip() == f"llmk: error: {bad} row 12: rating must be 'up' or 'down', got 'sideways'"
    )
    assert json.loads(llmk(home, "jobs", "--json").stdout) == []

    good = write_csv(tmp_path / "good.csv", rows(12))
    args = ["--holdout", "2", "--batch-size", "4", "--lr", "1e-3", "--json"]
    done = llmk(home, "feedback", "add", "-m", "m", "--file", str(good), *args)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["examples"] == 16  # 12 rows and 6 corrections, less the 2 held out
    assert out["step"] == 4
    assert len(out["versions"]) == 1  # --commit-every defaults to 4 steps per version
    assert out["head_version"] == out["versions"][0]  # it passed the held-out gate

    lines = [{"messages": [{"role": "user", "content": "hi"}], "reply": "hello", "rating": "up"}] * 4
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    more = llmk(home, "feedback", "add", "-m", "m", "--file", str(jsonl), "--json")
    assert more.returncode == 0, more.stderr
    again = json.loads(more.stdout)
    assert again["job"] == out["job"]  # the standing job takes it
    assert again["step"] == 5
