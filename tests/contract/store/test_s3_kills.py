"""Zero objects lost on a bucket: committers and collectors killed with SIGKILL at random points.

Real processes against moto's S3 server: 20 committers (every kind of store write) and 5 gc runs, each
killed mid-work, the gc runs beside a committer. Afterwards, seen by fresh processes with no local cache,
every object a version references is in the bucket and hashes to its name, every head materializes,
`llmk store scrub` finds nothing damaged, and a final gc leaves exactly the referenced objects.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.versions import CommitInfo
from services.store.adapters.importers import load_source
from services.store.usecases.store import Store
from tests.contract.store.s3_processes import collect_forever, commit_to_bucket, context
from tests.contract.store.test_migrate_objects import LLMK, cli_env
from tests.s3_server import CREDENTIALS, S3Server, objects_settings

pytestmark = pytest.mark.timeout(300)
COMMITTERS, COLLECTORS = 20, 5
GRACE = 5.0  # the concurrent gc's grace period: far longer than a commit takes from upload to its row
ORPHANS = 5  # unreferenced objects planted first, so the concurrent gc runs have something to remove


def wait_ready(event: Any, child: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not event.wait(0.05):
        assert child.is_alive(), f"the {what} died (exit code {child.exitcode})"
        assert time.monotonic() < deadline, f"the {what} made no progress in 60 s"


def kill(child: Any) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL, f"the child stopped by itself ({child.exitcode})"


def test_no_object_is_lost_across_killed_commits_and_killed_gc_runs(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.bucket(f"kills-{uuid.uuid4().hex[:12]}")
    home = tmp_path / "home"
    settings = Settings(home=home, **objects_settings(home, s3_server, bucket))  # type: ignore[arg-type]
    tiny = load_source("synthetic:llama-tiny")
    owner = Deployment(settings).local_store()
    owner.create_model("tiny", tiny.tensors, tiny.config, tiny.files, CommitInfo())
    planted = {owner.objects.put_bytes(uuid.uuid4().bytes)[0] for _ in range(ORPHANS)}
    planted_at = time.monotonic()
    owner.catalog.engine.dispose()  # type: ignore[attr-defined]

    children = settings.model_copy(update={"auto_migrate": False, "cache_chain_length": 4})
    collectors = children.model_copy(update={"gc_grace_seconds": GRACE})
    names = sorted(n for n in tiny.tensors if n.startswith("model.layers."))
    env = {k: os.environ.get(k, v) for k, v in CREDENTIALS.items()}
    ctx, rng = context(), random.Random(20261207)
    sweeps, removed = ctx.Value("i", 0), ctx.Value("i", 0)
    gc_rounds = set(range(COMMITTERS - 1, 0, -COMMITTERS // COLLECTORS))  # the last of every 4
    for i in range(COMMITTERS):
        ready = ctx.Event()
        committer = ctx.Process(
            target=commit_to_bucket, args=(env, children, "tiny", names, i, ready), daemon=True
        )
        committer.start()
        wait_ready(ready, committer, "committer")
        if i not in gc_rounds:
            time.sleep(rng.uniform(0, 0.3))
            kill(committer)
            continue
        time.sleep(max(0.0, GRACE - (time.monotonic() - planted_at)))  # the orphans are past the grace
        swept = ctx.Event()
        collector = ctx.Process(
            target=collect_forever, args=(env, collectors, swept, sweeps, removed), daemon=True
        )
        collector.start()
        wait_ready(swept, collector, "collector")
        time.sleep(rng.uniform(0, 0.5))  # into a later sweep, beside the committer
        kill(committer)
        time.sleep(rng.uniform(0, 0.2))
        kill(collector)
    assert sweeps.value >= COLLECTORS, "a collector was killed before its first sweep"
    assert removed.value >= ORPHANS, "the killed gc runs removed nothing"

    checker = Deployment(settings.model_copy(update={"object_cache_bytes": 0})).local_store()  # no cache
    try:
        objects: Any = checker.objects
        referenced = checker.catalog.referenced_objects()
        assert len(checker.catalog.versions("tiny")) > COMMITTERS, (
            "the committers hardly got a commit through"
        )
        assert not referenced & planted
        for sha in referenced:
            objects.get_bytes(sha)  # raises Corrupt when missing, truncated or damaged
        assert_heads_materialize(checker, tiny.tensors)
        after = checker.commit_full("tiny", {"model.norm.weight": torch.zeros(64)})
        assert checker.version("tiny").id == after.id, "a killed writer left the branch locked"

        scrub = [*LLMK, "store", "scrub", "--json"]
        env_cli = cli_env(home, s3_server) | {"LLMK_OBJECTS_URL": settings.objects_url}
        done = subprocess.run(scrub, env=env_cli, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["count"] == 0

        final = Deployment(settings.model_copy(update={"gc_grace_seconds": 0.0})).local_store()
        final.gc()  # what the kills left behind: objects never referenced, their manifests
        in_bucket = {sha for sha, _ in objects.listing("objects")}
        assert in_bucket == checker.catalog.referenced_objects()
        assert {sha for sha, _ in objects.listing("blocks")} == in_bucket
        assert objects.bucket.uploads() == []
        assert list(objects.listing("aside")) == []
        assert_heads_materialize(checker, tiny.tensors)
        final.catalog.engine.dispose()  # type: ignore[attr-defined]
    finally:
        checker.catalog.engine.dispose()  # type: ignore[attr-defined]


def assert_heads_materialize(store: Store, like: dict[str, torch.Tensor]) -> None:
    for ref in store.refs("tiny"):
        values = store.fetch("tiny", ref.name)
        assert sorted(values) == sorted(like), f"{ref.name} lost tensors"
        assert all(bool(torch.isfinite(t).all()) for t in values.values())
