"""The real-Nova tier: a session-scoped minicloud (tools/minicloud) on the real Keystone
of tools/keystone (``support.keystone``), each started if it is not running and stopped at
the end if this session started it (MINICLOUD_KEEP=1 keeps both, KEYSTONE_KEEP=1 the
Keystone). A Keystone already running is taken whatever its tokens' lifetime; one started
here issues the identity tier's 20-second tokens, so a session running both tiers never
restarts it. A minicloud running on its stand-in identity is restarted on the Keystone.
Two test sessions on one machine take turns (a file lock in the minicloud's home).

Not installed: skipped, or failed with CI=true (``services.require``). Every test module here
is marked ``nova``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from services import require
from support.keystone import Keystone, session_keystone

from .cloud import CLOUDS_YAML, HOME, Minicloud, installed, renew_tokens_late, report, tool


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
    keep = os.environ.get("MINICLOUD_KEEP") == "1"  # a kept minicloud needs its Keystone
    identity = contextmanager(session_keystone)(any_expiration=True, keep=keep)
    with exclusive_use(pytestconfig), identity as keystone:
        yield from _session_cloud(pytestconfig, keystone)


def _running_on_keystone() -> bool:
    status = tool("status", "--json", timeout=60)
    try:
        return status.returncode == 0 and json.loads(status.stdout)["identity"] == "keystone"
    except (ValueError, KeyError):
        return False


def _session_cloud(config: pytest.Config, keystone: Keystone) -> Iterator[Minicloud]:
    t0 = time.monotonic()
    # One on the stand-in identity is restarted by start --keystone: as if started here.
    already = _running_on_keystone()
    result = tool("start", "--keystone", timeout=400)
    if result.returncode != 0:

        def failed() -> None:
            raise RuntimeError(f"minicloud start failed: {result.stderr[-3000:]}")

        require("minicloud (tools/minicloud: a real Nova)", failed)
    startup = time.monotonic() - t0
    report(config, f"minicloud {'already running' if already else 'started'} in {startup:.1f}s")
    env = pytest.MonkeyPatch()
    # vigil finds the cloud the way an operator's vigil-server would: clouds.yaml.
    env.setenv("OS_CLIENT_CONFIG_FILE", str(CLOUDS_YAML))
    renew_tokens_late(env)
    cloud = Minicloud(started_here=not already, startup_seconds=startup, keystone=keystone)
    try:
        cloud.restore()
        yield cloud
    finally:
        env.undo()
        if cloud.started_here and os.environ.get("MINICLOUD_KEEP") != "1":
            t1 = time.monotonic()
            tool("stop", timeout=120)
            report(config, f"minicloud stopped in {time.monotonic() - t1:.1f}s")
