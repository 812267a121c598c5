"""The composition root: the one module that imports every tier. `llmk` starts here.

The shared package never imports a service, so the CLI cannot reach the tiers on its own; this module hands
it a `Tiers` object (see llmk.cli.context) that runs a tier's service or serves a tier inside the command.
Each tier is imported only when a command asks for it, so `llmk --help` and the store commands stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from llmk.cli import main as cli
from llmk.config import Settings

if TYPE_CHECKING:
    from celery import Celery

    from llmk.app.jobs import JobService


class Tiers:
    """The tiers as the CLI reaches them: service entry points and in-process use cases."""

    def serve(self, tier: str, settings: Settings) -> None:
        if tier == "store":
            from services.store.main import main
        elif tier == "inference":
            from services.inference.main import main
        else:
            from services.optimizer.main import main
        main(settings)

    def local_inference(self, settings: Settings, name: str, ref: str | None) -> LocalInference:
        return LocalInference(settings, name, ref)

    def inference_worker(
        self, settings: Settings, app: Celery, name: str, ref: str | None
    ) -> AbstractContextManager[Any]:
        from services.inference.main import embedded_worker

        return embedded_worker(settings, app, name, ref)

    def embedded_optimizer(self, settings: Settings, worker: bool) -> AbstractContextManager[JobService]:
        from services.optimizer.main import embedded

        return embedded(settings, worker)


class LocalInference:
    """The model served in this process for one command, built from the store named by the settings."""

    def __init__(self, settings: Settings, name: str, ref: str | None):
        from llmk.client import connect
        from services.inference.host import Host

        self.store = connect(settings)
        one = settings.model_copy(update={"max_sequences": 1, "version_poll_seconds": 0.0})
        self.host = Host(one, self.store)
        self.host.load(name, ref)

    def classify(self, texts: list[str], labels: list[str], template: str) -> dict[str, Any]:
        answer = self.host.classify(texts, labels, template)
        results = [
            {"label": s.label, "probabilities": s.probabilities, "prompt_tokens": s.prompt_tokens}
            for s in answer.results
        ]
        return {"version": answer.version, "results": results}

    def generate(self, request: dict[str, Any]) -> Iterator[str | dict[str, Any]]:
        from services.inference.engine.generator import Request

        for item in self.host.generate(Request(**request)):
            if isinstance(item, str):
                yield item
            else:
                yield {
                    "version": item.version,
                    "finish_reason": item.finish_reason,
                    "prompt_tokens": item.prompt_tokens,
                    "completion_tokens": item.completion_tokens,
                }

    def close(self) -> None:
        self.host.close()
        self.store.close()


def run() -> None:
    """The `llmk` console script."""
    cli.run(Tiers())


if __name__ == "__main__":
    run()
