"""The one place that picks adapters: SQLite + local objects + in-process events by default,
PostgreSQL and RabbitMQ when the settings name them. Same use cases either way.

The store's pieces are imported inside the functions: `open_history` needs only the catalog, so the commands
that use it load neither torch nor the object files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmk.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from llmk.app.history import History
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


def open_store(settings: Settings) -> Store:
    from llmk.adapters.db import Catalog
    from llmk.adapters.objects import ObjectStore
    from llmk.app.store import Store

    objects = ObjectStore(settings.objects_path, settings.max_header_bytes)
    return Store(
        Catalog(open_catalog_engine(settings)),
        objects,
        open_events(settings),
        settings.cache_chain_length,
        settings.gc_grace_seconds,
        settings.snapshot_cache_bytes,
    )
