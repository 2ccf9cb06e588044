"""Application checks over HTTP: the agent's signed exchange (its answer signed too, and
bound to the report), the application's heartbeat with its per-instance credential, and
the operator's view — refusals named, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.world import World

from vigil.api.apps import CREDENTIAL_HEADER, add_app_routes
from vigil.engine.app_engine import AppHealth
from vigil.model import CheckState, Health
from vigil.wire.app_checks import (
    AppReport,
    decode_app_answer,
    encode_app_report,
)
from vigil.wire.keys import host_key
from vigil.wire.reports import SIGNATURE_HEADER, BadReport, sign

KEY = b"agent-key"  # the server's master key
AGENT = host_key(KEY.decode(), "c1").encode()  # c1's agent's
WEB = "type=http port=8080 path=/healthz interval=5 timeout=2 threshold=2 grace=0"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, World, AppHealth, str]]:
    with World(tmp_path, segment="a") as w:  # host c1
        apps = AppHealth(store=w.store, compute=w.compute, clock=w.clock, key=KEY)
        iid = w.cloud.add_instance(
            "web-1",
            "c1",
            metadata={"vigil:check:web": WEB, "vigil:check:app": "type=heartbeat interval=10"},
        )
        app = FastAPI()
        add_app_routes(
            app, apps=apps, agent_key=KEY.decode(), known_host=lambda h: h == "c1", auth=[]
        )
        with TestClient(app) as c:
            yield c, w, apps, iid


def exchange(c: TestClient, report: AppReport, key: bytes = AGENT) -> tuple[int, bytes, str | None]:
    body = encode_app_report(report)
    r = c.post(
        f"/v1/agents/{report.host}/app", content=body, headers={SIGNATURE_HEADER: sign(body, key)}
    )
    return r.status_code, r.content, r.headers.get(SIGNATURE_HEADER)


def test_the_agent_gets_its_plan_signed_and_bound_to_its_report(
    client: tuple[TestClient, World, AppHealth, str],
) -> None:
    c, w, _, iid = client
    at = w.clock.wall()
    status, body, signature = exchange(c, AppReport("c1", at, {}))
    assert status == 200
    answer = decode_app_answer(body, signature, AGENT, host="c1", answer_to=at)
    assert [s.name for s in answer.plan[iid]] == ["web"]  # the heartbeat check is the server's
    with pytest.raises(BadReport, match="another report"):
        decode_app_answer(body, signature, AGENT, host="c1", answer_to=at + 1)  # a replay
    with pytest.raises(BadReport, match="not signed"):
        decode_app_answer(body, signature, b"another key", host="c1", answer_to=at)
    w.clock.advance(1)
    failing = CheckState(Health.FAILING, 2, w.clock.wall(), "HTTP 503", w.clock.wall())
    assert exchange(c, AppReport("c1", w.clock.wall(), {iid: {"web": failing}}))[0] == 200
    stored = w.store.get_app_instance(iid)
    assert stored is not None and stored.checks["web"].health == Health.FAILING


def test_agent_refusals_name_why(client: tuple[TestClient, World, AppHealth, str]) -> None:
    c, w, _, _ = client
    report = AppReport("c1", w.clock.wall(), {})
    assert exchange(c, report, key=b"wrong")[0] == 401
    c9 = host_key(KEY.decode(), "c9").encode()
    assert exchange(c, AppReport("c9", w.clock.wall(), {}), key=c9)[0] == 404
    assert exchange(c, AppReport("c9", w.clock.wall(), {}))[0] == 401  # c1's key
    body = b'{"host": "c1", "at": "soon", "instances": {}}'
    r = c.post("/v1/agents/c1/app", content=body, headers={SIGNATURE_HEADER: sign(body, AGENT)})
    assert r.status_code == 400 and "malformed" in r.json()["detail"]
    assert w.store.list_app_instances() == []


def test_the_application_beats_and_asks_to_be_recovered_with_its_credential(
    client: tuple[TestClient, World, AppHealth, str],
) -> None:
    c, w, apps, iid = client
    exchange(c, AppReport("c1", w.clock.wall(), {}))  # the declarations are read
    url = f"/v1/instances/{iid}/app/heartbeat"
    assert c.post(url).status_code == 401
    assert c.post(url, headers={CREDENTIAL_HEADER: "0" * 64}).status_code == 401
    good = {CREDENTIAL_HEADER: apps.credential(iid)}
    r = c.post(url, headers=good)
    assert r.status_code == 200 and r.json()["last_beat_at"] == w.clock.wall()
    r = c.post(url, headers=good, json={"reset": "yes"})
    assert r.status_code == 422 and "reset" in str(r.json())
    r = c.post(url, headers=good, json={"reset": True, "detail": "cache corrupt"})
    assert r.status_code == 200
    assert {ch["name"]: ch["health"] for ch in r.json()["checks"]}["reset-requested"] == "failing"
    other = "0e5c1a8a-3f1e-4c4e-9d4b-2b8c1f0d9a11"
    r = c.post(
        f"/v1/instances/{other}/app/heartbeat", headers={CREDENTIAL_HEADER: good[CREDENTIAL_HEADER]}
    )
    assert r.status_code == 401  # a credential is good for its own instance only
    r = c.post(
        f"/v1/instances/{other}/app/heartbeat", headers={CREDENTIAL_HEADER: apps.credential(other)}
    )
    assert r.status_code == 404


def test_the_operator_sees_checks_and_closes_a_failure(
    client: tuple[TestClient, World, AppHealth, str],
) -> None:
    c, w, apps, iid = client
    assert c.get(f"/v1/instances/{iid}/app").status_code == 404  # not read from Nova yet
    exchange(c, AppReport("c1", w.clock.wall(), {}))
    body = c.get(f"/v1/instances/{iid}/app").json()
    assert body["declaration"]["vigil:check:web"] == WEB and body["episode"] is None
    assert [a["instance_id"] for a in c.get("/v1/apps?host=c1").json()] == [iid]
    assert c.get("/v1/apps?failing=true").json() == []
    r = c.post(f"/v1/instances/{iid}/app/close", json={"reason": "fixed by hand"})
    assert r.status_code == 404 and "no open application failure" in r.json()["detail"]
    r = c.get(f"/v1/instances/{iid}/app/credential")
    assert r.json()["credential"] == apps.credential(iid)
