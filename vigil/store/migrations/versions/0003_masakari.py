"""Masakari compatibility: what Masakari's API knows about segments, hosts and
notifications beyond vigil's own model (``vigil.store.masakari``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# The models of these tables live in vigil.store.masakari; importing it puts them on
# vigil's metadata wherever the schema is migrated (vigil.store.rows does not import it).
import vigil.store.masakari  # noqa: F401

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "masakari_segments",
        sa.Column("uuid", sa.String(length=36), primary_key=True),
        sa.Column("name", sa.String(length=255), nullable=False, unique=True),
        sa.Column("recovery_method", sa.String(length=32), nullable=False),
        sa.Column("service_type", sa.String(length=255), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=True),
        **MYSQL,
    )
    op.create_table(
        "masakari_hosts",
        sa.Column("uuid", sa.String(length=36), primary_key=True),
        sa.Column("name", sa.String(length=255), nullable=False, unique=True),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("control_attributes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=True),
        **MYSQL,
    )
    op.create_table(
        "masakari_notifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(length=36), nullable=False, unique=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("source_host_uuid", sa.String(length=36), nullable=False),
        sa.Column("segment_uuid", sa.String(length=36), nullable=False),
        sa.Column("generated_time", sa.Double(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("recovery_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=True),
        **MYSQL,
    )
    op.create_index(
        "ix_masakari_notifications_host", "masakari_notifications", ["hostname", "type"]
    )


def downgrade() -> None:
    op.drop_index("ix_masakari_notifications_host", table_name="masakari_notifications")
    op.drop_table("masakari_notifications")
    op.drop_table("masakari_hosts")
    op.drop_table("masakari_segments")
