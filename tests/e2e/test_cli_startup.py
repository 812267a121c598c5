"""`llmk --help` and the help of every command start without torch, transformers or grpc: those load only
inside the commands that use them, so the CLI answers in well under a second. The store commands that only
list or move refs load neither torch nor Alembic (the catalog alone, usecases.history), embedded or
through the service; the commands that read or write tensors load torch, and no inference code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.versions import CommitInfo
from services.store.adapters.importers import Imported
from tests.conftest import GrpcStore, make_settings

PROBE = """
import json, sys
from llmk.cli.main import run
heavy = json.loads(sys.argv[2])
sys.argv = ["llmk", *json.loads(sys.argv[1])]
try:
    run()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""
HEAVY = ["torch", "transformers", "tokenizers", "grpc", "celery", "sqlalchemy", "alembic", "safetensors"]


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
    *printed, modules = done.stdout.strip().splitlines()
    return "\n".join(printed), json.loads(modules)


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


def test_a_tensor_command_loads_no_inference_code(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env["LLMK_HOME"] = str(tmp_path / "home")
    out, modules = loaded(["store", "import", "synthetic:llama-tiny", "--model", "tiny", "--json"], env)
    assert json.loads(out)["version"] == 1
    assert "torch" in modules
    assert not {"transformers", "tokenizers", "grpc", "celery"} & set(modules)


@pytest.mark.parametrize("transport", ["embedded", "grpc"])
def test_listing_and_ref_commands_load_neither_torch_nor_alembic(
    tmp_path: Path, transport: str, grpc_server: Callable[[Settings], GrpcStore], llama_tiny: Imported
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Deployment(settings).local_store()  # migrates the new database: the commands then find it current
    t = llama_tiny
    store.create_model("tiny", t.tensors, t.config, t.files, CommitInfo())
    store.freeze("tiny", ["model.norm.weight"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env["LLMK_HOME"] = str(settings.home)
    if transport == "grpc":
        env["LLMK_STORE_ADDRESS"] = grpc_server(settings).address
    commands = {
        ("store", "branch", "tiny", "exp"): lambda out: out["name"] == "exp" and out["version"] == 1,
        ("store", "tag", "tiny", "v1", "--ref", "exp"): lambda out: out["kind"] == "tag",
        ("store", "unfreeze", "tiny", "model.norm.weight"): lambda out: out["frozen"] == [],
        ("store", "log", "tiny@v1"): lambda out: [v["id"] for v in out] == [1],
        ("store", "models"): lambda out: (
            out == [{"model": "tiny", "refs": {"exp": 1, "main": 1, "v1": 1}, "frozen": []}]
        ),
    }
    for args, expected in commands.items():
        out, modules = loaded([*args, "--json"], env)
        assert expected(json.loads(out)), (args, out)
        assert not {"torch", "alembic", "safetensors", "transformers"} & set(modules), (args, modules)
    store.catalog.engine.dispose()
