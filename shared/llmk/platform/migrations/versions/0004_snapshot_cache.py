"""snapshot sizes and last use, for the bounded snapshot cache (least recently used goes first)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as t:
        t.add_column(sa.Column("size", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("used_at", sa.DateTime(timezone=True), nullable=True))
        t.create_index("ix_snapshots_object", ["object"])


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as t:
        t.drop_index("ix_snapshots_object")
        t.drop_column("used_at")
        t.drop_column("size")
