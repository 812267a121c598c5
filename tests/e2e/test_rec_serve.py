"""`llmk serve rec` as deployed: the store, a rec worker and the streamer are separate processes; an
interaction written to the streamer is served by the worker within seconds, without a restart, and
`llmk rec recommend` reaches the worker over gRPC when LLMK_REC_ADDRESS is set."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.rec_latency import COMMAND, ROOT, Feed, cluster, environment, served_seconds
from llmk.errors import InvalidInput, NotFound

pytestmark = pytest.mark.timeout(300)


def llmk(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_streamed_interactions_reach_a_worker_in_another_process(tmp_path: Path) -> None:
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,title,genres\n" + "".join(f"{i},Film {i},Drama\n" for i in range(30)))
    ratings = tmp_path / "ratings.csv"
    rows = [f"{u},{(u * 7 + j) % 30},5,{1000 + 10 * u + j}" for u in range(10) for j in range(6)]
    ratings.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    env = environment(tmp_path / "home", version_poll_seconds="0.1")
    train = ["--ratings", str(ratings), "--items", str(movies), "--epochs", "3"]
    with cluster(env, "m", train, commit_seconds=0.5) as running:
        assert running.stream.stdin is not None
        feed = Feed(running.stream.stdin, t0=10_000)
        seconds = served_seconds(feed, running.rec_address, "m", item=3, probes=2)
        remote = {**running.env, "LLMK_REC_ADDRESS": running.rec_address}
        answer = llmk(remote, "rec", "recommend", "--model", "m", "--user", "9000000", "--k", "3", "--json")
        wrong_model = llmk(remote, "rec", "recommend", "--model", "other", "--user", "1")
        pinned = llmk(remote, "rec", "recommend", "--model", "m", "--user", "1", "--ref", "1")
        no_model = llmk(running.env, "serve", "rec")
    assert all(s < 10 for s in seconds), seconds
    served = json.loads(answer.stdout)
    assert served["version"] > 1  # a streamed version, applied in place by the worker
    assert not served["popular_fallback"]
    assert served["items"][0]["title"].startswith("Film ")
    for done, code, message in (
        (wrong_model, NotFound.exit_code, "serves 'm', not 'other'"),
        (pinned, InvalidInput.exit_code, "serves its own branch"),
        (no_model, InvalidInput.exit_code, "name the model to serve"),
    ):
        assert done.returncode == code, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert message in done.stderr
    summary = json.loads((running.logs / "stream.log").read_text().strip().splitlines()[-1])
    assert summary["in"] == summary["applied"] == 3
