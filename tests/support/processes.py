"""vigil-server as a real separate process, for the tests that kill, stop or restart it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from support import wait_until
from vigil.clock import SystemClock
from vigil.model import HaPolicy
from vigil.sim.cloud import SimCloud, SimLatency


def three_hosts_six_victims(seed: int) -> tuple[SimCloud, list[str]]:
    """A real-time simulated cloud for server processes: three hosts, six KEEP_RUNNING
    instances on compute-1, evacuations and power-offs slow enough (1 s) for a test to
    act in the middle of a recovery. Returns the cloud and the instances' ids."""
    cloud = SimCloud(
        SystemClock(), latency=SimLatency(evacuate=1.0, power_off=1.0, jitter=0.1), seed=seed
    )
    for i in (1, 2, 3):
        cloud.add_host(f"compute-{i}", capacity=20)
    victims = [
        cloud.add_instance(f"db-{n}", "compute-1", policy=HaPolicy.KEEP_RUNNING, priority=n)
        for n in range(6)
    ]
    return cloud, victims


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def healthy(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


class ServerProcess:
    """``python -m vigil.server --config-file conf`` (or ``python *command --config-file
    conf``), its output appended to ``log``."""

    def __init__(
        self, conf: Path, log: Path, command: Sequence[str] = ("-m", "vigil.server")
    ) -> None:
        self.conf, self.log = conf, log
        self.command = list(command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, api: httpx.Client, timeout: float = 20) -> None:
        self.starts += 1
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.command, "--config-file", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: healthy(api), "vigil-server to answer", timeout, every=0.02)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def server_config(
    conf: Path,
    *,
    token: str,
    key: str,
    cloud_url: str = "",
    database: str,
    coordination: Mapping[str, object] | None = None,
    extra: Mapping[str, Mapping[str, object]] | None = None,
    timeout: float = 10.0,
) -> tuple[httpx.Client, int]:
    """Write ``conf`` for a vigil-server process on free ports of 127.0.0.1: its API
    (``token``), heartbeats (``key``: the master key, also taken as any host's: the
    simulated agents sign with it), the simulated cloud at ``cloud_url``, the
    ``database`` URL (not migrated by the server when ``coordination`` is given: several
    servers share one schema, migrated once), the ``[coordination]`` options, and any
    ``extra`` groups (``{"compute": {"driver": "openstack", ...}}`` replaces the
    simulated cloud). Returns a client of its API and its heartbeat port."""
    api_port, hb_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    groups: dict[str, Mapping[str, object]] = {
        "database": {"connection": database, **({"auto_migrate": "false"} if coordination else {})},
        "api": {"port": api_port, "auth_token": token},
        "agent": {"key": key, "listen_port": hb_port},
        "compute": {"sim_url": cloud_url},
        **(extra or {}),
    }
    # The simulated agents (SimAgents, SenderProcesses) sign every host's heartbeats
    # with the master key itself; extra [agent] options are added to these.
    agent = {"key": key, "listen_port": hb_port, "accept_master_key": "true"}
    groups["agent"] = {**agent, **groups["agent"]}
    if coordination:  # with the extra [coordination] options, if any (bench --set)
        groups["coordination"] = {**coordination, **groups.get("coordination", {})}
    conf.write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
            for group, options in groups.items()
        )
    )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )
    return api, hb_port
