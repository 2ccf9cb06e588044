"""Change revisions: a counter raised by every write to hosts, recoveries, steps,
segments or the control row, and each host's last revision, so that the engine reads
again only the hosts that changed (issue 16: 10,000 hosts).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    revisions = op.create_table(
        "revisions",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("full", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revisions")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.bulk_insert(revisions, [{"id": 1, "n": 0, "full": 0}])
    op.create_table(
        "host_revisions",
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("host", name=op.f("pk_host_revisions")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(
        op.f("ix_host_revisions_revision"), "host_revisions", ["revision"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_host_revisions_revision"), table_name="host_revisions")
    op.drop_table("host_revisions")
    op.drop_table("revisions")
