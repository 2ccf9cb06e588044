"""Host services: the latest report of each host agent's service watch (nova-compute,
libvirtd) and what vigil did to the host's compute service because of it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "host_services",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("reported_at", sa.Double(), nullable=False),
        sa.Column("hold", sa.String(length=32), nullable=False),
        sa.Column("hold_reason", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host"],
            ["hosts.name"],
            name=op.f("fk_host_services_host_hosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("host", name=op.f("pk_host_services")),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("host_services")
