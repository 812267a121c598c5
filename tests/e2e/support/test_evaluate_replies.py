"""`llmk evaluate replies` as a user runs it: a real subprocess on a store holding the tiny model. The NLL
ranks a reply the model would write above one it would not, and ROUGE-L scores the model's greedy replies."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.store.adapters.importers import Imported
from tests.conftest import make_settings
from tests.e2e.support.conftest import MODEL, import_tiny

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "services" / "support" / "data" / "bitext-heldout.csv"


def llmk(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env |= {"LLMK_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}"}
    argv = [sys.executable, "-m", "llmk.cli.main", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["instruction", "response"])
        out.writerows(rows)
    return path


def greedy(home: Path, message: str, max_tokens: int) -> str:
    from llmk.bootstrap import Deployment
    from services.inference.interface import GenerateRequest

    client = Deployment(make_settings(home)).inference(MODEL, None)
    try:
        request = GenerateRequest(message, max_tokens=max_tokens, temperature=0.0)
        return "".join(p for p in client.generate(request) if isinstance(p, str))
    finally:
        client.close()


@pytest.fixture
def home(tmp_path: Path, llama_tiny: Imported) -> Path:
    home = tmp_path / "home"
    import_tiny(make_settings(home), llama_tiny)
    return home


def test_the_models_own_reply_scores_better_than_a_foreign_one(home: Path, tmp_path: Path) -> None:
    message = "Where is my order?"
    own = write(tmp_path / "own.csv", [(message, greedy(home, message, 8))] * 2)
    foreign = write(tmp_path / "foreign.csv", [("Where is my order?", "We shipped it, Sir!")] * 2)
    first = llmk(
        home,
        "evaluate",
        "replies",
        "--model",
        MODEL,
        "--file",
        str(own),
        "--generate",
        "2",
        "--max-tokens",
        "8",
        "--json",
    )
    assert first.returncode == 0, first.stderr
    mine = json.loads(first.stdout)
    assert (mine["model"], mine["version"], mine["rows"], mine["generated"]) == (MODEL, 1, 2, 2)
    assert mine["tokens"] == 16
    assert mine["rouge_l"] == 1.0  # its greedy replies are the references
    second = llmk(home, "evaluate", "replies", "--model", f"{MODEL}@1", "--file", str(foreign), "--json")
    theirs = json.loads(second.stdout)
    assert theirs["rouge_l"] is None
    assert theirs["generated"] == 0
    assert 0 < mine["nll_per_token"] < theirs["nll_per_token"]


def test_the_shipped_held_out_split_is_readable(tmp_path: Path) -> None:
    from services.support.usecases.evaluation import parse_pairs

    pairs = parse_pairs(DATA.read_text(encoding="utf-8"))
    assert len(pairs) == 225
    assert (DATA.parent / "LICENSE.txt").read_text().startswith("Community Data License Agreement")


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--file", "missing.csv"], 3, "no such file"),
        (["--file", "bad.csv"], 2, "missing response"),
        (["--file", "good.csv", "--generate", "-1"], 2, "--generate must be 0 or more"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    home: Path, tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    (tmp_path / "bad.csv").write_text("instruction,answer\nhi,hello\n")
    write(tmp_path / "good.csv", [("hi", "hello")])
    args = [a if not a.endswith(".csv") else str(tmp_path / a) for a in args]
    done = llmk(home, "evaluate", "replies", "--model", MODEL, *args)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert says in done.stderr
