"""Fixtures shared by the whole test suite: scratch databases on the real servers.

``postgres_url`` and ``mariadb_url`` each give a SQLAlchemy URL of an empty database
created for this test session (and dropped after it). A test that uses one needs the
server: see ``services.require``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from services import MARIADB_ADMIN_URL, POSTGRES_ADMIN_URL, can_connect, require, scratch_database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    require("PostgreSQL", can_connect(POSTGRES_ADMIN_URL))
    with scratch_database(POSTGRES_ADMIN_URL) as url:
        yield url


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    require("MariaDB", can_connect(MARIADB_ADMIN_URL))
    with scratch_database(MARIADB_ADMIN_URL) as url:
        yield url
