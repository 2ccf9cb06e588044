"""The agents' report route: signed with the agent key, bound to its host, persisted
before it is acknowledged, idempotent for a retried report."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from vigil.agent.reports import SIGNATURE_HEADER, encode_reports, sign
from vigil.api.guest import add_guest_routes
from vigil.clock import FakeClock
from vigil.drivers.sim import SimCompute
from vigil.engine.guest_engine import GuestEngine
from vigil.model import GuestFailureKind, GuestReport, Host, Segment
from vigil.sim.cloud import SimCloud
from vigil.store.sql import SqlStore, upgrade

KEY = b"agent-key"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, SqlStore]]:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    upgrade(url)
    store = SqlStore(url)
    store.create_segment(Segment("a"))
    store.create_host(Host("c1", "a"))
    clock = FakeClock()
    guest = GuestEngine(store=store, compute=SimCompute(SimCloud(clock)), clock=clock)
    app = FastAPI()
    add_guest_routes(app, guest=guest, agent_key=KEY.decode(), known_host=lambda h: h == "c1")
    with TestClient(app) as c:
        yield c, store
    guest.stop()
    store.close()


def post(c: TestClient, host: str, body: bytes, key: bytes | None = KEY) -> int:
    headers = {SIGNATURE_HEADER: sign(body, key)} if key is not None else {}
    return c.post(f"/v1/agents/{host}/reports", content=body, headers=headers).status_code


def report(host: str = "c1") -> GuestReport:
    return GuestReport(str(uuid.uuid4()), host, "i-1", GuestFailureKind.CRASHED, 1.0, {})


def test_signed_report_is_persisted_once(client: tuple[TestClient, SqlStore]) -> None:
    c, store = client
    body = encode_reports("c1", [report()])
    assert post(c, "c1", body) == 200
    assert post(c, "c1", body) == 200  # the agent retried: recorded once
    [failure] = store.list_guest_failures()
    assert failure.count == 1 and failure.kind == GuestFailureKind.CRASHED
    assert [e.event_type for e in store.list_events()] == ["vigil.instance.guest.failure"]


def test_refusals(client: tuple[TestClient, SqlStore], caplog: pytest.LogCaptureFixture) -> None:
    c, store = client
    body = encode_reports("c1", [report()])
    assert post(c, "c1", body, key=None) == 401
    assert post(c, "c1", body, key=b"wrong") == 401
    assert post(c, "c2", body) == 401  # signed for c1, posted as c2
    other = encode_reports("c9", [report("c9")])
    assert post(c, "c9", other) == 404  # unknown host
    assert post(c, "c1", b"{") == 400
    assert store.list_guest_failures() == []
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 5 and all("host c" in m for m in refusals)
