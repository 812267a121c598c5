"""Optimizer job records to protobuf and back, and the Optimizer service's client.

The client implements services.optimizer.interface.JobsClient, as usecases.jobs.JobService does in-process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import torch

from llmk.domain.optim import OptimizerSpec
from llmk.domain.task_spec import TaskSpec
from llmk.platform.grpc_errors import translate
from llmk.platform.security import ServiceClient, Tls
from llmk.platform.tensor_stream import to_chunks
from llmk.v1 import optimizer_pb2 as pb
from llmk.v1 import optimizer_pb2_grpc
from services.optimizer.interface import Example, Job, JobInput, JobSpec, StepRecord, Submission


def _set(message: Any, names: Sequence[str]) -> dict[str, Any]:
    """The fields a sender set: unset optional fields fall back to the dataclass defaults."""
    return {n: getattr(message, n) for n in names if message.HasField(n)}


def optimizer_to_pb(o: OptimizerSpec) -> pb.OptimizerConfig:
    return pb.OptimizerConfig(
        kind=o.kind,
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        betas=list(o.betas),
        eps=o.eps,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
    )


def optimizer_from_pb(m: pb.OptimizerConfig) -> OptimizerSpec:
    fields = _set(m, ("lr", "momentum", "eps", "weight_decay", "max_grad_norm"))
    if m.kind:
        fields["kind"] = m.kind
    if m.betas:
        fields["betas"] = tuple(m.betas)
    return OptimizerSpec(nesterov=m.nesterov, **fields)


def task_to_pb(t: TaskSpec) -> pb.TaskConfig:
    return pb.TaskConfig(
        kind=t.kind,
        labels=list(t.labels),
        template=t.template,
        max_tokens=t.max_tokens,
        label_prefix=t.label_prefix,
    )


def task_from_pb(m: pb.TaskConfig) -> TaskSpec:
    fields = _set(m, ("max_tokens", "label_prefix"))
    if m.kind:
        fields["kind"] = m.kind
    if m.template:
        fields["template"] = m.template
    return TaskSpec(labels=tuple(m.labels), **fields)


def examples_to_pb(examples: Sequence[Example]) -> list[pb.Example]:
    return [pb.Example(**vars(e)) for e in examples]


def examples_from_pb(examples: Sequence[pb.Example]) -> list[Example]:
    return [Example(e.text, e.label, e.prompt, e.completion, e.rating) for e in examples]


def create_request(spec: JobSpec, validation: Sequence[Example], key: str | None) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        idempotency_key=key or "",
        model=spec.model,
        kind=spec.kind,
        branch=spec.branch,
        trainable=list(spec.trainable),
        optimizer=optimizer_to_pb(spec.optimizer),
        batch_size=spec.batch_size,
        commit_every=spec.commit_every,
        steps=spec.steps,
        topk=spec.topk,
        rank=spec.rank,
        task=task_to_pb(spec.task) if spec.task else None,
        validation=examples_to_pb(validation),
        tolerance=spec.tolerance,
        author=spec.author,
    )


def spec_from_request(r: pb.CreateJobRequest) -> JobSpec:
    fields = _set(r, ("batch_size", "commit_every", "steps", "topk", "rank", "tolerance"))
    for name in ("kind", "branch", "author"):
        if getattr(r, name):
            fields[name] = getattr(r, name)
    return JobSpec(
        model=r.model,
        trainable=tuple(r.trainable),
        optimizer=optimizer_from_pb(r.optimizer),
        task=task_from_pb(r.task) if r.HasField("task") else None,
        **fields,
    )


def commit_to_pb(c: StepRecord) -> pb.JobCommit:
    return pb.JobCommit(**dataclasses.asdict(c))


def commit_from_pb(m: pb.JobCommit) -> StepRecord:
    optional = _set(m, ("version", "metric", "parent_metric", "loss_before", "loss_after"))
    return StepRecord(
        m.step,
        branch=m.branch,
        promoted=m.promoted,
        reason=m.reason,
        examples_hash=m.examples_hash,
        nnz=m.nnz,
        bytes=m.bytes,
        **{"version": None, **optional},
    )


def job_to_pb(j: Job) -> pb.JobInfo:
    return pb.JobInfo(
        id=j.id,
        model=j.spec.model,
        kind=j.spec.kind,
        status=j.status,
        error=j.error,
        step=j.step,
        steps=j.spec.steps,
        head_version=j.head_version,
        metric=j.metric,
        baseline=j.baseline,
        items=j.items,
        commits=[commit_to_pb(c) for c in j.commits],
        spec_json=json.dumps(j.spec.to_dict()),
        created_at=j.created_at.isoformat() if j.created_at else "",
        updated_at=j.updated_at.isoformat() if j.updated_at else "",
    )


def job_from_pb(m: pb.JobInfo) -> Job:
    optional = _set(m, ("head_version", "metric", "baseline"))
    return Job(
        id=m.id,
        spec=JobSpec.from_dict(json.loads(m.spec_json)),
        status=m.status,
        error=m.error,
        step=m.step,
        items=m.items,
        commits=[commit_from_pb(c) for c in m.commits],
        created_at=datetime.fromisoformat(m.created_at) if m.created_at else None,
        updated_at=datetime.fromisoformat(m.updated_at) if m.updated_at else None,
        **optional,
    )


def submission_to_pb(s: Submission) -> pb.SubmitReply:
    return pb.SubmitReply(
        job=job_to_pb(s.job), sequence=s.input.seq, items=s.input.count, duplicate=s.duplicate
    )


def submission_from_pb(m: pb.SubmitReply, key: str) -> Submission:
    job = job_from_pb(m.job)
    return Submission(job, JobInput(job.id, m.sequence, key, "", m.items), m.duplicate)


class GrpcOptimizerClient(ServiceClient):
    """The Optimizer service over gRPC; gradients stream in chunks of at most `chunk_bytes`."""

    def __init__(
        self,
        address: str,
        token: str = "",
        max_message_bytes: int = 8 << 20,
        chunk_bytes: int = 4 << 20,
        tls: Tls | None = None,
    ):
        super().__init__(address, token, max_message_bytes, tls)
        self.stub = optimizer_pb2_grpc.OptimizerStub(self.channel)
        self.chunk_bytes = chunk_bytes

    @translate
    def create_job(
        self, spec: JobSpec, validation: Sequence[Example] = (), idempotency_key: str | None = None
    ) -> Job:
        request = create_request(spec, validation, idempotency_key)
        return job_from_pb(self.stub.CreateJob(request))

    @translate
    def get_job(self, job_id: str) -> Job:
        return job_from_pb(self.stub.GetJob(pb.JobRequest(job_id=job_id)))

    @translate
    def list_jobs(self, model: str | None = None, limit: int = 100) -> list[Job]:
        reply = self.stub.ListJobs(pb.ListJobsRequest(model=model or "", limit=limit))
        return [job_from_pb(j) for j in reply.jobs]

    @translate
    def cancel_job(self, job_id: str) -> Job:
        return job_from_pb(self.stub.CancelJob(pb.JobRequest(job_id=job_id)))

    @translate
    def submit_feedback(self, job_id: str, examples: Sequence[Example], idempotency_key: str) -> Submission:
        request = pb.FeedbackRequest(
            job_id=job_id, idempotency_key=idempotency_key, examples=examples_to_pb(examples)
        )
        return submission_from_pb(self.stub.SubmitFeedback(request), idempotency_key)

    @translate
    def submit_gradients(
        self, job_id: str, parts: Mapping[str, torch.Tensor], idempotency_key: str, loss: float | None = None
    ) -> Submission:
        header = pb.GradientHeader(job_id=job_id, idempotency_key=idempotency_key, loss=loss)

        def stream() -> Iterator[pb.GradientRequest]:
            yield pb.GradientRequest(header=header)
            for chunk in to_chunks(parts, self.chunk_bytes):
                yield pb.GradientRequest(chunk=chunk)

        reply = self.stub.SubmitGradients(stream())
        return submission_from_pb(reply, idempotency_key)
