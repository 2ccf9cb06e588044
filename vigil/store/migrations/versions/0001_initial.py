"""The initial schema: segments, hosts, instance policies, failures, recoveries, steps
and the cloud-wide control row.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every table: utf8mb4 with a binary collation on MySQL/MariaDB (ignored elsewhere).
MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("default_policy", sa.String(length=32), nullable=False),
        sa.Column("max_failed_share", sa.Double(), nullable=False),
        sa.Column("max_parallel_evacuations", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("name", name=op.f("uq_segments_name")),
        **MYSQL,
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("segment", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        sa.Column("reserved", sa.Boolean(), nullable=False),
        sa.Column("fencing", sa.JSON(), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=False),
        sa.Column("state_changed_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment"], ["segments.name"], name=op.f("fk_hosts_segment_segments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
        **MYSQL,
    )
    op.create_index(op.f("ix_hosts_segment"), "hosts", ["segment"])
    op.create_table(
        "instance_policies",
        sa.Column("instance_id", sa.String(length=255), nullable=False),
        sa.Column("policy", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_policies")),
        **MYSQL,
    )
    op.create_table(
        "failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host"], ["hosts.name"], name=op.f("fk_failures_host_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failures")),
        **MYSQL,
    )
    op.create_index(op.f("ix_failures_host"), "failures", ["host"])
    op.create_index(op.f("ix_failures_status"), "failures", ["status"])
    op.create_table(
        "recoveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("failure_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("segment", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["failure_id"],
            ["failures.id"],
            name=op.f("fk_recoveries_failure_id_failures"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host"], ["hosts.name"], name=op.f("fk_recoveries_host_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recoveries")),
        **MYSQL,
    )
    op.create_index(op.f("ix_recoveries_failure_id"), "recoveries", ["failure_id"])
    op.create_index(op.f("ix_recoveries_host"), "recoveries", ["host"])
    op.create_index(op.f("ix_recoveries_status"), "recoveries", ["status"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recovery_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=255), nullable=True),
        sa.Column("instance_name", sa.String(length=255), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["recovery_id"],
            ["recoveries.id"],
            name=op.f("fk_steps_recovery_id_recoveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_steps")),
        sa.UniqueConstraint("recovery_id", "seq", name=op.f("uq_steps_recovery_id_seq")),
        **MYSQL,
    )
    op.create_index(op.f("ix_steps_status"), "steps", ["status"])
    op.create_table(
        "control",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_control")),
        **MYSQL,
    )


def downgrade() -> None:
    for table in ("control", "steps", "recoveries", "failures", "instance_policies", "hosts"):
        op.drop_table(table)
    op.drop_table("segments")
