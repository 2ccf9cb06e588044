"""Webhooks end to end, against a real HTTP receiver: signed, in order, retried, and
delivered even when the server is killed between a change and its delivery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from notify.receivers import WebhookReceiver
from support import wait_until
from support.processes import ServerProcess, server_config
from test_crash_safety import KEY, TOKEN

from vigil.cli.demo import DemoOptions, Harness
from vigil.clock import SystemClock
from vigil.model import HaPolicy
from vigil.sim.agents import SimAgents
from vigil.sim.cloud import SimCloud, SimLatency
from vigil.sim.rpc import serve_cloud

SECRET = "webhook-secret-0123456789"


def _subscribe(api: httpx.Client, url: str, *types: str) -> None:
    r = api.post(
        "/v1/subscriptions",
        json={"name": "noc", "url": url, "secret": SECRET, "event_types": list(types)},
    )
    assert r.status_code == 201, r.text


def test_every_event_of_a_recovery_arrives_signed_in_order_after_retries() -> None:
    with WebhookReceiver() as receiver, Harness(DemoOptions(hosts=3, instances=6)) as h:
        _subscribe(h.client, receiver.url)
        receiver.answer(500, 503, 500)  # the first event is refused three times
        t0 = h.inject("power-loss", "compute-1")
        done = h.watch("compute-1", t0)
        assert done is not None and done["status"] == "succeeded"
        outbox = h.client.get("/v1/events", params={"limit": 1000}).json()
        wait_until(
            lambda: len(receiver.events(SECRET)) == len(outbox), "every event", 20, every=0.02
        )
        got = receiver.events(SECRET)
        assert [e.id for e in got] == [e["id"] for e in outbox]  # in order, all of them
        first = [d for d in receiver.deliveries if d.event().id == outbox[0]["id"]]
        assert [d.status for d in first] == [500, 503, 500, 204]  # the 4th try got it
        assert all(d.verified(SECRET) for d in receiver.deliveries)
        assert not first[0].verified("someone-elses-secret-000")
        assert h.client.get("/v1/dead-letters").json() == []


def test_test_fire_and_filters() -> None:
    with WebhookReceiver() as receiver, Harness(DemoOptions(hosts=3, instances=3)) as h:
        _subscribe(h.client, receiver.url, "vigil.recovery.*")
        fired = h.client.post("/v1/subscriptions/noc/test").json()
        assert fired["delivered"] is True
        t0 = h.inject("power-loss", "compute-1")
        assert h.watch("compute-1", t0) is not None
        wait_until(
            lambda: len(receiver.events(SECRET)) == 2, "test event and recovery end", 10, every=0.02
        )
        types = [e.event_type for e in receiver.events(SECRET)]
        assert types == ["vigil.subscription.test", "vigil.recovery.end"]
        bad = h.client.post(
            "/v1/subscriptions", json={"name": "x", "url": "gopher://x", "secret": SECRET}
        )
        assert bad.status_code == 422 and "url" in bad.text
        bad = h.client.post(
            "/v1/subscriptions",
            json={
                "name": "y",
                "url": receiver.url,
                "secret": SECRET,
                "event_types": ["vigil.nope"],
            },
        )
        assert bad.status_code == 422 and "event_types" in bad.text
        assert [s["name"] for s in h.client.get("/v1/subscriptions").json()] == ["noc"]
        assert SECRET not in h.client.get("/v1/subscriptions").text


def test_server_killed_between_change_and_delivery_still_delivers(tmp_path: Path) -> None:
    cloud = SimCloud(SystemClock(), latency=SimLatency(jitter=0.1), seed=3)
    for i in (1, 2, 3):
        cloud.add_host(f"compute-{i}")
    for n in range(3):
        cloud.add_instance(f"db-{n}", "compute-1", policy=HaPolicy.KEEP_RUNNING)
    cloud_server, cloud_url = serve_cloud(cloud)
    conf = tmp_path / "vigil.conf"
    api, hb_port = server_config(
        conf, token=TOKEN, key=KEY, cloud_url=cloud_url, database=f"sqlite:///{tmp_path}/vigil.db"
    )
    server = ServerProcess(conf, tmp_path / "server.log")
    agents = SimAgents(cloud, server=("127.0.0.1", hb_port), key=KEY.encode(), interval=0.25)
    receiver = WebhookReceiver(default_status=503)  # the consumer is down at first
    try:
        server.start(api)
        api.post("/v1/segments", json={"name": "s"})
        for i in (1, 2, 3):
            api.post(
                "/v1/hosts",
                json={"name": f"compute-{i}", "segment": "s", "fencing": [{"driver": "sim"}]},
            ).raise_for_status()
        _subscribe(api, receiver.url)
        agents.start()
        wait_until(
            lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
            "up",
            10,
            every=0.02,
        )
        cloud.power_loss("compute-1")
        done: list[dict[str, Any]] = wait_until(
            lambda: [r for r in api.get("/v1/recoveries").json() if r["status"] == "succeeded"],
            "the recovery",
            20,
            every=0.02,
        )
        assert done
        outbox = api.get("/v1/events", params={"limit": 1000}).json()
        assert receiver.events(SECRET) == []  # nothing accepted yet: all still owed
        server.kill9()  # dies with every event committed and none delivered
        receiver.default_status = 204  # the consumer is back
        server.start(api)
        wait_until(
            lambda: len({e.id for e in receiver.events(SECRET)}) >= len(outbox),
            "every event delivered after the restart",
            30,
            every=0.02,
        )
        delivered = []
        for e in receiver.events(SECRET):
            if e.id not in delivered:
                delivered.append(e.id)
        assert delivered[: len(outbox)] == [e["id"] for e in outbox]
    finally:
        agents.stop()
        server.stop()
        receiver.close()
        cloud_server.close()
        api.close()
