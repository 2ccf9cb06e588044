"""``vigil-agent`` as an operator runs it, against a vigil-server on the simulated cloud.

The agent process reads its configuration file, sends heartbeats (the host comes up) and
watches a service — here a real process standing in for nova-compute, found by its
command line. The process is killed: the server disables the host's compute service and
the host stays up, never fenced; the process comes back: enabled again. A bad
``watch_service`` is refused at start with exit status 2 and a sentence saying why.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import wait_until
from support.served import AGENT_KEY, bearer, serving

from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud
from vigil.wire.keys import host_key

AGENT = Path(sys.executable).with_name("vigil-agent")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[VigilServer, SimCloud]]:
    with serving(tmp_path, hosts=("compute-1",)) as served:
        yield served


def agent_conf(tmp_path: Path, server: VigilServer, *watch: str) -> Path:
    host, port = server.heartbeat_address
    lines = [
        "[agent]",
        "host = compute-1",
        f"key = {host_key(AGENT_KEY, 'compute-1')}",
        f"server_url = {server.api_url}",
        f"server_host = {host}",
        f"server_port = {port}",
        "service_check_interval = 0.2",
        *(f"watch_service = {w}" for w in watch),
    ]
    path = tmp_path / "agent.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def stand_in(marker: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", f"--stand-in={marker}"]
    )


def test_the_agent_process_reports_a_dead_service_and_the_host_is_held_not_fenced(
    server: tuple[VigilServer, SimCloud], tmp_path: Path
) -> None:
    vigil, cloud = server
    api = httpx.Client(base_url=vigil.api_url, headers=bearer())
    api.post("/v1/segments", json={"name": "rack-a"}).raise_for_status()
    api.post(
        "/v1/hosts", json={"name": "compute-1", "segment": "rack-a", "fencing": [{"driver": "sim"}]}
    ).raise_for_status()
    marker = uuid.uuid4().hex
    nova = stand_in(marker)
    conf = agent_conf(tmp_path, vigil, f"nova-compute=--stand-in={marker}")
    agent = subprocess.Popen([str(AGENT), "--config-file", str(conf)])
    try:
        wait_until(
            lambda: api.get("/v1/hosts/compute-1").json()["state"] == "up",
            "heartbeats",
            15,
            every=0.1,
        )
        wait_until(
            lambda: api.get("/v1/hosts/compute-1/services").status_code == 200,
            "report",
            15,
            every=0.1,
        )

        nova.kill()
        nova.wait()
        wait_until(
            lambda: cloud.get_service("compute-1").disabled, "the host disabled", 15, every=0.1
        )
        report = api.get("/v1/hosts/compute-1/services").json()
        assert report["services_down"] == ["nova-compute"]
        wait_until(
            lambda: api.get("/v1/hosts/compute-1/services").json()["compute_hold"] == "disabled",
            "the hold recorded",
            10,
            every=0.1,
        )
        host = api.get("/v1/hosts/compute-1").json()
        assert host["state"] == "up"  # heartbeats go on: not suspect, not fenced
        assert api.get("/v1/recoveries", params={"host": "compute-1"}).json() == []
        assert not cloud.get_service("compute-1").forced_down

        nova = stand_in(marker)
        wait_until(
            lambda: not cloud.get_service("compute-1").disabled, "the host enabled", 15, every=0.1
        )
    finally:
        agent.terminate()
        assert agent.wait(15) == 0  # a clean stop
        nova.kill()
        nova.wait()
        api.close()


def test_a_bad_watch_service_is_refused_at_start(
    server: tuple[VigilServer, SimCloud], tmp_path: Path
) -> None:
    vigil, _ = server
    conf = agent_conf(tmp_path, vigil, "nova-compute=(unclosed")
    done = subprocess.run(
        [str(AGENT), "--config-file", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "watch_service" in done.stderr and "(unclosed" in done.stderr
