"""the monitor's scored items, rejected items and alerts

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "monitor_scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("run", sa.String(64), nullable=False, index=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("probabilities", sa.JSON, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("tickers", sa.JSON, nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.UniqueConstraint("model", "item_id"),
    )
    op.create_table(
        "monitor_rejects",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("run", sa.String(64), nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "monitor_alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("run", sa.String(64), nullable=False, index=True),
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("direction", sa.String(32), nullable=False),
        sa.Column("opened", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared", sa.DateTime(timezone=True)),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("mentions", sa.BigInteger, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("monitor_alerts")
    op.drop_table("monitor_rejects")
    op.drop_table("monitor_scores")
