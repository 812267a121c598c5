"""Opening the store skips Alembic when the database is already current, so HEAD must name the newest
migration script: a new script without a new HEAD would never be applied by an opening store."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from llmk.platform.database import make_engine
from llmk.platform.migrate import HEAD, SCRIPTS, current, upgrade


def test_head_names_the_newest_migration_script() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    assert ScriptDirectory.from_config(cfg).get_heads() == [HEAD]


def test_a_new_database_is_migrated_to_head_and_a_current_one_left_alone(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    assert current(engine) is None
    upgrade(engine)
    assert current(engine) == HEAD
    upgrade(engine)  # already current: one SELECT, nothing else
    assert current(engine) == HEAD
    engine.dispose()
