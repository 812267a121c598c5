"""models, versions, entries, refs and snapshots

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("frozen", sa.JSON, nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", BigId, sa.ForeignKey("models.id"), nullable=False, index=True),
        sa.Column("parent_id", BigId, sa.ForeignKey("versions.id")),
        sa.Column("basis_id", BigId, sa.ForeignKey("versions.id")),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.JSON),
        sa.Column("idempotency_key", sa.String(200)),
        sa.UniqueConstraint("model_id", "idempotency_key"),
    )
    op.create_table(
        "entries",
        sa.Column("version_id", BigId, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("name", sa.String(500), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("object", sa.String(64), nullable=False, index=True),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("dtype", sa.String(20), nullable=False),
        sa.Column("nnz", sa.BigInteger, nullable=False),
        sa.Column("nbytes", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "refs",
        sa.Column("model_id", BigId, sa.ForeignKey("models.id"), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("version_id", BigId, sa.ForeignKey("versions.id"), nullable=False),
    )
    op.create_table(
        "snapshots",
        sa.Column("version_id", BigId, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("object", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    for table in ("snapshots", "refs", "entries", "versions", "models"):
        op.drop_table(table)
