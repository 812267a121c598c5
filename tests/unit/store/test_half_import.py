"""An import killed (or out of disk) after its model row and before its first version leaves a model with
no branch. Readers treat it as absent, and `import --if-missing` (what deployment jobs run) imports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmk.bootstrap import Deployment
from llmk.errors import NotFound
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[3]


def half_import(home: Path) -> None:
    """What a SIGKILL between the model row and the first version leaves behind."""
    store = Deployment(make_settings(home)).local_store()
    store.catalog.create_model("m", {}, {})
    store.close()


def test_a_model_without_a_main_branch_is_absent_to_readers(tmp_path: Path) -> None:
    half_import(tmp_path / "home")
    store = Deployment(make_settings(tmp_path / "home")).local_store()
    assert [m.name for m in store.models()] == []
    with pytest.raises(NotFound, match="unknown model 'm'"):
        store.model("m")
    with pytest.raises(NotFound):
        store.log("m")


def llmk(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env.update(PYTHONPATH=f"{ROOT / 'shared'}:{ROOT}", LLMK_HOME=str(home), HF_HUB_OFFLINE="1")
    code = "import sys; from llmk.cli.main import run; sys.argv = ['llmk', *sys.argv[1:]]; run()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_import_if_missing_repairs_a_half_imported_model(tmp_path: Path) -> None:
    half_import(tmp_path / "home")
    done = llmk(
        tmp_path / "home", "store", "import", "synthetic:llama-tiny", "-m", "m", "--if-missing", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 1
    listed = llmk(tmp_path / "home", "store", "log", "m", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
