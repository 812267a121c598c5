"""With LLMK_OBJECTS_URL=s3://..., the optimizer keeps job state and examples in the same bucket (under
optimizer/), so a replica on another machine resumes any job; the store's gc never takes them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from jobs_support import TASK, examples

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.optim import OptimizerSpec
from services.optimizer.interface import COMPLETED, JobSpec
from services.optimizer.main import wire
from services.optimizer.usecases.training import MORE, JobRunner
from services.store.adapters.importers import load_source
from tests.s3_server import S3Server


def test_job_state_lives_in_the_bucket_and_a_fresh_runner_resumes_from_it(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.bucket(f"opt-{uuid.uuid4().hex[:12]}")
    settings = Settings(
        home=tmp_path / "home",
        broker_url="memory://",
        optimizer_queue=f"optimizer-test-{uuid.uuid4().hex[:8]}",
        objects_url=f"s3://{bucket}/llmk",
        s3_endpoint=s3_server.endpoint,
    )
    rt = wire(Deployment(settings))
    try:
        imported = load_source("synthetic:llama-tiny")
        rt.store.create_model("tiny", imported.tensors, imported.config, imported.files)
        spec = JobSpec(model="tiny", task=TASK, steps=3, batch_size=4, optimizer=OptimizerSpec(lr=1e-2))
        job_id = rt.jobs.create_job(spec, validation=examples(4, offset=40)).id
        rt.jobs.submit_feedback(job_id, examples(8), "data")

        def fresh_runner() -> JobRunner:  # another replica: its own connection to the bucket, no memory
            blobs = Deployment(settings).optimizer_state()
            return JobRunner(rt.runner.repo, rt.store, blobs, lease_seconds=30, budget_seconds=0)

        assert fresh_runner().run(job_id).status == MORE
        first = rt.jobs.get_job(job_id).state_object
        assert first is not None
        state: Any = Deployment(settings).optimizer_state()
        assert first in {sha for sha, _ in state.listing("objects")}
        assert state.bucket.where.prefix == "llmk/optimizer/"

        collector = Deployment(settings.model_copy(update={"gc_grace_seconds": 0.0})).local_store()
        collector.gc()  # the store's gc sees only the store's objects
        assert first in {sha for sha, _ in state.listing("objects")}

        while fresh_runner().run(job_id).status == MORE:
            pass
        job = rt.jobs.get_job(job_id)
        assert job.status == COMPLETED, job.error
        assert [c.step for c in job.commits] == [1, 2, 3]
        kept = {sha for sha, _ in state.listing("objects")}
        assert first not in kept, "a replaced state was left behind"
        assert job.state_object in kept
        assert not (settings.home / "optimizer").exists(), "state went to a local folder"
        collector.catalog.engine.dispose()  # type: ignore[attr-defined]
    finally:
        rt.close()
