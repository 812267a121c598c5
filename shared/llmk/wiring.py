"""The one place that picks adapters: SQLite + local objects + in-process events by default,
PostgreSQL and RabbitMQ when the settings name them. Same use cases either way.

The store's pieces are imported inside the functions: `open_history` needs only the catalog, so the commands
that use it load neither torch nor the object files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmk.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from llmk.app.history import History
    from llmk.app.ports import Objects
    from llmk.app.store import Store
    from llmk.bus.events import AmqpEvents, LocalEvents

_local_events: dict[str, LocalEvents] = {}


def open_events(settings: Settings) -> LocalEvents | AmqpEvents:
    """One in-process bus per broker URL so a store and its workers in one process share it."""
    from llmk.bus.events import LocalEvents, events_for

    events = events_for(settings.broker_url)
    if isinstance(events, LocalEvents):
        return _local_events.setdefault(settings.broker_url, events)
    return events


def open_catalog_engine(settings: Settings) -> Engine:
    """The catalog's database, migrated to the current schema when auto_migrate is on."""
    from llmk.adapters.migrate import upgrade
    from llmk.adapters.schema import make_engine

    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    if settings.auto_migrate:
        upgrade(engine)
    return engine


def open_history(settings: Settings) -> History:
    from llmk.adapters.db import Catalog
    from llmk.app.history import History

    return History(Catalog(open_catalog_engine(settings)))


def open_objects(settings: Settings, readonly: bool = False) -> Objects:
    """The object store LLMK_OBJECTS_URL names: a bucket (checked now, so a wrong setting fails at start
    with its name), else a folder."""
    if settings.objects_url.startswith("s3://"):
        from llmk.adapters.objects_s3 import open_bucket_objects

        return open_bucket_objects(settings, readonly)
    from llmk.adapters.objects import ObjectStore

    folder = Path(settings.objects_url) if settings.objects_url else settings.objects_path
    return ObjectStore(folder, settings.max_header_bytes, readonly=readonly)


def open_reader_objects(settings: Settings) -> Objects | None:
    """What a client of a remote store reads objects from itself: the bucket, or the store's folder as
    mounted here (LLMK_STORE_OBJECT_DIR); None when tensors must be streamed over gRPC."""
    if settings.objects_url.startswith("s3://"):
        return open_objects(settings, readonly=True)
    if settings.store_object_dir:
        from llmk.adapters.objects import ObjectStore

        return ObjectStore(settings.store_object_dir, settings.max_header_bytes, readonly=True)
    return None


def open_store(settings: Settings) -> Store:
    from llmk.adapters.db import Catalog
    from llmk.app.store import Store

    return Store(
        Catalog(open_catalog_engine(settings)),
        open_objects(settings),
        open_events(settings),
        settings.cache_chain_length,
        settings.gc_grace_seconds,
        settings.snapshot_cache_bytes,
    )
