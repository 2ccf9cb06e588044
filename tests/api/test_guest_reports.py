"""The agents' report route: signed with the agent key, bound to its host, persisted
before it is acknowledged, idempotent for a retried report."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.world import World

from vigil.api.guest import add_guest_routes
from vigil.model import GuestFailureKind, GuestReport, ServiceState
from vigil.store.sql import SqlStore
from vigil.wire.keys import host_key
from vigil.wire.reports import SIGNATURE_HEADER, encode_reports, encode_services, sign

KEY = b"agent-key"  # the server's master key
AGENT = host_key(KEY.decode(), "c1").encode()  # c1's agent's


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, SqlStore]]:
    with World(tmp_path, segment="a") as w:  # host c1
        guest = w.guest_engine(services=w.service_keeper())
        app = FastAPI()
        add_guest_routes(app, guest=guest, agent_key=KEY.decode(), known_host=lambda h: h == "c1")
        with TestClient(app) as c:
            yield c, w.store


def post(
    c: TestClient, host: str, body: bytes, key: bytes | None = AGENT, route: str = "reports"
) -> int:
    headers = {SIGNATURE_HEADER: sign(body, key)} if key is not None else {}
    return c.post(f"/v1/agents/{host}/{route}", content=body, headers=headers).status_code


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
    assert post(c, "c9", other, key=host_key(KEY.decode(), "c9").encode()) == 404  # unknown
    assert post(c, "c1", b"{") == 400
    assert store.list_guest_failures() == []
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 5 and all("host c" in m for m in refusals)


def services(nova_up: bool, at: float) -> dict[str, ServiceState]:
    return {
        "nova-compute": ServiceState(nova_up, at, "pid 5" if nova_up else "no process"),
        "libvirtd": ServiceState(True, 0.5, "pid 6"),
    }


def test_service_snapshots_are_persisted_and_an_older_one_ignored(
    client: tuple[TestClient, SqlStore],
) -> None:
    c, store = client
    down = encode_services("c1", 10.0, services(False, 9.0))
    answer = c.post(
        "/v1/agents/c1/services", content=down, headers={SIGNATURE_HEADER: sign(down, AGENT)}
    )
    assert answer.status_code == 200
    assert answer.json() == {"accepted": True, "services_down": ["nova-compute"]}
    stale = encode_services("c1", 8.0, services(True, 8.0))
    assert post(c, "c1", stale, route="services") == 200
    stored = store.get_host_services("c1")
    assert stored is not None and stored.down == ("nova-compute",) and stored.reported_at == 10
    assert [e.event_type for e in store.list_events()] == ["vigil.host.service.down"]


def test_service_snapshot_refusals(client: tuple[TestClient, SqlStore]) -> None:
    c, store = client
    body = encode_services("c1", 10.0, services(False, 9.0))
    assert post(c, "c1", body, key=None, route="services") == 401
    assert post(c, "c1", body, key=b"wrong", route="services") == 401
    assert post(c, "c2", body, route="services") == 401  # signed for c1, posted as c2
    c9 = host_key(KEY.decode(), "c9").encode()
    assert post(c, "c9", encode_services("c9", 1.0, {}), key=c9, route="services") == 404
    not_bool = body.replace(b'"up":false', b'"up":"no"')
    assert post(c, "c1", not_bool, route="services") == 400
    assert post(c, "c1", b'{"host":"c1"}', route="services") == 400
    assert store.get_host_services("c1") is None
