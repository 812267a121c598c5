"""The store tier's factories: the gRPC client when LLMK_STORE_ADDRESS is set, else the store in this process.

`connect` gives the whole store (StoreClient); `connect_history` only its metadata (HistoryClient), which
loads neither torch nor the object files, so the listing and ref commands start fast. Both implementations
raise the same llmk errors and return the same records; tests/contract runs one suite against both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmk.config import Settings

if TYPE_CHECKING:
    from llmk.app.clients import HistoryClient, StoreClient


def connect(settings: Settings) -> StoreClient:
    if settings.store_address:
        from llmk.adapters.objects import ObjectStore
        from llmk.rpc.security import Tls
        from llmk.rpc.store import GrpcStoreClient

        beside = settings.store_object_dir
        return GrpcStoreClient(
            settings.store_address,
            settings.auth_token,
            settings.max_message_bytes,
            settings.chunk_bytes,
            Tls.of(settings),
            ObjectStore(beside, settings.max_header_bytes, readonly=True) if beside else None,
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


__all__ = ["connect", "connect_history"]
