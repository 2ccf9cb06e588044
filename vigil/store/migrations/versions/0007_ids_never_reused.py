"""Integer ids are never given again on SQLite: AUTOINCREMENT on every table whose primary
key is one integer.

Without it SQLite hands a deleted row's id (the highest) to the next insert, so a client
still holding segment 3 addressed the new segment 3. PostgreSQL and MariaDB sequences
never reuse a value: nothing to do there.

SQLite cannot add AUTOINCREMENT in place; each table is copied (Alembic's batch
"recreate"), the way SQLite's own documentation changes a table: with foreign keys off,
since dropping the original table while they are on would first delete its rows, and
its ON DELETE CASCADE would empty the children (failures, recoveries, steps…), and
renaming would rewrite the children's references. ``PRAGMA foreign_keys`` is a no-op
inside a transaction, so the migration ends the one it runs in (the earlier revisions
are then committed), copies the tables in a transaction of its own with the keys off,
checks every reference with ``PRAGMA foreign_key_check`` and turns the keys on again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "segments",
    "hosts",
    "failures",
    "recoveries",
    "steps",
    "events",
    "dead_letters",
    "subscriptions",
    "guest_failures",
    "masakari_notifications",
)


def _recreate(table: str, *, autoincrement: bool) -> None:
    with op.batch_alter_table(
        table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def _each_table(*, autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # vigil's SQLite connections leave BEGIN/COMMIT to us (vigil.store.db.make_engine).
    bind.exec_driver_sql("COMMIT")
    bind.exec_driver_sql("PRAGMA foreign_keys = OFF")
    bind.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        for table in TABLES:
            _recreate(table, autoincrement=autoincrement)
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise RuntimeError(f"migration 0007 would break references: {broken[:5]}")
    except BaseException:
        bind.exec_driver_sql("ROLLBACK")
        bind.exec_driver_sql("PRAGMA foreign_keys = ON")
        bind.exec_driver_sql("BEGIN")  # what the caller's transaction ends
        raise
    bind.exec_driver_sql("COMMIT")
    bind.exec_driver_sql("PRAGMA foreign_keys = ON")
    bind.exec_driver_sql("BEGIN IMMEDIATE")  # Alembic records the revision in it


def upgrade() -> None:
    _each_table(autoincrement=True)


def downgrade() -> None:
    _each_table(autoincrement=False)
