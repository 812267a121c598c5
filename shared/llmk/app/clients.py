"""The one typed interface of each tier, as its callers (the CLI, the other tiers, tests) reach it.

Each has an in-process implementation and a gRPC one that raise the same llmk errors and return the same
records; tests/contract runs one suite per tier against both. Which one a caller gets is chosen from the
Settings in one module, llmk.client: connect and connect_history for the store, inference and jobs for the
other tiers (whose in-process side services/compose.py hands in, as this package never imports a service).

  tier       interface        in-process                                   gRPC
  store      StoreClient      llmk.app.store.Store                         llmk.rpc.store.GrpcStoreClient
   metadata  HistoryClient    llmk.app.history.History                     llmk.rpc.history.GrpcHistoryClient
  inference  InferenceClient  services.inference.client (over its Host)    llmk.rpc.inference
  optimizer  JobsClient       llmk.app.jobs.JobService                     llmk.rpc.jobs.GrpcOptimizerClient
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch and the store's use cases load only in the commands that need tensors
    import torch

    from llmk.app.inference_records import Classification, Finished, GenerateRequest
    from llmk.app.job_records import Example, Job, JobSpec, Submission
    from llmk.app.reading import Change, Step
    from llmk.app.store import CommitInfo
    from llmk.app.upkeep import VersionStats
    from llmk.domain.deltas import Delta
    from llmk.domain.versions import Model, Ref, Version


class HistoryClient(Protocol):
    """The store's metadata: models, their versions and refs. Never touches a tensor, so its callers (the
    listing and ref commands) start without torch."""

    def model(self, name: str) -> Model: ...
    def models(self) -> list[Model]: ...
    def refs(self, model: str) -> list[Ref]: ...
    def version(self, model: str, ref: str | None = None) -> Version: ...
    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]: ...
    def branch(self, model: str, name: str, from_ref: str | None = None) -> Ref: ...
    def tag(self, model: str, name: str, ref: str | None = None) -> Ref: ...
    def unfreeze(self, model: str, patterns: list[str]) -> Model: ...
    def head(self, model: str, branch: str = "main") -> int: ...
    def changed(self, model: str, a: int, b: int) -> list[str]: ...
    def close(self) -> None: ...


class StoreClient(HistoryClient, Protocol):
    """The parameter store: its history, and tensors in and out."""

    def create_model(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        config: dict[str, Any],
        files: Mapping[str, bytes],
        info: CommitInfo = ...,
    ) -> Version: ...
    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = ...,
    ) -> Version: ...
    def commit_full(
        self,
        model: str,
        tensors: Mapping[str, torch.Tensor],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = ...,
    ) -> Version: ...
    def file(self, model: str, name: str) -> bytes: ...
    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> dict[str, torch.Tensor]: ...
    def export(self, model: str, ref: str | None, out: Path, selector: str = "") -> int: ...
    def diff(self, model: str, a: str, b: str) -> list[Change]: ...
    def rollback(
        self, model: str, to: str, branch: str = "main", author: str = "llmk", force_frozen: bool = False
    ) -> Version: ...
    def freeze(self, model: str, patterns: list[str]) -> Model: ...
    def squash(self, model: str, ref: str | None = None, author: str = "llmk") -> Version: ...
    def gc(self, dry_run: bool = False) -> list[str]: ...
    def stats(self, model: str) -> list[VersionStats]: ...
    def steps(self, model: str, a: int, b: int) -> list[Step] | None: ...


class InferenceClient(Protocol):
    """One model served at NAME@REF: a pinned REF (id, tag or branch) must be the version that answers."""

    def classify(
        self, texts: Sequence[str], labels: Sequence[str] = (), template: str = ""
    ) -> Classification:
        """Empty labels and template: the model's stored task (or the worker's defaults)."""
        ...

    def generate(self, request: GenerateRequest) -> Iterator[str | Finished]:
        """Text pieces as they are produced, then one Finished. Closing the iterator early cancels it."""
        ...

    def version(self) -> int:
        """The version answering now (0 when none): pin a request to it to know its version first."""
        ...

    def close(self) -> None: ...


class JobsClient(Protocol):
    """The optimizer: jobs that turn feedback and gradients into committed versions."""

    def create_job(
        self, spec: JobSpec, validation: Sequence[Example] = (), idempotency_key: str | None = None
    ) -> Job: ...
    def submit_feedback(
        self, job_id: str, examples: Sequence[Example], idempotency_key: str
    ) -> Submission: ...
    def submit_gradients(
        self, job_id: str, parts: Mapping[str, torch.Tensor], idempotency_key: str, loss: float | None = None
    ) -> Submission: ...
    def get_job(self, job_id: str) -> Job: ...
    def list_jobs(self, model: str | None = None, limit: int = 100) -> list[Job]: ...
    def cancel_job(self, job_id: str) -> Job: ...
