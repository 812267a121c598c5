"""`llmk --help` and the help of every command start without torch, transformers or grpc: those load only
inside the commands that use them, so the CLI answers in well under a second. A store command loads no
inference or transport code; torch still comes with the store's use cases (the delta algebra is torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys
from services.compose import run
heavy = json.loads(sys.argv[2])
sys.argv = ["llmk", *json.loads(sys.argv[1])]
try:
    run()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""
HEAVY = ["torch", "transformers", "tokenizers", "grpc", "celery", "sqlalchemy"]


def loaded(args: list[str], env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """What `llmk ARGS` printed, and which of HEAVY it had imported by the end."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


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
    out, modules = loaded(args)
    assert "Usage" in out
    assert modules == []


def test_a_store_command_loads_no_inference_or_transport_code(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env["LLMK_HOME"] = str(tmp_path / "home")
    out, modules = loaded(["store", "models", "--json"], env)
    assert json.loads(out.strip().splitlines()[0]) == []
    assert not {"transformers", "tokenizers", "grpc", "celery"} & set(modules)
