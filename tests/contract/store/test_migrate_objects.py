"""`llmk store migrate-objects`: a folder's objects to a bucket and back, resumable and verified; the store
then serves the same values from its new place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.versions import CommitInfo
from services.store.adapters.importers import load_source
from services.store.usecases.object_migration import migrate
from tests.s3_server import S3Server

LLMK = [sys.executable, "-m", "llmk.cli.main"]
ROOT = Path(__file__).resolve().parents[3]  # the checkout: its code, not the installed copy


def cli_env(home: Path, server: S3Server) -> dict[str, str]:
    """This checkout's code first, the store's home, the S3 server's endpoint; no other LLMK_ setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    path = os.pathsep.join([str(ROOT / "shared"), str(ROOT)])
    return env | {"LLMK_HOME": str(home), "LLMK_S3_ENDPOINT": server.endpoint, "PYTHONPATH": path}


def test_objects_move_to_a_bucket_and_back_and_serve_the_same_values(
    tmp_path: Path, s3_server: S3Server
) -> None:
    home = tmp_path / "home"
    store = Deployment(Settings(home=home)).local_store()
    tiny = load_source("synthetic:llama-tiny")
    store.create_model("tiny", tiny.tensors, tiny.config, tiny.files, CommitInfo())
    referenced = store.catalog.referenced_objects()
    bucket = s3_server.bucket(f"mig-{uuid.uuid4().hex[:12]}")
    url = f"s3://{bucket}/llmk"
    env = cli_env(home, s3_server)
    cmd = [*LLMK, "store", "migrate-objects", "--to", url, "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"bytes": 0} == {
        "copied": len(referenced),
        "skipped": 0,
        "bytes": 0,
        "to": url,
    }

    in_bucket = Settings(home=home, objects_url=url, s3_endpoint=s3_server.endpoint)
    bucket_objects: Any = Deployment(in_bucket).objects()
    one = sorted(referenced)[0]
    bucket_objects.bucket.call("remove", "delete_object", Key=bucket_objects.bucket.key("objects", one))
    again = migrate(store.catalog, store.objects, bucket_objects)  # as after an interrupted run
    assert (again.copied, again.skipped) == (1, len(referenced) - 1)

    served = Deployment(in_bucket).local_store().fetch("tiny")
    assert all(torch.equal(served[k], v) for k, v in tiny.tensors.items())
    back = Deployment(Settings(home=home, objects_url=str(tmp_path / "back"))).objects()
    assert migrate(store.catalog, bucket_objects, back).copied == len(referenced)
    served = Deployment(Settings(home=home, objects_url=str(tmp_path / "back"))).local_store().fetch("tiny")
    assert all(torch.equal(served[k], v) for k, v in tiny.tensors.items())


def test_migrating_to_a_missing_bucket_fails_in_one_line_naming_the_setting(
    tmp_path: Path, s3_server: S3Server
) -> None:
    env = cli_env(tmp_path / "home", s3_server)
    cmd = [*LLMK, "store", "migrate-objects", "--to", "s3://no-such-bucket/x"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3
    assert done.stderr.strip().startswith("llmk: error:")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "LLMK_OBJECTS_URL" in done.stderr
