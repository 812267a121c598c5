"""optimizer jobs and their inputs

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("idempotency_key", sa.String(200), unique=True),
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("tensors", sa.JSON, nullable=False),
        sa.Column("validation", sa.String(64)),
        sa.Column("items", sa.BigInteger, nullable=False),
        sa.Column("pool", sa.BigInteger),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("head_version", sa.BigInteger),
        sa.Column("metric", sa.Float),
        sa.Column("baseline", sa.Float),
        sa.Column("state_object", sa.String(64)),
        sa.Column("commits", sa.JSON, nullable=False),
        sa.Column("owner", sa.String(32)),
        sa.Column("lease_until", sa.Float),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "job_inputs",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("object", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "idempotency_key"),
    )


def downgrade() -> None:
    op.drop_table("job_inputs")
    op.drop_table("jobs")
