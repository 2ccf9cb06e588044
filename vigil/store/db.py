"""The database engine and the schema's migrations.

``make_engine`` configures an engine the way vigil's store needs it: on SQLite, the
pragmas (WAL, foreign keys, a busy timeout) and BEGIN taken over from the sqlite3
module, so that a connection with the ``_SQLITE_IMMEDIATE`` execution option starts
its transactions ``BEGIN IMMEDIATE`` (taking the write lock up front); on a database
server, READ COMMITTED and connection health checks. ``upgrade(url)`` runs the Alembic
migrations of ``vigil/store/migrations`` (the store never migrates on its own).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from vigil.store.base import StoreUnavailable

__all__ = ["MIGRATIONS_DIR", "alembic_config", "make_engine", "unavailable", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_SQLITE_IMMEDIATE = "vigil_sqlite_begin_immediate"  # execution option read by the BEGIN hook


def make_engine(
    url: str,
    *,
    echo: bool = False,
    idle_transaction_timeout: float | None = None,
    pool: tuple[int, int, float] | None = None,
) -> Engine:
    """An engine configured for vigil: SQLite pragmas and transaction control, or READ
    COMMITTED with connection health checks for a database server, which ends any of its
    sessions left idle inside a transaction for ``idle_transaction_timeout`` seconds
    (``_limit_idle_transactions``), with ``pool`` = (pool size, overflow, timeout) for
    its connections (SQLAlchemy's 5 + 10 otherwise: a rack failure's workers waited for
    them, bench/scale.py on PostgreSQL)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each pooled connection would get its own, empty, database.
        raise ValueError("vigil needs an SQLite file (sqlite:////path/to/vigil.db), not memory")
    if parsed.get_backend_name() != "sqlite":
        sizes: dict[str, Any] = {}
        if pool is not None:
            sizes = {"pool_size": pool[0], "max_overflow": pool[1], "pool_timeout": pool[2]}
        engine = sa.create_engine(
            parsed, echo=echo, isolation_level="READ COMMITTED", pool_pre_ping=True, **sizes
        )
        if idle_transaction_timeout:
            _limit_idle_transactions(engine, idle_transaction_timeout)
        return engine

    engine = sa.create_engine(parsed, echo=echo)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (the hook below emits it), so that
        # transactions are real and may start IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")  # first: the next one may have to wait
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        immediate = connection.get_execution_options().get(_SQLITE_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _limit_idle_transactions(engine: Engine, seconds: float) -> None:
    """Have the database server end a session that sits idle inside a transaction for
    ``seconds``. Every transaction of the store is one method call that waits on nothing
    but the database, so only a frozen process (SIGSTOP, a paused VM) leaves one idle that
    long — and with it the row locks it holds, which would otherwise stop another server
    from taking its segments over (``take_segment``) for as long as it stays frozen.

    PostgreSQL: ``idle_in_transaction_session_timeout`` (milliseconds), set as the
    session is opened. MariaDB: ``idle_transaction_timeout`` (whole seconds); MySQL has no
    such variable, and the session keeps its locks until its ``wait_timeout``."""
    backend = engine.dialect.name
    log = logging.getLogger(__name__)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if backend == "postgresql":
                # SET is transactional here: committed at once, not undone by the pool's
                # rollback when the connection is returned
                cursor.execute(
                    f"SET SESSION idle_in_transaction_session_timeout = {round(seconds * 1000)}"
                )
                dbapi_connection.commit()
            elif backend in ("mysql", "mariadb"):
                try:
                    cursor.execute(f"SET SESSION idle_transaction_timeout = {math.ceil(seconds)}")
                except Exception as exc:  # MySQL: no such variable
                    log.info("database: idle transactions are not limited: %s", exc)
        finally:
            cursor.close()


@contextmanager
def unavailable() -> Iterator[None]:
    """The database away (connection refused or dropped, the session ended by the server,
    a lock that could not be had) as ``StoreUnavailable``: a condition the callers wait
    out, unlike a constraint the write broke (``IntegrityError`` stays what it is)."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise StoreUnavailable(f"database unavailable: {_first_line(exc)}") from exc
    except sa.exc.TimeoutError as exc:  # every connection of the pool in use
        raise StoreUnavailable(
            f"database unavailable: no free connection ([database] pool_timeout): {exc}"
        ) from exc


def _first_line(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def alembic_config() -> Config:
    """An Alembic configuration for vigil's migrations, independent of the working
    directory (the scripts are package data)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (a no-op when it is there)."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            # Handing over the connection (rather than the URL) keeps passwords out of
            # Alembic's ini-style config, where '%' would need escaping.
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
