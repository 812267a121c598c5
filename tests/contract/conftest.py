"""The contract suite runs every test against the in-process client and the gRPC client (streaming the
bytes, or reading them from the object files), each over SQLite and PostgreSQL, so the transports and the
backends cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.versions import CommitInfo
from services.store.adapters.objects import ObjectStore
from services.store.interface import StoreClient
from services.store.usecases.store import Store

MODEL = "tiny"


@dataclass
class Env:
    """A client, the settings behind it, and a second store on the same database and object
    directory: what another process sees, for checks the client API does not offer."""

    client: StoreClient
    settings: Settings
    inspect: Store
    transport: str
    model: str = MODEL
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    first: int = 0

    @property
    def objects(self) -> Path:
        return self.settings.objects_path

    def head(self, branch: str = "main") -> int:
        return self.client.version(self.model, branch).id

    def history(self) -> list[tuple[int, int | None]]:
        """Every version of the model (all branches) as (id, parent): what a failure must not change."""
        return [(v.id, v.parent) for v in self.inspect.catalog.versions(self.model)]


@pytest.fixture(params=["local", "grpc", "files"])
def transport(request: pytest.FixtureRequest) -> str:
    """local: in-process; grpc: the service; files: the service, with reads taken from the object files
    (a client that sees the store's object directory, LLMK_STORE_OBJECT_DIR)."""
    return request.param


@pytest.fixture
def make_env(
    transport: str, settings: Settings, grpc_server: Callable, llama_tiny
) -> Iterator[Callable[..., Env]]:
    """Factory: an Env over `settings` changed by keyword overrides, llama-tiny imported as `tiny`."""
    stores: list[Store] = []

    def make(import_tiny: bool = True, **overrides: object) -> Env:
        s = settings.model_copy(update=overrides)
        if transport == "local":
            stores.append(Deployment(s).local_store())
            client: StoreClient = stores[-1]
        else:
            client = grpc_server(s).client
            if transport == "files":
                client.objects = ObjectStore(s.objects_path, readonly=True)
        stores.append(Deployment(s).local_store())
        env = Env(client, s, stores[-1], transport)
        if import_tiny:
            t = llama_tiny
            v = client.create_model(MODEL, t.tensors, t.config, t.files, CommitInfo(message="import"))
            env.tensors, env.first = t.tensors, v.id
        return env

    yield make
    for store in stores:
        store.catalog.engine.dispose()


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()
