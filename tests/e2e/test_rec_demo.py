"""`llmk demo rec` on a small slice of MovieLens: the report a user reads is written and adds up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmk.errors import InvalidInput

try:  # tests/e2e as a package or as a folder on sys.path
    from .test_cli_store import cli_env
except ImportError:
    from test_cli_store import cli_env  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "llmk.cli.main", "demo", "rec"]
SYSTEMS = {"online", "frozen", "popular", "als_daily"}
STREAMED = 400


def demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(tmp_path / "unused-home"), "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}"}
    return subprocess.run(
        [*COMMAND, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("demo-rec")
    out = tmp / "out"
    args = ["--out", str(out), "--history", "3000", "--stream", str(STREAMED), "--epochs", "2"]
    done = demo(tmp, *args, "--checkpoint", "50", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads((out / "report.json").read_text())
    return out, json.loads((out / "report.json").read_text())


def test_the_report_and_its_charts_are_written(report: tuple[Path, dict[str, Any]]) -> None:
    out, found = report
    for chart in ("ndcg.png", "bytes.png", "served.png"):
        assert (out / chart).read_bytes().startswith(b"\x89PNG"), chart
    text = (out / "report.md").read_text()
    online = found["systems"]["online"]["ndcg_at_10"]
    assert f"| llmk online | {online} |" in text
    assert f"in {STREAMED} = applied" in text
    assert "![NDCG over time](ndcg.png)" in text
    assert (out / "home").is_dir()  # embedded: the run's store lives under --out


def test_every_interaction_is_accounted_for_and_served(report: tuple[Path, dict[str, Any]]) -> None:
    _, found = report
    stream = found["stream"]
    assert stream["in"] == STREAMED == stream["applied"] + stream["rejected"]
    assert found["interaction_to_served_seconds"]["interactions"] == stream["applied"]
    assert 0 <= found["interaction_to_served_seconds"]["p50"] <= found["interaction_to_served_seconds"]["max"]


def test_versions_are_listed_and_hold_only_changed_rows(report: tuple[Path, dict[str, Any]]) -> None:
    _, found = report
    versions = found["versions"]
    ids = [v["version"] for v in versions]
    assert len(ids) >= 2
    assert ids == sorted(ids)
    assert ids[0] > found["first_version"]
    assert found["last_version"] == ids[-1] == found["served_at_end"]
    assert sum(v["interactions"] for v in versions) == found["stream"]["applied"]
    full = found["bytes"]["full_copy"]
    assert all(0 < v["stored_bytes"] < full for v in versions)
    assert found["bytes"]["per_version_mean"] < full
    assert found["bytes"]["stored_over_touched"] <= 1.2


def test_systems_are_scored_on_the_same_tests_and_the_api_answered(
    report: tuple[Path, dict[str, Any]],
) -> None:
    _, found = report
    systems = found["systems"]
    assert set(systems) == SYSTEMS
    tests = {s["tests"] for s in systems.values()}
    assert len(tests) == 1
    assert tests.pop() > 0
    points = found["timeline"]
    assert points
    assert points[-1]["tests"] == systems["online"]["tests"]
    assert all(set(p) >= SYSTEMS for p in points)
    assert points[-1]["online"] == systems["online"]["ndcg_at_10"]
    api = found["api"]
    assert api["answers"] == systems["online"]["tests"]
    answering = {int(v) for v in api["answers_per_version"]}
    assert answering <= {found["first_version"], *(v["version"] for v in found["versions"])}
    assert len(answering) >= 2  # the API served streamed versions while the stream ran


@pytest.mark.parametrize(
    "args",
    [("--stream", "-1"), ("--commit-every", "0"), ("--held-out", "1.5"), ("--commit-every-seconds", "-1")],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    done = demo(tmp_path, "--out", str(tmp_path / "out"), *args)
    assert done.returncode == InvalidInput.exit_code
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("llmk: error:")


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    done = demo(tmp_path, "--out", str(tmp_path / "taken"))
    assert done.returncode == InvalidInput.exit_code
    assert "is a file" in done.stderr
