"""Custom recovery ("tell me, I'll act"): vigil fences and tells; the consumer acts
through the API, and its actions are recorded like vigil's own."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import jsonschema

from vigil.cli.demo import DemoOptions, Harness
from vigil.events import payload_schema


def test_notify_policy_fences_tells_and_the_consumer_evacuates_through_the_api() -> None:
    with Harness(DemoOptions(hosts=3, instances=6)) as h:
        victims = [i for i in h.cloud.instances() if i.host == "compute-1"]
        for inst in victims:
            h.client.put(f"/v1/instances/{inst.id}/policy", json={"policy": "notify"})
        t0 = h.inject("power-loss", "compute-1")
        done = h.watch("compute-1", t0)
        assert done is not None and done["status"] == "succeeded"
        # fenced and forced down, instances untouched
        assert not h.cloud.is_powered("compute-1")
        assert h.cloud.get_service("compute-1").forced_down
        assert h.cloud.calls("evacuate") == 0
        assert all(h.cloud.instance(i.id).host == "compute-1" for i in victims)
        # the consumer was told, one event per instance, with a valid payload
        deadline = time.monotonic() + 5
        while not any(e.event_type == "vigil.recovery.end" for e in h.server.memory.events):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        told = [e for e in h.server.memory.events if e.event_type == "vigil.instance.notify.end"]
        assert sorted(e.instance_id for e in told) == sorted(i.id for i in victims)
        for e in h.server.memory.events:
            jsonschema.validate(e.payload, payload_schema(e.event_type))
        # the consumer decides: evacuate one to a host of its choice, the other anywhere
        first, second = victims
        r = h.client.post(f"/v1/instances/{first.id}/evacuate", json={"target_host": "compute-3"})
        assert r.status_code == 202, r.text
        r = h.client.post(f"/v1/instances/{second.id}/evacuate", json={})
        assert r.status_code == 202, r.text
        again = h.watch("compute-1", t0, timeout=15)
        deadline = time.monotonic() + 15
        while not all(
            h.cloud.instance(i.id).status == "ACTIVE" and h.cloud.instance(i.id).host != "compute-1"
            for i in victims
        ):
            assert time.monotonic() < deadline, "consumer's evacuations did not finish"
            time.sleep(0.05)
        assert h.cloud.instance(first.id).host == "compute-3"
        assert h.cloud.double_running() == []
        assert again is not None
        rec = h.client.get(f"/v1/recoveries/{again['id']}").json()
        consumer_steps = [s for s in rec["steps"] if s["kind"] == "evacuate"]
        assert len(consumer_steps) == 2 and all(s["status"] == "succeeded" for s in consumer_steps)
        deadline = time.monotonic() + 5
        while (
            len([e for e in h.server.memory.events if e.event_type == "vigil.consumer.action"]) < 2
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_consumer_cannot_evacuate_from_an_unfenced_host() -> None:
    with Harness(DemoOptions(hosts=3, instances=3)) as h:
        inst = next(i for i in h.cloud.instances() if i.host == "compute-2")
        r = h.client.post(f"/v1/instances/{inst.id}/evacuate", json={})
        assert r.status_code == 409 and "compute-2" in r.text
        assert h.cloud.calls("evacuate") == 0
        assert h.client.post("/v1/instances/nope/evacuate", json={}).status_code == 404


def test_consumer_restart_and_handled_are_recorded() -> None:
    opts = DemoOptions(
        hosts=3,
        instances=3,
        overrides=("recovery.step_attempts=1", "recovery.fence_confirm_timeout=0.5"),
    )
    with Harness(opts) as h:
        inst = next(i for i in h.cloud.instances() if i.host == "compute-2")
        r = h.client.post(f"/v1/instances/{inst.id}/restart")
        assert r.status_code == 200, r.text
        assert h.cloud.calls("reboot", inst.id) == 1
        h.cloud.bmc_unreachable("compute-1", True)
        t0 = h.inject("power-loss", "compute-1")
        failed = h.watch("compute-1", t0, timeout=10)
        assert failed is not None and failed["status"] == "failed"
        (failure,) = h.client.get("/v1/failures", params={"host": "compute-1"}).json()
        assert failure["status"] == "error"
        # the consumer powered it off by hand and took care of its VMs
        r = h.client.post(f"/v1/failures/{failure['id']}/handled", json={"reason": "ticket 42"})
        assert r.status_code == 200 and r.json()["status"] == "resolved"
        assert h.client.get("/v1/hosts/compute-1").json()["state"] == "recovered"
        deadline = time.monotonic() + 5
        while True:
            actions = [
                e.payload["vigil_object.data"]["action"]
                for e in h.server.memory.events
                if e.event_type == "vigil.consumer.action"
            ]
            if len(actions) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert actions == ["restart", "handled"]


def test_event_stream_is_resumable_from_the_last_event_id() -> None:
    with Harness(DemoOptions(hosts=3, instances=3)) as h:
        received: list[dict[str, Any]] = []
        stop = threading.Event()

        def listen(after: int | None, headers: dict[str, str]) -> None:
            params = {"after": after} if after is not None else {}
            with httpx.stream(
                "GET",
                f"{h.server.api_url}/v1/events/stream",
                params=params,
                headers={"Authorization": f"Bearer {h.settings.api_token}", **headers},
                timeout=30,
            ) as r:
                assert r.status_code == 200
                frame: dict[str, Any] = {}
                for line in r.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("id: "):
                        frame["id"] = int(line[4:])
                    elif line.startswith("data: "):
                        frame["data"] = json.loads(line[6:])
                    elif not line and frame:
                        received.append(frame)
                        frame = {}

        t = threading.Thread(target=listen, args=(0, {}), daemon=True)
        t.start()
        t0 = h.inject("power-loss", "compute-1")
        done = h.watch("compute-1", t0)
        assert done is not None and done["status"] == "succeeded"
        deadline = time.monotonic() + 5
        while not any(f["data"]["event_type"] == "vigil.recovery.end" for f in received):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stop.set()
        ids = [f["id"] for f in received]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        all_events = h.client.get("/v1/events", params={"limit": 1000}).json()
        assert [e["seq"] for e in all_events] == ids[: len(all_events)]
        # a client that dropped after the third event resumes with Last-Event-ID
        resumed: list[dict[str, Any]] = []
        with httpx.stream(
            "GET",
            f"{h.server.api_url}/v1/events/stream",
            headers={
                "Authorization": f"Bearer {h.settings.api_token}",
                "Last-Event-ID": str(ids[2]),
            },
            timeout=10,
        ) as r:
            for line in r.iter_lines():
                if line.startswith("id: "):
                    resumed.append({"id": int(line[4:])})
                    if len(resumed) == len(ids) - 3:
                        break
        assert [f["id"] for f in resumed] == ids[3:]
