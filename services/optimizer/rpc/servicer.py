"""gRPC Optimizer: each handler decodes, calls one JobService use case, encodes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from llmk.errors import InvalidInput
from llmk.platform.tensor_stream import from_chunks
from llmk.v1 import common_pb2, optimizer_pb2_grpc
from llmk.v1 import optimizer_pb2 as pb
from services.optimizer.rpc import client as codec
from services.optimizer.usecases.jobs import JobService

SERVICE = "llmk.v1.Optimizer"
MUTATING = {f"/{SERVICE}/{m}" for m in ("CreateJob", "CancelJob", "SubmitGradients", "SubmitFeedback")}


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServicer):
    def __init__(self, jobs: JobService, max_stream_bytes: int):
        self.jobs = jobs
        self.max_stream_bytes = max_stream_bytes

    def CreateJob(self, request: pb.CreateJobRequest, context: grpc.ServicerContext) -> pb.JobInfo:
        job = self.jobs.create_job(
            codec.spec_from_request(request),
            codec.examples_from_pb(request.validation),
            request.idempotency_key or None,
        )
        return codec.job_to_pb(job)

    def GetJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.JobInfo:
        return codec.job_to_pb(self.jobs.get_job(request.job_id))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.JobList:
        jobs = self.jobs.list_jobs(request.model or None, request.limit or 100)
        return pb.JobList(jobs=[codec.job_to_pb(j) for j in jobs])

    def CancelJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.JobInfo:
        return codec.job_to_pb(self.jobs.cancel_job(request.job_id))

    def SubmitGradients(
        self, request_iterator: Iterator[pb.GradientRequest], context: grpc.ServicerContext
    ) -> pb.SubmitReply:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidInput("a gradient stream must start with its header")
        parts = from_chunks((_chunk(r) for r in request_iterator), self.max_stream_bytes)
        h = first.header
        loss = h.loss if h.HasField("loss") else None
        return codec.submission_to_pb(self.jobs.submit_gradients(h.job_id, parts, h.idempotency_key, loss))

    def SubmitFeedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext) -> pb.SubmitReply:
        examples = codec.examples_from_pb(request.examples)
        return codec.submission_to_pb(
            self.jobs.submit_feedback(request.job_id, examples, request.idempotency_key)
        )


def _chunk(request: pb.GradientRequest) -> common_pb2.TensorChunk:
    if not request.HasField("chunk"):
        raise InvalidInput("a gradient stream has one header, then tensor chunks only")
    return request.chunk
