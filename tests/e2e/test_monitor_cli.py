"""The finance monitor as a user runs it: `llmk monitor` over a file and standard input, `llmk scores`,
`llmk alerts`, `llmk feedback add` and `llmk demo`, as real subprocesses on the embedded default with the
tiny synthetic model (its labels are arbitrary; what is checked is that nothing is lost or scored twice)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .test_cli_store import COMMAND, cli_env

pytestmark = pytest.mark.timeout(900)
TEMPLATE = "News: {text}\nSentiment:"


def llmk(env: dict[str, str], *args: str, stdin: bytes = b"", code: int = 0) -> Any:
    p = subprocess.run([*COMMAND, *args], env=env, input=stdin, capture_output=True, timeout=600)
    assert p.returncode == code, f"llmk {' '.join(args)}: exit {p.returncode}: {p.stderr.decode()[-2000:]}"
    if code:
        lines = p.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("llmk: error: "), lines
        return lines[0]
    return json.loads(p.stdout) if "--json" in args else p.stdout.decode()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = cli_env(tmp_path_factory.mktemp("monitor") / "home")
    llmk(env, "store", "import", "synthetic:llama-tiny", "--model", "tiny", "--json")
    llmk(
        env, "task", "set", "tiny", "--labels", "negative,positive,neutral", "--template", TEMPLATE, "--json"
    )
    return env


def test_every_item_read_is_scored_or_rejected_with_its_reason(env: dict[str, str], tmp_path: Path) -> None:
    stream = tmp_path / "news.csv"
    stream.write_bytes(
        b"id,text,source\n"
        b"n1,$ACME beats estimates,wire\n"
        b'n2,"$ACME cuts guidance, again",wire\n'
        b"n3,,wire\n"  # empty text
        b"n4,\xff\xfe not utf-8,wire\n"
        b"n5,Microsoft holds its meeting,blog\n"
        b"n1,$ACME beats estimates again,wire\n"  # an id read before
        b"n6,too,many,columns\n"
    )
    summary = llmk(env, "monitor", "--model", "tiny", "--source", str(stream), "--json")
    assert (summary["in"], summary["scored"], summary["rejected"]) == (7, 3, 4)
    assert summary["versions"] == [2]
    scores = llmk(env, "scores", "--model", "tiny", "--run", summary["run"], "--json")
    assert [s["id"] for s in scores] == ["n1", "n2", "n5"]
    assert all(set(s["probabilities"]) == {"negative", "positive", "neutral"} for s in scores)
    assert all(s["version"] == 2 and s["label"] in s["probabilities"] for s in scores)
    assert [s["id"] for s in llmk(env, "scores", "--ticker", "$acme", "--run", summary["run"], "--json")] == [
        "n1",
        "n2",
    ]


def test_rejected_lists_every_refused_item_with_its_reason(env: dict[str, str]) -> None:
    oversized = json.dumps({"id": "big-1", "text": "x" * 50_000}).encode()  # the id is in the part read
    lines = b'{"text": "$XYZ rallies", "id": "ok1"}\n' + oversized + b'\n{"text": "", "id": "e1"}\n'
    summary = llmk(env, "monitor", "-m", "tiny", "--source", "-", "--format", "jsonl", "--json", stdin=lines)
    found = llmk(env, "rejected", "--model", "tiny", "--run", summary["run"], "--json")
    assert [(r["item_id"], r["reason"]) for r in found] == [
        ("big-1", "a line over 17408 bytes, far over the 4096-byte item limit"),
        ("e1", "empty text"),
    ]
    assert "empty text" in llmk(env, "rejected", "--run", summary["run"])  # the table for people


def test_feedback_add_says_how_many_rows_a_first_version_needs(env: dict[str, str], tmp_path: Path) -> None:
    from llmk.cli.feedback import BATCH
    from services.optimizer.interface import JobSpec

    assert JobSpec.__dataclass_fields__["batch_size"].default == BATCH
    ten = tmp_path / "ten.csv"
    ten.write_text("text,label\n" + "\n".join(f"$ACME note {i},{i % 3}" for i in range(10)) + "\n")
    args = ("feedback", "add", "--model", "tiny", "--branch", "few", "--file", str(ten))
    llmk(env, "store", "branch", "tiny", "few", "--from", "main", "--json")
    error = llmk(env, *args, code=2)
    assert "holds out the first --holdout 48" in error
    assert "at least 112 rows" in error
    job = llmk(env, *args, "--holdout", "4", "--json")
    assert (job["step"], job["versions"]) == (0, [])
    assert job["until_next_version"].startswith("58 more examples: the job steps on each 16")
    help_text = llmk(env, "feedback", "add", "--help").replace("\u2502", " ")  # rich's box edges
    assert "48 + 64 = 112 rows" in " ".join(help_text.split())


def test_json_lines_from_standard_input(env: dict[str, str]) -> None:
    lines = b'{"text": "$XYZ rallies", "id": "j1"}\nnot json\n{"headline": "no text"}\n{"text": "fine"}\n'
    summary = llmk(
        env, "monitor", "--model", "tiny", "--source", "-", "--format", "jsonl", "--json", stdin=lines
    )
    assert (summary["in"], summary["scored"], summary["rejected"]) == (4, 2, 2)


def test_bad_arguments_get_one_line_and_a_nonzero_exit(env: dict[str, str], tmp_path: Path) -> None:
    headless = tmp_path / "headless.csv"
    headless.write_text("headline,label\nx,1\n")
    assert "no such file" in llmk(env, "monitor", "--model", "tiny", "--source", "missing.csv", code=3)
    assert "no text column" in llmk(env, "monitor", "--model", "tiny", "--source", str(headless), code=2)
    assert "threshold" in llmk(env, "monitor", "--model", "tiny", "--source", "-", "--threshold", "2", code=2)
    assert "--since" in llmk(env, "scores", "--since", "yesterday", code=2)
    assert "unknown model" in llmk(env, "task", "show", "nosuchmodel", code=3)


def test_feedback_becomes_a_version_the_monitor_serves(env: dict[str, str], tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.csv"
    rows = [f"$ACME headline number {i},{i % 3}" for i in range(80)]
    labelled.write_text("text,label\n" + "\n".join(rows) + "\n")
    args = ("feedback", "add", "--model", "tiny", "--file", str(labelled), "--holdout", "16")
    job = llmk(env, *args, "--commit-every", "2", "--json")
    assert job["step"] == 4
    assert len(job["versions"]) == 2  # 64 examples: 4 steps of 16, a version per 2
    again = llmk(env, *args, "--json")  # the same file again: recognised, nothing trained twice
    assert again["duplicate"]
    assert again["step"] == 4
    summary = llmk(
        env,
        "monitor",
        "--model",
        "tiny",
        "--source",
        "-",
        "--format",
        "jsonl",
        "--json",
        stdin=b'{"text": "$ACME after feedback"}\n',
    )
    assert summary["versions"] == [job["head_version"]]
    assert summary["scored"] == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nsome text,bullish\n")
    assert "not in the task's label set" in llmk(
        env, "feedback", "add", "--model", "tiny", "--file", str(bad), code=2
    )


def test_demo_dry_run_with_the_tiny_model_writes_the_report(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ("demo", "--source", "synthetic:llama-tiny", "--out", str(out), "--stream", "40")
    report = llmk(env, *args, "--feedback", "64", "--held-out", "32", "--json")
    assert report["in"] == report["scored"] + report["rejected"] == 40
    assert report["scored_twice"] == 0
    assert report["zero_shot_macro_f1"] is not None
    assert report["versions"][0]["macro_f1"] is not None
    assert {"version", "macro_f1", "accuracy"} <= set(report["versions"][0])
    assert json.loads((out / "report.json").read_text())["in"] == 40
    assert all((out / name).stat().st_size > 1000 for name in ("f1.png", "throughput.png", "bytes.png"))
    assert set(report["baselines"]) == {"tfidf_lr", "linear_probe"}  # dense only with --dense-baseline
    assert report["time_split"]["streaming_s"] > 0
    assert "None" not in (out / "report.md").read_text()


def test_a_demo_that_does_not_settle_fails_loudly_and_ends_its_job(
    env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    args = (
        "demo",
        "--source",
        "synthetic:llama-tiny",
        "--out",
        str(out),
        "--stream",
        "20",
        "--feedback",
        "64",
    )
    error = llmk(env, *args, "--held-out", "32", "--settle-seconds", "0", "--json", code=11)
    assert "the demo did not finish: the optimizer trained" in error
    report = json.loads((out / "report.json").read_text())
    assert report["unsettled"].startswith("the optimizer trained")
    assert report["served_at_end"] is not None
    assert f"version {report['served_at_end']} was serving at the end" in error
    jobs = llmk({**env, "LLMK_HOME": str(out / "home")}, "jobs", "--json")
    assert [j["status"] for j in jobs] == ["cancelled"]  # a later optimizer does not resume it


def test_train_uses_the_model_task_unless_told_otherwise(env: dict[str, str], tmp_path: Path) -> None:
    labelled = tmp_path / "few.csv"
    labelled.write_text("text,label\n" + "\n".join(f"$ACME note {i},{i % 3}" for i in range(12)) + "\n")
    args = ("train", "--model", "tiny", "--data", str(labelled), "--steps", "1", "--batch-size", "4")
    job = llmk(env, *args, "--holdout", "4", "--trainable", "model.layers.1.mlp", "--json")
    assert job["spec"]["task"]["template"] == TEMPLATE  # what classify serves, not the packaged prompt
    assert job["spec"]["task"]["labels"] == ["negative", "positive", "neutral"]
