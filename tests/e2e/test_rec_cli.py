"""`llmk rec` from the shell: train, recommend (known and unknown users), stream, bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

from llmk.errors import InvalidInput, NotFound

try:  # tests/e2e as a package or as a folder on sys.path
    from .test_cli_store import cli_env
except ImportError:
    from test_cli_store import cli_env  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "llmk.cli.main"]  # this checkout's code, whatever the installed script
OK = 0


def batch(env: dict[str, str], *commands: tuple[int, tuple[str, ...]]) -> list[Any]:
    """Run commands side by side: a success gives its --json output, a failure its one stderr line."""
    argvs = [[*COMMAND, *args, *(["--json"] if code == OK else [])] for code, args in commands]
    env = {**env, "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}"}
    procs = [subprocess.Popen(a, env=env, cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True) for a in argvs]
    results: list[Any] = []
    for (code, args), p in zip(commands, procs, strict=True):
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == code, f"llmk {' '.join(args)}: exit {p.returncode}, stderr {stderr!r}"
        if code == OK:
            results.append(json.loads(stdout))
        else:
            assert len(stderr.strip().splitlines()) == 1, stderr
            results.append(stderr.strip())
    return results


def ok(env: dict[str, str], *args: str) -> Any:
    return batch(env, (OK, args))[0]


def _ratings(path: Path, users: range, t0: int) -> Path:
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"{u},{(u * 7 + j) % 30},{4 + j % 2},{t0 + 10 * u + j}" for u in users for j in range(6)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_recommend_stream_and_bad_input(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,title,genres\n" + "".join(f"{i},Film {i},Drama\n" for i in range(30)))
    train = _ratings(tmp_path / "train.csv", range(10), 1000)
    made = ok(
        env, "rec", "train", "--model", "m", "--ratings", str(train), "--items", str(movies), "--epochs", "3"
    )
    assert made["version"] == 1
    known = ok(env, "rec", "recommend", "--model", "m", "--user", "1", "--k", "3", "--exclude-seen")
    assert known["version"] == 1
    assert not known["popular_fallback"]
    assert known["items"][0]["title"].startswith("Film ")
    stream = _ratings(tmp_path / "stream.csv", range(8, 14), 5000)
    summary = ok(env, "rec", "stream", "--model", "m", "--source", str(stream), "--commit-every", "10")
    assert summary["in"] == summary["applied"] + summary["rejected"] == 36
    assert summary["appended_users"] == 4
    errors = batch(
        env,
        (OK, ("rec", "recommend", "--model", "m", "--user", "999")),
        (NotFound.exit_code, ("rec", "train", "--model", "x", "--ratings", str(tmp_path / "none.csv"))),
        (InvalidInput.exit_code, ("rec", "recommend", "--model", "m", "--user", "1", "--k", "0")),
        (InvalidInput.exit_code, ("rec", "stream", "--model", "m", "--source", str(movies))),
        (InvalidInput.exit_code, ("rec", "train", "-m", "x", "--ratings", f"{train}", "--content-model=l")),
        (
            InvalidInput.exit_code,
            ("rec", "evaluate", "-m", "m", "--ratings", f"{stream}", "--commit-every-seconds", "0"),
        ),
        (
            InvalidInput.exit_code,
            ("rec", "evaluate", "-m", "m", "--ratings", f"{stream}", "--served-after", "-1"),
        ),
    )
    assert errors[0]["popular_fallback"]
    assert "no such file" in errors[1]
    assert "k must be" in errors[2]
    assert "header lacks" in errors[3]
    assert "give --items too" in errors[4]
    assert "--online needs --commit-every or --commit-every-seconds" in errors[5]
    assert "must be >= 0" in errors[6]


def test_recommend_through_the_embedded_queue(tmp_path: Path) -> None:
    """`--queue` with the in-process broker: a rec worker on the command's threads answers the task."""
    env = cli_env(tmp_path / "home")
    train = _ratings(tmp_path / "train.csv", range(10), 1000)
    ok(env, "rec", "train", "--model", "m", "--ratings", str(train), "--epochs", "3")
    direct, queued, refused = batch(
        env,
        (OK, ("rec", "recommend", "--model", "m", "--user", "1", "--k", "3")),
        (OK, ("rec", "recommend", "--model", "m", "--user", "1", "--k", "3", "--queue")),
        (InvalidInput.exit_code, ("rec", "recommend", "--model", "m", "--user", "1", "--k", "0", "--queue")),
    )
    assert queued == direct
    assert queued["version"] == 1
    assert "k must be" in refused
