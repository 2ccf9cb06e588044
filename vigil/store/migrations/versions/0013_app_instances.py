"""Application checks (issue 17): per instance with declared checks, its declaration,
the state of its checks and its current or last episode.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "app_instances",
        sa.Column("instance_id", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("declaration", sa.JSON(), nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("last_beat_at", sa.Double(), nullable=True),
        sa.Column("reported_at", sa.Double(), nullable=False),
        sa.Column("episode", sa.JSON(), nullable=True),
        sa.Column("episode_open", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_app_instances")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(op.f("ix_app_instances_host"), "app_instances", ["host"], unique=False)
    op.create_index(
        op.f("ix_app_instances_episode_open"), "app_instances", ["episode_open"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_app_instances_episode_open"), table_name="app_instances")
    op.drop_index(op.f("ix_app_instances_host"), table_name="app_instances")
    op.drop_table("app_instances")
