"""the customer-service tier's completions and the feedback on them

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "support_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "support_feedback",
        sa.Column(
            "completion_id",
            sa.String(64),
            sa.ForeignKey("support_completions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("correction", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("support_feedback")
    op.drop_table("support_completions")
