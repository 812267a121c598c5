"""The composition root: the one module that imports every tier, and where the CLI's deployment mode
is chosen.

The shared package never imports a service, so the CLI cannot reach the tiers on its own; this module hands
it a `Tiers` object (see llmk.cli.context) whose factories choose each tier's client from the Settings: the
gRPC client when the settings name the tier's address, else the tier in this process (llmk.app.clients
lists both sides of every tier). The store's factory is llmk.client.connect, below the services, because
the inference and optimizer services hold store clients too.

Each tier is imported only when a command asks for it, so `llmk --help` and the store commands stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from llmk.cli import main as cli
from llmk.config import Settings

if TYPE_CHECKING:
    from celery import Celery

    from llmk.app.clients import InferenceClient, JobsClient


class Tiers:
    """The tiers as the CLI reaches them: their clients, and their service entry points."""

    def inference(self, settings: Settings, model: str, ref: str | None) -> InferenceClient:
        """`model` at `ref`: the worker at LLMK_INFERENCE_ADDRESS, else served in this process."""
        if settings.inference_address:
            from llmk.rpc.inference import GrpcInferenceClient
            from llmk.rpc.security import Tls

            s = settings
            return GrpcInferenceClient(
                s.inference_address, model, ref, s.auth_token, s.max_message_bytes, Tls.of(s)
            )
        from services.inference.client import LocalInferenceClient

        return LocalInferenceClient(settings, model, ref)

    @contextmanager
    def jobs(self, settings: Settings, worker: bool = True) -> Iterator[JobsClient]:
        """The optimizer at LLMK_OPTIMIZER_ADDRESS, else its use cases in this process, with a job worker
        on a thread when `worker` (jobs then run only while the command does)."""
        if settings.optimizer_address:
            from llmk.rpc.jobs import GrpcOptimizerClient
            from llmk.rpc.security import Tls

            s = settings
            client = GrpcOptimizerClient(
                s.optimizer_address, s.auth_token, s.max_message_bytes, s.chunk_bytes, Tls.of(s)
            )
            try:
                yield client
            finally:
                client.close()
            return
        from services.optimizer.main import embedded

        with embedded(settings, worker) as jobs:
            yield jobs

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
    cli.run(Tiers())


if __name__ == "__main__":
    run()
