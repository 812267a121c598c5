"""What every command shares: the deployment, a store session, NAME@REF parsing, the --json flag.

Heavy modules (torch, grpc, the store) are imported inside the calls that need them, so `llmk --help`
starts without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.errors import InvalidInput

if TYPE_CHECKING:
    from services.store.interface import HistoryClient, StoreClient

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")]


def deployment(settings: Settings | None = None) -> Deployment:
    """The deployment the command runs in, from `settings` (default: the environment's)."""
    return Deployment(settings or Settings())


@dataclass
class Session:
    settings: Settings
    store: StoreClient


@contextmanager
def store_session() -> Iterator[Session]:
    settings = Settings()
    store = deployment(settings).store()
    try:
        yield Session(settings, store)
    finally:
        store.close()


@contextmanager
def history() -> Iterator[HistoryClient]:
    """The store's metadata alone: for commands that list or move refs, which then start without torch."""
    found = deployment().history()
    try:
        yield found
    finally:
        found.close()


def split_ref(text: str) -> tuple[str, str | None]:
    name, _, ref = text.partition("@")
    if not name:
        raise InvalidInput(f"expected NAME or NAME@REF, got {text!r}")
    return name, ref or None
