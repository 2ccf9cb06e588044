"""``AppChecks``' ``on_run`` hook (what ``bench/app_failure.py`` measures lateness with):
called as each check run starts, with when it was due and when it started, on the
agent's clock; an observer that raises stops no check."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from support import wait_until

from vigil.agent.app_checks import AppChecks
from vigil.model import Health
from vigil.wire.app_checks import (
    AppAnswer,
    CheckSpec,
    CheckType,
    decode_app_report,
    encode_app_answer,
)
from vigil.wire.reports import SIGNATURE_HEADER, sign

HOST = "c1"
KEY = b"agent-key-for-on-run-tests"
UUID = "00000000-0000-0000-0000-000000000001"
PING = CheckSpec("agent", CheckType.GUEST_AGENT, interval=10.0, timeout=2.0, grace=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Domain:
    def state(self) -> list[int]:
        return [1, 1]  # running

    def ID(self) -> int:
        return 1

    def controlInfo(self) -> list[int]:
        return [0, 0, 0]


class Agent:
    def ping(self, domain: Any, timeout: float = 2.0) -> None:
        pass

    def exec(self, domain: Any, argv: Any, timeout: float = 5.0) -> Any:
        raise AssertionError("no exec check here")


def answer(request: httpx.Request) -> httpx.Response:
    report = decode_app_report(
        request.content, request.headers.get(SIGNATURE_HEADER), KEY, host=HOST
    )
    body = encode_app_answer(HOST, report.at, AppAnswer({UUID: (PING,)}, ()))
    return httpx.Response(200, content=body, headers={SIGNATURE_HEADER: sign(body, KEY)})


def test_each_run_is_told_when_it_was_due_and_when_it_started() -> None:
    clock, domain = Clock(), Domain()
    runs: list[tuple[str, str, float, float]] = []
    lock = threading.Lock()

    def on_run(iid: str, spec: CheckSpec, due: float, started: float) -> None:
        with lock:
            runs.append((iid, spec.name, due, started))
            if len(runs) == 1:
                raise RuntimeError("an observer's bug")

    class Conn:
        def lookupByUUIDString(self, uuid: str) -> Domain:
            return domain

    checks = AppChecks(
        host=HOST,
        connection=Conn,
        guest_agent=Agent(),
        key=KEY,
        server_url="http://vigil.test:8787",
        clock=clock,
        poll=0.01,
        transport=httpx.MockTransport(answer),
        on_run=on_run,
    )
    checks.start()
    try:
        # The first run: due at once. Its observer raised; the check ran all the same.
        state = wait_until(
            lambda: (s := checks.states().get(UUID, {}).get("agent")) and s.last_run_at and s,
            "the first run",
        )
        assert state.health == Health.HEALTHY and state.last_run_at == clock.now
        t0 = clock.now
        with lock:
            assert runs == [(UUID, "agent", t0, t0)]
        clock.now = t0 + 15.0  # the next run was due at t0 + 10: it starts 5 s late
        wait_until(lambda: len(runs) == 2, "the second run")
        with lock:
            assert runs[1] == (UUID, "agent", t0 + 10.0, t0 + 15.0)
    finally:
        checks.stop()
