"""What every command shares: settings, the store client, NAME@REF parsing, the --json flag."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

import typer

from llmk.client import StoreClient, connect
from llmk.config import Settings
from llmk.errors import InvalidInput

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")]


@dataclass
class Session:
    settings: Settings
    store: StoreClient


@contextmanager
def client() -> Iterator[Session]:
    settings = Settings()
    store = connect(settings)
    try:
        yield Session(settings, store)
    finally:
        store.close()


def split_ref(text: str) -> tuple[str, str | None]:
    name, _, ref = text.partition("@")
    if not name:
        raise InvalidInput(f"expected NAME or NAME@REF, got {text!r}")
    return name, ref or None
