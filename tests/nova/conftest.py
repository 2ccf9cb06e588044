"""The real-Nova tier: a session-scoped minicloud (tools/minicloud), started if it is not
running and stopped at the end if this session started it (MINICLOUD_KEEP=1 keeps it).
Two test sessions on one machine take turns (a file lock in the minicloud's home).

Not installed: skipped, or failed with CI=true (``services.require``). Every test module here
is marked ``nova``.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from services import require

from .cloud import CLOUDS_YAML, HOME, Minicloud, installed, report, tool


@contextmanager
def exclusive_use(config: pytest.Config, timeout: float = 900) -> Iterator[None]:
    """One test session at a time on the minicloud: tests kill and restore its hosts."""
    HOME.mkdir(parents=True, exist_ok=True)
    with open(HOME / "tests.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another session held the minicloud {timeout}s") from None
                if not waited:
                    report(config, "waiting for another test session to finish with the minicloud")
                    waited = True
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def minicloud(pytestconfig: pytest.Config) -> Iterator[Minicloud]:
    require("minicloud (tools/minicloud: a real Nova)", installed)
    with exclusive_use(pytestconfig):
        yield from _session_cloud(pytestconfig)


def _session_cloud(config: pytest.Config) -> Iterator[Minicloud]:
    t0 = time.monotonic()
    already = tool("status", timeout=60).returncode == 0
    result = tool("start", timeout=400)
    if result.returncode != 0:

        def failed() -> None:
            raise RuntimeError(f"minicloud start failed: {result.stderr[-3000:]}")

        require("minicloud (tools/minicloud: a real Nova)", failed)
    startup = time.monotonic() - t0
    report(config, f"minicloud {'already running' if already else 'started'} in {startup:.1f}s")
    cloud = Minicloud(started_here=not already, startup_seconds=startup)
    env = pytest.MonkeyPatch()
    # vigil finds the cloud the way an operator's vigil-server would: clouds.yaml.
    env.setenv("OS_CLIENT_CONFIG_FILE", str(CLOUDS_YAML))
    try:
        cloud.restore()
        yield cloud
    finally:
        env.undo()
        if cloud.started_here and os.environ.get("MINICLOUD_KEEP") != "1":
            t1 = time.monotonic()
            tool("stop", timeout=120)
            report(config, f"minicloud stopped in {time.monotonic() - t1:.1f}s")
