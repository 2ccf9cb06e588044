"""Tenancy (issue 18): the project of each instance, events stamped with it, and a
project member's webhook subscriptions.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_projects",
        sa.Column("instance_id", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_projects")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(
        op.f("ix_instance_projects_project_id"), "instance_projects", ["project_id"], unique=False
    )
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("project_id", sa.String(255), nullable=True))
        batch.create_index(op.f("ix_events_project_id"), ["project_id"], unique=False)
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("project_id", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("project_id")
    with op.batch_alter_table("events") as batch:
        batch.drop_index(op.f("ix_events_project_id"))
        batch.drop_column("project_id")
    op.drop_index(op.f("ix_instance_projects_project_id"), table_name="instance_projects")
    op.drop_table("instance_projects")
