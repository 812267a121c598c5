"""`llmk --help` and the help of every command start without torch, transformers or grpc: those load only
inside the commands that use them, so the CLI answers in well under a second."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from services.compose import run
sys.argv = ["llmk", *json.loads(sys.argv[1])]
try:
    run()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("torch", "transformers", "grpc", "sqlalchemy") if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["store", "--help"],
        ["store", "log", "--help"],
        ["classify", "--help"],
        ["train", "--help"],
    ],
)
def test_help_loads_no_heavy_module(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Usage" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
