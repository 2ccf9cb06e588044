"""Real services for the tests that need them: whether one answers, and scratch databases.

``require(service, check)`` lets a test go on when ``check()`` succeeds. When it raises,
the test is skipped on a developer's machine, but fails when ``CI=true``: a CI run must
never turn green by skipping what it was meant to test.

The servers' addresses can be changed with ``VIGIL_TEST_POSTGRES_URL`` and
``VIGIL_TEST_MARIADB_URL`` (SQLAlchemy URLs of an account allowed to create databases).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

POSTGRES_ADMIN_URL = os.environ.get(
    "VIGIL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN_URL = os.environ.get("VIGIL_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")

CONNECT_TIMEOUT = 3  # seconds; a service that is not there should not stall the run


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(service: str, check: Callable[[], None]) -> None:
    """Go on if ``check()`` returns; otherwise skip (or, with ``CI=true``, fail)."""
    try:
        check()
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"{service} is not available: {type(exc).__name__}: {first_line}"
        if in_ci():
            pytest.fail(f"{message} (CI=true, so a missing service is an error)", pytrace=False)
        pytest.skip(message)


def _admin_engine(admin_url: str) -> sa.Engine:
    return sa.create_engine(
        admin_url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE cannot run in a transaction
        connect_args={"connect_timeout": CONNECT_TIMEOUT},
    )


def can_connect(url: str) -> Callable[[], None]:
    """A check for ``require``: connect to ``url`` and run ``SELECT 1``."""

    def check() -> None:
        engine = _admin_engine(url)
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()

    return check


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """Create an empty, uniquely named database on the server of ``admin_url``, yield its
    URL, and drop it afterwards."""
    name = f"vigil_test_{os.getpid()}_{secrets.token_hex(4)}"
    engine = _admin_engine(admin_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as connection:
            if postgres:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
            else:
                connection.exec_driver_sql(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            if postgres:
                # FORCE: a connection a failed test left open must not keep the database.
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        engine.dispose()
