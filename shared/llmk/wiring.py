"""The one place that picks adapters: SQLite + local objects + in-process events by default,
PostgreSQL and RabbitMQ when the settings name them. Same use cases either way."""

from __future__ import annotations

from llmk.adapters.db import Catalog, make_engine
from llmk.adapters.migrate import upgrade
from llmk.adapters.objects import ObjectStore
from llmk.app.store import Store
from llmk.bus.events import AmqpEvents, LocalEvents, events_for
from llmk.config import Settings

_local_events: dict[str, LocalEvents] = {}


def open_events(settings: Settings) -> LocalEvents | AmqpEvents:
    """One in-process bus per broker URL so a store and its workers in one process share it."""
    events = events_for(settings.broker_url)
    if isinstance(events, LocalEvents):
        return _local_events.setdefault(settings.broker_url, events)
    return events


def open_store(settings: Settings) -> Store:
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    if settings.auto_migrate:
        upgrade(engine)
    objects = ObjectStore(settings.objects_path, settings.max_header_bytes)
    return Store(
        Catalog(engine),
        objects,
        open_events(settings),
        settings.cache_chain_length,
        settings.gc_grace_seconds,
        settings.snapshot_cache_bytes,
    )
