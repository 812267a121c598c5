"""Where a deployment mode is chosen, for every tier: its gRPC client when the Settings name the tier's
address (LLMK_STORE_ADDRESS, LLMK_INFERENCE_ADDRESS, LLMK_OPTIMIZER_ADDRESS), else the tier in this process.

The store's in-process side is below the services (they hold store clients too), so it is built here. The
inference and optimizer tiers live in services/, which this package never imports: their in-process side is
handed in by the composition root (services/compose.py) as a constructor, called only when chosen. Each
side raises the same llmk errors and returns the same records (llmk.app.clients lists both sides of every
tier; tests/contract runs one suite against both). `connect_history` gives only the store's metadata, which
loads neither torch nor the object files, so the listing and ref commands start fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from llmk.config import Settings

if TYPE_CHECKING:
    from llmk.app.clients import HistoryClient, InferenceClient, JobsClient, StoreClient


def connect(settings: Settings) -> StoreClient:
    if settings.store_address:
        from llmk.rpc.security import Tls
        from llmk.rpc.store import GrpcStoreClient
        from llmk.wiring import open_reader_objects

        return GrpcStoreClient(
            settings.store_address,
            settings.auth_token,
            settings.max_message_bytes,
            settings.chunk_bytes,
            Tls.of(settings),
            open_reader_objects(settings),
        )
    from llmk.wiring import open_store

    return open_store(settings)


def connect_history(settings: Settings) -> HistoryClient:
    if settings.store_address:
        from llmk.rpc.history import GrpcHistoryClient
        from llmk.rpc.security import Tls

        return GrpcHistoryClient(
            settings.store_address, settings.auth_token, settings.max_message_bytes, Tls.of(settings)
        )
    from llmk.wiring import open_history

    return open_history(settings)


def inference(
    settings: Settings, model: str, ref: str | None, in_process: Callable[[], InferenceClient]
) -> InferenceClient:
    """`model` at `ref`: the worker at LLMK_INFERENCE_ADDRESS, else `in_process()`."""
    if settings.inference_address:
        from llmk.rpc.inference import GrpcInferenceClient
        from llmk.rpc.security import Tls

        s = settings
        return GrpcInferenceClient(
            s.inference_address, model, ref, s.auth_token, s.max_message_bytes, Tls.of(s)
        )
    return in_process()


@contextmanager
def jobs(
    settings: Settings, in_process: Callable[[], AbstractContextManager[JobsClient]]
) -> Iterator[JobsClient]:
    """The optimizer at LLMK_OPTIMIZER_ADDRESS, else `in_process()`; closed at the end either way."""
    if settings.optimizer_address:
        from llmk.rpc.jobs import GrpcOptimizerClient
        from llmk.rpc.security import Tls

        s = settings
        client = GrpcOptimizerClient(
            s.optimizer_address, s.auth_token, s.max_message_bytes, s.chunk_bytes, Tls.of(s)
        )
        try:
            yield client
        finally:
            client.close()
        return
    with in_process() as found:
        yield found


__all__ = ["connect", "connect_history", "inference", "jobs"]
