"""The whole recovery on the production stores: PostgreSQL and MariaDB, for real.

The store suite proves each method; this proves the engine, API and heartbeats work on
them under real concurrency (engine thread, step pool and API workers at once).
"""

from __future__ import annotations

import pytest
from services import MARIADB_ADMIN_URL, POSTGRES_ADMIN_URL, can_connect, require, scratch_database

from vigil.cli.demo import DemoOptions, Harness, summarize


@pytest.mark.parametrize(
    "admin_url",
    [
        pytest.param(POSTGRES_ADMIN_URL, marks=pytest.mark.postgres, id="postgres"),
        pytest.param(MARIADB_ADMIN_URL, marks=pytest.mark.mariadb, id="mariadb"),
    ],
)
def test_isolated_host_recovered_with_a_server_database(admin_url: str) -> None:
    require(admin_url.split(":")[0], can_connect(admin_url))
    with scratch_database(admin_url) as url:
        opts = DemoOptions(hosts=4, instances=16, overrides=[f"database.connection={url}"])
        with Harness(opts) as h:
            victims = [i for i in h.cloud.instances() if i.host == "compute-1"]
            t0 = h.inject("isolation", "compute-1")
            recovery = h.watch("compute-1", t0)
            summary = summarize("isolation", h.cloud, "compute-1", victims, recovery, t0)
    assert summary["recovery_status"] == "succeeded", summary
    assert summary["instances_recovered"] == summary["instances_total"] == 4
    assert summary["double_running"] == 0 and summary["host_fenced"]
    assert summary["evacuate_calls"] == 4
