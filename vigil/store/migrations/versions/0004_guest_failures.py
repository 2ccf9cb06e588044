"""Guest OS failures reported by the host agents' libvirt monitors: the folded failure
episodes of instances (with their restart step) and the ids of the reports received.

Revision ID: 0004
Revises: 0003 (Masakari compatibility, built at the same time)
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "guest_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("seen_count", sa.Integer(), nullable=False),
        sa.Column("occurrences", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("next_restart_at", sa.Double(), nullable=False),
        sa.Column("action_status", sa.String(length=32), nullable=True),
        sa.Column("action_attempts", sa.Integer(), nullable=False),
        sa.Column("action_detail", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guest_failures")),
        **MYSQL,
    )
    op.create_index(op.f("ix_guest_failures_instance_id"), "guest_failures", ["instance_id"])
    op.create_index(op.f("ix_guest_failures_status"), "guest_failures", ["status"])
    op.create_table(
        "guest_reports",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("failure_id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["failure_id"],
            ["guest_failures.id"],
            name=op.f("fk_guest_reports_failure_id_guest_failures"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guest_reports")),
        **MYSQL,
    )
    op.create_index(op.f("ix_guest_reports_failure_id"), "guest_reports", ["failure_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_guest_reports_failure_id"), table_name="guest_reports")
    op.drop_table("guest_reports")
    op.drop_index(op.f("ix_guest_failures_status"), table_name="guest_failures")
    op.drop_index(op.f("ix_guest_failures_instance_id"), table_name="guest_failures")
    op.drop_table("guest_failures")
