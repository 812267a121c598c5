"""Fixtures: an embedded optimizer (SQLite, object files, memory:// broker) over a tiny seeded Llama model,
and a real Celery worker on a thread. Each test gets its own home folder and its own queue name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker

from llmk.bootstrap import Deployment
from llmk.config import Settings
from services.optimizer.main import Runtime, wire
from services.store.adapters.importers import load_source


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("llmk"),
        broker_url="memory://",
        optimizer_queue=f"optimizer-test-{uuid.uuid4().hex[:8]}",
        optimizer_lease_seconds=30,
    )


@pytest.fixture(scope="module")
def runtime(settings: Settings) -> Iterator[Runtime]:
    """The optimizer's use cases and runner, wired as in production (one per test module)."""
    rt = wire(Deployment(settings))
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def worker(runtime: Runtime) -> Iterator[None]:
    """A real Celery worker consuming the module's optimizer queue on a thread."""
    with start_worker(
        runtime.app,
        pool="solo",
        perform_ping_check=False,
        queues=[runtime.deployment.settings.optimizer_queue],
        shutdown_timeout=60,
    ):
        yield


@pytest.fixture
def model(runtime: Runtime) -> str:
    """A fresh copy of the tiny seeded Llama under its own name, so tests sharing a store stay apart."""
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    imported = load_source("synthetic:llama-tiny")
    runtime.store.create_model(name, imported.tensors, imported.config, imported.files)
    return name
