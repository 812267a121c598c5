"""A real uvicorn server of the support gateway on a free loopback port, over the tiny synthetic model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from llmk.bootstrap import Deployment
from tests.conftest import make_settings

if TYPE_CHECKING:
    import uvicorn

    from llmk.config import Settings
    from services.inference.interface import InferenceClient
    from services.store.adapters.importers import Imported
    from services.support.usecases.replies import SupportService

MODEL = "tiny"


@dataclass
class Api:
    url: str  # http://127.0.0.1:PORT
    settings: Settings
    support: SupportService
    version: int  # the version of MODEL the server loads

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def talkative(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tiny random model made to write lowercase letters: every other token's (tied)
    embedding is zero, so its logit is 0 while some letter's is positive. Its replies are visible text."""
    embed = tensors["model.embed_tokens.weight"].clone()
    keep = torch.zeros(embed.shape[0], dtype=torch.bool)
    keep[ord("a") : ord("z") + 1] = True
    embed[~keep] = 0
    embed[keep] *= 40
    return {**tensors, "model.embed_tokens.weight": embed}


def import_tiny(settings: Settings, imported: Imported) -> int:
    from llmk.domain.versions import CommitInfo

    store = Deployment(settings).local_store()
    try:
        tensors = talkative(imported.tensors)
        return store.create_model(
            MODEL, tensors, imported.config, imported.files, CommitInfo(message="import")
        ).id
    finally:
        store.catalog.engine.dispose()


def in_process(settings: Settings, model: str = MODEL) -> Callable[[], InferenceClient]:
    def connect() -> InferenceClient:
        return Deployment(settings).inference(model, None, shared=True)

    return connect


@dataclass
class Running:
    server: uvicorn.Server
    thread: threading.Thread


def serve(
    settings: Settings, connect: Callable[[], InferenceClient], version: int, wait: bool = True
) -> tuple[Api, Running]:
    import uvicorn

    from services.support.main import build

    support, app = build(Deployment(settings), connect)
    support.start()
    if wait:
        assert support.wait_ready(120).ready, support.health().detail
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.02)
        assert thread.is_alive(), "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    return Api(f"http://127.0.0.1:{port}", settings, support, version), Running(server, thread)


def stop(api: Api, running: Running) -> None:
    running.server.should_exit = True
    running.thread.join(30)
    api.support.close()


def api_settings(home: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        serve_model=MODEL, max_sequences=2, max_context_tokens=256, max_new_tokens=64, max_queue=4
    )
    return make_settings(home, **{**values, **overrides})


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, llama_tiny: Imported) -> Iterator[Api]:
    """One server per test module (loading the model is most of a test's time)."""
    settings = api_settings(tmp_path_factory.mktemp("api") / "home")
    version = import_tiny(settings, llama_tiny)
    found, running = serve(settings, in_process(settings), version)
    yield found
    stop(found, running)


@pytest.fixture
def server(tmp_path: Path, llama_tiny: Imported) -> Iterator[Callable[..., Api]]:
    """Start a server of one's own: server(**settings overrides); stopped after the test."""
    started: list[tuple[Api, Running]] = []

    def start(
        connect: Callable[[], InferenceClient] | None = None, wait: bool = True, **overrides: object
    ) -> Api:
        settings = api_settings(tmp_path / f"home{len(started)}", **overrides)
        version = import_tiny(settings, llama_tiny)
        started.append(serve(settings, connect or in_process(settings), version, wait))
        return started[-1][0]

    yield start
    for found, running in started:
        stop(found, running)
