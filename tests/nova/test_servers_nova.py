"""Three vigil-server processes on a real Nova (the minicloud), one PostgreSQL database
and the three-member etcd cluster: the owner of the segment is killed with SIGKILL in
the middle of the evacuations, another server takes the segment over and finishes, and
Nova's own migration records show every instance evacuated once.

Each server is ``tests/nova/serve_vigil.py``: vigil-server with the openstack driver on
the minicloud's clouds.yaml, its hosts fenced through their nova-compute processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from services import POSTGRES_ADMIN_URL, can_connect, require, scratch_database
from support import wait_until
from support.etcd_fixture import etcd_cluster, fresh_etcd_prefix  # noqa: F401 (fixtures)
from support.processes import ServerProcess, server_config

from vigil.agent.heartbeat import HeartbeatSender
from vigil.drivers.compute import POLICY_KEY
from vigil.store.sql import upgrade

from .cloud import COMPUTES, Minicloud, report

pytestmark = [pytest.mark.nova, pytest.mark.etcd, pytest.mark.postgres, pytest.mark.slow]

TOKEN, KEY = "nova-ha-token", "nova-ha-key"
SERVE = str(Path(__file__).with_name("serve_vigil.py"))


@pytest.fixture
def cloud(minicloud: Minicloud) -> Iterator[Minicloud]:
    try:
        yield minicloud
    finally:
        minicloud.restore()


def _owner(api: httpx.Client) -> tuple[str, int]:
    row = next(o for o in api.get("/v1/servers").json()["owners"] if o["segment"] == "minicloud")
    return row["owner"], row["epoch"]


def _recovery(api: httpx.Client) -> dict[str, Any] | None:
    recs = api.get("/v1/recoveries", params={"host": "compute2"}).json()
    return recs[0] if recs else None


def test_three_servers_on_nova_the_owner_killed_mid_evacuation_another_finishes_once(
    cloud: Minicloud,
    tmp_path: Path,
    etcd_cluster: Any,  # noqa: F811
    fresh_etcd_prefix: str,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    require("PostgreSQL", can_connect(POSTGRES_ADMIN_URL))
    ids = cloud.boot_many(
        "compute2",
        {
            f"ha-{i}": cloud.server_body(f"ha-{i}", "compute2", {POLICY_KEY: "keep-running"})
            for i in range(6)
        },
    )
    with scratch_database(POSTGRES_ADMIN_URL) as database:
        upgrade(database)
        servers: list[tuple[str, ServerProcess, httpx.Client, int]] = []
        for i, url in enumerate(etcd_cluster.client_urls):
            conf = tmp_path / f"vigil-{i}.conf"
            api, hb_port = server_config(
                conf,
                token=TOKEN,
                key=KEY,
                database=database,
                coordination={
                    "backend_url": url.replace("http://", "etcd3+http://"),
                    "namespace": f"{fresh_etcd_prefix}vigil",
                    "member_id": f"vigil-{i}",
                    "lease_ttl": 3,
                    "renew_interval": 0.5,
                    "call_timeout": 1,
                    "margin": 0.5,
                },
                extra={
                    "compute": {"driver": "openstack", "cloud": "minicloud"},
                    "recovery": {"step_attempts": 12, "retry_backoff": 0.5},
                },
                timeout=30,
            )
            process = ServerProcess(conf, tmp_path / f"vigil-{i}.log", command=[SERVE])
            servers.append((f"vigil-{i}", process, api, hb_port))
        sender = HeartbeatSender(  # every host heard by every server, while it runs
            COMPUTES,
            servers=[("127.0.0.1", hb) for _, _, _, hb in servers],
            key=KEY.encode(),
            interval=0.5,
            alive=cloud.running,
        )
        try:
            for _, process, api, _ in servers:
                process.start(api, timeout=60)
            api = servers[0][2]
            api.post(
                "/v1/segments",
                json={"name": "minicloud", "default_policy": "off", "max_parallel_evacuations": 1},
            ).raise_for_status()
            for host in COMPUTES:
                api.post(
                    "/v1/hosts",
                    json={"name": host, "segment": "minicloud", "fencing": [{"driver": "sim"}]},
                ).raise_for_status()
            sender.start()
            wait_until(
                lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
                "every host's first heartbeat",
                30,
                every=0.2,
            )
            first, epoch = wait_until(lambda: _owner(api)[1] >= 1 and _owner(api), "an owner", 15)
            owner = next(s for s in servers if s[0] == first)
            cloud.kill("compute2")  # its power cut: heartbeats stop with it

            def evacuating() -> bool:
                rec = _recovery(owner[2])
                return bool(rec) and any(
                    s["kind"] == "evacuate" and s["status"] == "succeeded" for s in rec["steps"]
                )

            wait_until(evacuating, "the owner's first evacuation", 120, every=0.05)
            owner[1].kill9()
            killed = time.monotonic()
            survivor = next(s for s in servers if s[0] != first)[2]
            new, new_epoch = wait_until(
                lambda: (o := _owner(survivor))[0] != first and o, "a new owner", 20, every=0.1
            )
            took = time.monotonic() - killed
            recovery = wait_until(
                lambda: (r := _recovery(survivor)) and r["status"] in ("succeeded", "failed") and r,
                "the recovery to finish",
                180,
                every=0.2,
            )
            report(
                request.config,
                f"three servers: owner {first} killed mid-evacuation; {new} took over "
                f"(epoch {epoch} -> {new_epoch}) {took:.1f}s later; recovery "
                f"{recovery['status']} {time.monotonic() - killed:.1f}s after the kill",
            )
            assert recovery["status"] == "succeeded", recovery
            assert new_epoch == epoch + 1
            for name, sid in ids.items():
                server = cloud.server(sid)
                assert server["status"] == "ACTIVE", (name, server["status"])
                assert server["OS-EXT-SRV-ATTR:host"] != "compute2", name
                evacuations = cloud.evacuations(sid)
                assert len(evacuations) == 1, f"{name} evacuated {len(evacuations)} times"
        finally:
            for name, process, api, _ in servers:  # before the heartbeats stop
                process.stop()
                api.close()
                if process.log.exists():
                    tail = process.log.read_text().splitlines()[-40:]
                    print(f"--- {name} ---", *tail, sep="\n")
            sender.stop()
