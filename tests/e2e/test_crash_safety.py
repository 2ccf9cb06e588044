"""kill -9 of vigil-server in the middle of a recovery, then a restart (S2).

The server runs as a real separate process; the simulated cloud lives in this test
process and is reached over HTTP, so it outlives the server and counts every call.
The recovery must complete, and nothing completed before the kill may be done again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_until
from support.processes import ServerProcess, server_config, three_hosts_six_victims

from vigil.sim.agents import SimAgents
from vigil.sim.cloud import SimCloud
from vigil.sim.rpc import serve_cloud

TOKEN, KEY = "crash-test-token", "crash-test-key"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    cloud, victims = three_hosts_six_victims(seed=7)
    cloud_server, cloud_url = serve_cloud(cloud)
    conf = tmp_path / "vigil.conf"
    api, hb_port = server_config(
        conf, token=TOKEN, key=KEY, cloud_url=cloud_url, database=f"sqlite:///{tmp_path}/vigil.db"
    )
    server = ServerProcess(conf, tmp_path / "server.log")
    agents = SimAgents(cloud, server=("127.0.0.1", hb_port), key=KEY.encode(), interval=0.5)
    try:
        server.start(api)
        api.post("/v1/segments", json={"name": "s", "max_parallel_evacuations": 2})
        for i in (1, 2, 3):
            api.post(
                "/v1/hosts",
                json={"name": f"compute-{i}", "segment": "s", "fencing": [{"driver": "sim"}]},
            ).raise_for_status()
        agents.start()
        wait_until(
            lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
            "hosts up",
            10,
            every=0.02,
        )
        yield {"cloud": cloud, "api": api, "server": server, "victims": victims}
    finally:
        agents.stop()
        server.stop()
        cloud_server.close()
        api.close()


def _steps(api: httpx.Client) -> list[dict[str, Any]]:
    recs = api.get("/v1/recoveries", params={"host": "compute-1"}).json()
    return recs[0]["steps"] if recs else []


def _fencing(api: httpx.Client) -> bool:
    return any(s["kind"] == "fence" and s["status"] == "running" for s in _steps(api))


def _evacuating(api: httpx.Client) -> bool:
    evacs = [s for s in _steps(api) if s["kind"] == "evacuate"]
    return sum(s["status"] == "succeeded" for s in evacs) >= 2 and any(
        s["status"] == "running" for s in evacs
    )


@pytest.mark.parametrize("kill_when", ["fencing", "evacuating"])
def test_kill_9_mid_recovery_then_restart_completes_exactly_once(
    world: dict[str, Any], kill_when: str
) -> None:
    cloud: SimCloud = world["cloud"]
    api: httpx.Client = world["api"]
    server: ServerProcess = world["server"]
    cloud.isolate("compute-1")  # running but cut off: the fence really has to power it off

    wait_until(
        lambda: (_fencing if kill_when == "fencing" else _evacuating)(api),
        kill_when,
        20,
        every=0.02,
    )
    server.kill9()
    evacuated_before = {s["instance_id"] for s in _steps_after_kill(world) if s}
    server.start(api)

    recs = wait_until(
        lambda: [
            r
            for r in api.get("/v1/recoveries", params={"host": "compute-1"}).json()
            if r["status"] in ("succeeded", "failed")
        ],
        "the recovery to finish after the restart",
        30,
        every=0.02,
    )
    assert recs[0]["status"] == "succeeded", recs[0]
    for iid in world["victims"]:
        inst = cloud.instance(iid)
        assert inst.status == "ACTIVE" and inst.host != "compute-1", inst
        assert cloud.calls("evacuate", iid) == 1, f"{inst.name} evacuated more than once"
    assert cloud.double_running() == []
    assert not cloud.is_powered("compute-1")
    assert cloud.calls("set_forced_down", "compute-1") == 1
    if kill_when == "evacuating":
        # the fence had completed before the kill: it is not done again
        assert cloud.calls("bmc_power_off", "compute-1") == 1
        assert len(evacuated_before) >= 2
    log = server.log.read_text()
    assert "recovery steps were running when vigil stopped" in log


def _steps_after_kill(world: dict[str, Any]) -> list[dict[str, Any] | None]:
    # The server is down: read what the cloud says moved before the kill.
    cloud: SimCloud = world["cloud"]
    return [
        {"instance_id": iid} if cloud.instance(iid).host != "compute-1" else None
        for iid in world["victims"]
    ]
