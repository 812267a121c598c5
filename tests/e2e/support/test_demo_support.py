"""`llmk demo support` end to end on the tiny synthetic model: the report says what the run did (the
conversations sent through the API, the feedback, the versions served and their bytes), the charts are
PNGs, and bad sizes are one clear line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = [
    "--source", "synthetic:llama-tiny",
    "--conversations", "4", "--dev", "2", "--held-out", "2", "--generate", "1", "--max-tokens", "4",
    "--intent-train", "80", "--intent-held-out", "8", "--batch", "2", "--commit-every", "1", "--clients", "3",
    "--settle-seconds", "600",
]  # fmt: skip
CONVERSATIONS = 4


def llmk(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env |= {"LLMK_HOME": str(tmp_path / "home"), "PYTHONPATH": "shared:.", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "llmk.cli.main", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "out"
    done = llmk(out.parent, "demo", "support", "--out", str(out), *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "measuring version 1 (zero-shot)" in done.stdout  # progress is printed as it goes
    return out, json.loads((out / "report.json").read_text())


def test_every_conversation_went_through_the_api_and_came_back_as_feedback(report: tuple[Path, dict]) -> None:
    _, r = report
    traffic = r["traffic"]
    assert traffic["requests"] == CONVERSATIONS == len(r["exchanges"])
    assert traffic["thumbs_up"] + traffic["corrections"] == CONVERSATIONS
    assert sorted(e["index"] for e in r["exchanges"]) == list(range(CONVERSATIONS))
    assert all(e["version"] >= 1 and e["completion_tokens"] <= 4 for e in r["exchanges"])
    assert r["job"]["items"] == sum(e["examples"] for e in r["exchanges"])  # the job got every rated reply
    assert traffic["ttft_p50_s"] > 0
    assert traffic["tokens_per_s"] > 0


def test_the_report_names_each_served_version_with_its_figures(report: tuple[Path, dict]) -> None:
    _, r = report
    versions = r["versions"]
    assert versions[0]["version"] == 1 == r["zero_shot"]["version"]
    trained = [v for v in versions if v["version"] > 1]
    assert trained, "feedback produced no served version"
    assert r["headline"]["served_at_end"] == versions[-1]["version"] == r["final"]["version"]
    for v in trained:
        assert 0 < v["stored_bytes"] < v["full_copy_bytes"] / 10  # a sparse delta, not a copy
        assert v["feedback_to_served_s"] is not None
        assert v["feedback_to_served_s"] > 0
        assert v["dev_nll_per_token"] is not None
        assert math.isfinite(v["dev_nll_per_token"])
    for probe in r["probes"]:  # streamed while training caught up: measured, never fed back
        assert probe["rating"] == "none"
        assert probe["examples"] == 0
    promoted = {c["version"] for c in r["commits"] if c["promoted"]}
    assert {v["version"] for v in trained} <= promoted
    for figures in (r["zero_shot"], r["final"]):
        assert math.isfinite(figures["nll_per_token"])
        assert figures["nll_per_token"] > 0
        assert figures["greedy_replies"] == 1
        assert 0 <= figures["rouge_l"] <= 1
        assert 0 <= figures["intent_accuracy"] <= 1
    drop = (r["zero_shot"]["nll_per_token"] - r["final"]["nll_per_token"]) / r["zero_shot"]["nll_per_token"]
    assert r["nll_drop"] == pytest.approx(drop, abs=1e-4)
    assert r["setup"]["splits"] == {
        "conversations": CONVERSATIONS, "dev": 2, "held_out": 2, "intent_train": 80, "intent_held_out": 8,
    }  # fmt: skip
    assert 0 <= r["intent_baselines"]["tfidf_lr"]["accuracy"] <= 1
    assert set(r["goals"]) == {
        "nll_drop_at_least_15_percent", "conversations_at_most_1000", "intent_accuracy_at_least_0_80",
        "under_10_minutes",
    }  # fmt: skip
    assert r["unsettled"] is None


def test_the_markdown_and_the_charts(report: tuple[Path, dict]) -> None:
    out, r = report
    text = (out / "report.md").read_text()
    assert f"| 1 (zero-shot) | {r['zero_shot']['nll_per_token']} |" in text
    assert f"fell by {100 * r['nll_drop']:.1f}%" in text
    assert f"{r['traffic']['requests']} streamed requests" in text
    for chart in ("replies.png", "serving.png", "bytes.png", "intents.png"):
        data = (out / chart).read_bytes()
        assert data.startswith(PNG), chart
        assert len(data) > 5000, chart


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--conversations", "0"], "--conversations must be at least 1"),
        (["--held-out", "100000"], "bitext-heldout.csv has 225"),
        (["--conversations", "5000"], "bitext-train.csv has 1200"),
        (["--topk", "0"], "--topk"),
    ],
)
def test_bad_sizes_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    done = llmk(tmp_path, "demo", "support", "--out", str(tmp_path / "out"), *args, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert says in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "home").exists()  # refused before anything was imported
