"""Alembic environment: the URL and connection come from llmk.platform.migrate, never the env."""

from alembic import context

from llmk.platform.database import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
