"""why a monitor alert cleared (too few mentions, or the share fell below threshold minus hysteresis)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("monitor_alerts") as t:
        t.add_column(sa.Column("cleared_reason", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("monitor_alerts") as t:
        t.drop_column("cleared_reason")
