"""Schema migrations with Alembic, run by `llmk db upgrade` or when the store opens.

Every process opens the store, so the common case, a database already at HEAD, is one SELECT and does not
import Alembic (a third of a second). HEAD must name the newest script; a unit test checks it does.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

SCRIPTS = Path(__file__).with_name("migrations")
HEAD = "0006"


def upgrade(engine: Engine, revision: str = "head") -> None:
    if revision == "head" and current(engine) == HEAD:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # processes starting together migrate one at a time
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7412)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current(engine: Engine) -> str | None:
    """The revision the database is at; None when it was never migrated."""
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
        except DBAPIError:  # no alembic_version table yet
            return None
