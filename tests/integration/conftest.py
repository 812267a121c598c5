"""Fixtures the integration suites share: a store home holding the tiny model, and inference worker
processes stopped at teardown."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.inference.inference_processes import ServiceProcess, start_service
from tests.unit.inference.hosting import create_tiny, settings_for


@pytest.fixture
def tiny_home(tmp_path: Path) -> tuple[Path, str]:
    """A store home holding the tiny model under a unique name (events on a shared broker stay apart)."""
    from llmk.bootstrap import Deployment

    home, name = tmp_path / "home", f"tiny-{uuid.uuid4().hex[:8]}"
    create_tiny(Deployment(settings_for(home)).local_store(), name)
    return home, name


@pytest.fixture
def service() -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: service(home, model, *args, **LLMK_settings) -> a ready worker process."""
    started: list[ServiceProcess] = []

    def start(home: Path, model: str, *args: str, **settings: Any) -> ServiceProcess:
        started.append(start_service(home, model, *args, **settings))
        return started[-1]

    yield start
    for running in started:
        running.stop()
