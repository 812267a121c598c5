"""What every command shares: settings, the store client, the tiers, NAME@REF parsing, the --json flag.

Heavy modules (torch, grpc, the store) are imported inside the calls that need them, so `llmk --help`
starts without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer

from llmk.config import Settings
from llmk.errors import InvalidInput

if TYPE_CHECKING:
    from celery import Celery

    from llmk.app.clients import HistoryClient, InferenceClient, JobsClient, StoreClient

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")]


class Tiers(Protocol):
    """What the CLI needs from the tiers; given to `run` by the composition root (services/compose.py),
    whose factories choose in-process or gRPC from the settings."""

    def inference(self, settings: Settings, model: str, ref: str | None) -> InferenceClient: ...
    def jobs(self, settings: Settings, worker: bool = True) -> AbstractContextManager[JobsClient]: ...
    def inference_worker(
        self, settings: Settings, app: Celery, name: str, ref: str | None
    ) -> AbstractContextManager[Any]: ...
    def serve(self, tier: str, settings: Settings) -> None: ...


def tiers(ctx: typer.Context) -> Tiers:
    """The Tiers given to the running command (`app(obj=...)`)."""
    found = ctx.obj
    if found is None:
        raise RuntimeError("this command reaches the tiers: start it through services.compose (`llmk`)")
    return found


@dataclass
class Session:
    settings: Settings
    store: StoreClient


@contextmanager
def client() -> Iterator[Session]:
    from llmk.client import connect

    settings = Settings()
    store = connect(settings)
    try:
        yield Session(settings, store)
    finally:
        store.close()


@contextmanager
def history() -> Iterator[HistoryClient]:
    """The store's metadata alone: for commands that list or move refs, which then start without torch."""
    from llmk.client import connect_history

    found = connect_history(Settings())
    try:
        yield found
    finally:
        found.close()


def split_ref(text: str) -> tuple[str, str | None]:
    name, _, ref = text.partition("@")
    if not name:
        raise InvalidInput(f"expected NAME or NAME@REF, got {text!r}")
    return name, ref or None
