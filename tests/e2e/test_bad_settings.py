"""Settings a user gets wrong: one line naming what to fix and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def llmk(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env |= {"LLMK_HOME": str(tmp_path / "home"), "PYTHONPATH": "shared:.", **settings}
    command = [sys.executable, "-m", "llmk.cli.main", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("nonsense://x", 2, "LLMK_DATABASE_URL is not a URL llmk can use"),
        ("postgresql+psycopg://u:secret@127.0.0.1:1/x", 11, "does not answer (LLMK_DATABASE_URL)"),
    ],
)
def test_a_bad_or_unreachable_database_is_one_line(tmp_path: Path, url: str, code: int, says: str) -> None:
    done = llmk(tmp_path, "store", "models", LLMK_DATABASE_URL=url)
    assert done.returncode == code
    line = one_line(done)
    assert says in line
    assert "secret" not in line, "a password never reaches the terminal"


def test_an_object_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "objects").write_text("not a folder")
    done = llmk(
        tmp_path,
        "store",
        "import",
        "synthetic:llama-tiny",
        "--model",
        "t",
        LLMK_OBJECT_DIR=str(tmp_path / "objects"),
    )
    assert done.returncode == 2
    assert "cannot be used (LLMK_OBJECT_DIR or LLMK_HOME)" in one_line(done)


def test_demo_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "report").write_text("keep me")
    done = llmk(tmp_path, "demo", "--out", str(tmp_path / "report"))
    assert done.returncode == 2
    assert "is a file" in one_line(done)
    assert (tmp_path / "report").read_text() == "keep me"
