"""A Redis server of a test's own (``redis_server``), so that the test can kill it: the
second coordination backend vigil is offered with (the machine's own Redis, on 6379, is
not the tests' to kill)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import require

from support import wait_until
from support.processes import free_port
from vigil.drivers.coordination import CoordinationError, ToozCoordinator


class RedisServer:
    """``redis-server`` on a free port of 127.0.0.1, in memory only."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require("Redis (redis-server)", lambda: _found("redis-server"))
    server = RedisServer(tmp_path)
    try:
        coordinator = ToozCoordinator(server.url, "probe", lease_ttl=2, call_timeout=1)
        wait_until(lambda: _starts(coordinator), "redis-server to answer", 10)
        coordinator.stop()
        yield server
    finally:
        server.kill()


def _found(binary: str) -> None:
    if shutil.which(binary) is None:
        raise FileNotFoundError(f"no {binary} on PATH")


def _starts(coordinator: ToozCoordinator) -> bool:
    try:
        coordinator.start()
    except CoordinationError:
        return False
    return True
