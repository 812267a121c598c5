"""The composition root: the one module that imports every tier.

The shared package never imports a service, so the CLI cannot reach the tiers on its own; this module hands
it a `Tiers` object (see llmk.cli.context). The deployment mode (each tier over gRPC, or in this process) is
chosen in one place, llmk.client, from the Settings; this module gives it the in-process inference and
optimizer tiers, and starts the services (`llmk serve TIER`).

Each tier is imported only when a command asks for it, so `llmk --help` and the store commands stay fast.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from llmk import client
from llmk.cli import main as cli
from llmk.config import Settings

if TYPE_CHECKING:
    from celery import Celery

    from llmk.app.clients import InferenceClient, JobsClient


class Tiers:
    """The tiers as the CLI reaches them: their clients, and their service entry points. llmk.client
    chooses gRPC or in-process; this class hands it the in-process side, imported only when chosen."""

    def inference(self, settings: Settings, model: str, ref: str | None) -> InferenceClient:
        def in_process() -> InferenceClient:
            from services.inference.client import LocalInferenceClient

            return LocalInferenceClient(settings, model, ref)

        return client.inference(settings, model, ref, in_process)

    def jobs(self, settings: Settings, worker: bool = True) -> AbstractContextManager[JobsClient]:
        """With a job worker on a thread when `worker`, in process (jobs then run only while the command
        does)."""

        def in_process() -> AbstractContextManager[JobsClient]:
            from services.optimizer.main import embedded

            return embedded(settings, worker)

        return client.jobs(settings, in_process)

    def inference_worker(
        self, settings: Settings, app: Celery, name: str, ref: str | None
    ) -> AbstractContextManager[Any]:
        """A worker on the inference queue in this process (the monitor's embedded mode)."""
        from services.inference.main import embedded_worker

        return embedded_worker(settings, app, name, ref)

    def serve(self, tier: str, settings: Settings) -> None:
        if tier == "store":
            from services.store.main import main
        elif tier == "inference":
            from services.inference.main import main
        else:
            from services.optimizer.main import main
        main(settings)


def run() -> None:
    """The `llmk` console script."""
    from services.rec.main import app as rec

    cli.app.add_typer(rec, name="rec")
    cli.run(Tiers())


if __name__ == "__main__":
    run()
