"""Alembic environment: the URL and connection come from llmk.adapters.migrate, never the env."""

from alembic import context

from llmk.adapters.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
