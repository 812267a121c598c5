"""Fixtures: worker processes stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.inference.inference_processes import ServiceProcess, start_service


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
