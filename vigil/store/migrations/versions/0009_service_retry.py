"""The host service keeper's retry state is persisted, so that a restarted vigil resumes
a retry where it was.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("host_services") as batch:
        batch.add_column(
            sa.Column("action_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("next_attempt_at", sa.Double(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("host_services") as batch:
        batch.drop_column("next_attempt_at")
        batch.drop_column("action_attempts")
