"""A host failure end to end on a real Nova: vigil-server (in this process) with the
openstack compute driver, heartbeats for compute1..3, and a fence device bound to each
minicloud compute's nova-compute process (power off = SIGKILL, power status = does it run).

The host "dies" when its nova-compute is killed: its heartbeats stop with it. The plain
host failure and the operator's restore are the host-recovery contract, run here as on
the simulated cloud (tests/nova/test_recovery_contract.py). These are what only a real
Nova shows: the Nova API taken away in the middle of the recovery (the steps retry, the
recovery completes, and no instance is evacuated twice: Nova's own migration records are
the witness), and an evacuation Nova accepted and lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from vigil.drivers.compute import POLICY_KEY

from .cloud import Minicloud, report, running_vigil

pytestmark = pytest.mark.nova


def say(request: pytest.FixtureRequest, text: str) -> None:
    report(request.config, text)


@pytest.fixture
def cloud(minicloud: Minicloud) -> Iterator[Minicloud]:
    try:
        yield minicloud
    finally:
        minicloud.restore()


def _boot_all(cloud: Minicloud, host: str, specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return cloud.boot_many(
        host,
        {
            name: cloud.server_body(name, host, spec.get("metadata"), **spec.get("kw", {}))
            for name, spec in specs.items()
        },
    )


def test_nova_api_outage_mid_recovery_retries_and_never_evacuates_twice(
    cloud: Minicloud, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ids = _boot_all(
        cloud,
        "compute2",
        {f"svc-{i}": {"metadata": {POLICY_KEY: "keep-running"}} for i in range(4)},
    )
    overrides = [
        "recovery.step_attempts=12",
        "recovery.retry_backoff=0.5",
        "recovery.retry_backoff_max=2",
        # An API killed mid-POST may have saved REBUILD and never sent the request on.
        "recovery.evacuate_stall_timeout=10",
    ]
    with running_vigil(cloud, tmp_path, overrides) as vigil:
        vigil.api.patch("/v1/segments/minicloud", json={"max_parallel_evacuations": 2})
        t0 = time.monotonic()
        cloud.kill("compute2")

        def evacuating() -> bool:
            rec = vigil.recovery("compute2")
            return bool(rec) and any(
                s["kind"] == "evacuate" and s["status"] in ("running", "succeeded")
                for s in rec["steps"]  # type: ignore[index]
            )

        wait_until(evacuating, "the first evacuation", 60, every=0.02)
        cloud.kill("api")
        outage = time.monotonic()
        time.sleep(3)
        cloud.start("api")
        recovery = vigil.finished_recovery("compute2", 120)
        took = time.monotonic() - t0
        say(
            request,
            f"nova-api down for {time.monotonic() - outage:.1f}s mid-recovery "
            f"(restarted after 3s): recovery {recovery['status']} {took:.1f}s after the kill",
        )
        assert recovery["status"] == "succeeded", recovery
        retried = [s for s in recovery["steps"] if s["attempts"] > 1]
        assert retried, "the outage made no step retry: it did not hit the recovery"
        for name, sid in ids.items():
            server = cloud.server(sid)
            assert server["status"] == "ACTIVE", (name, server["status"])
            assert server["OS-EXT-SRV-ATTR:host"] != "compute2", name
            # A request the killed API lost leaves a migration 'accepted' that nothing acts on.
            migrations = [m for m in cloud.evacuations(sid) if m["status"] != "accepted"]
            assert len(migrations) == 1, f"{name} evacuated {len(migrations)} times"


def test_an_evacuation_nova_accepted_and_lost_is_asked_for_again(
    cloud: Minicloud, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Nova's API saves REBUILD, then sends the request to a conductor: an API that dies in
    between leaves the instance in REBUILD for ever. Made here for certain: the conductor is
    down when vigil evacuates, and its queue is purged before it comes back."""
    sid = _boot_all(cloud, "compute2", {"lost": {"metadata": {POLICY_KEY: "keep-running"}}})["lost"]
    with running_vigil(cloud, tmp_path, ["recovery.evacuate_stall_timeout=5"]) as vigil:
        cloud.kill("conductor")
        t0 = time.monotonic()
        cloud.kill("compute2")
        wait_until(
            lambda: cloud.server(sid)["OS-EXT-STS:task_state"] == "rebuilding",
            "Nova to accept the evacuation",
            60,
            every=0.2,
        )
        dropped = cloud.drop_queued("conductor")
        cloud.start("conductor")
        recovery = vigil.finished_recovery("compute2", 120)
        took = time.monotonic() - t0
        assert dropped >= 1, "nothing was queued for the conductor: the request was not lost"
        assert recovery["status"] == "succeeded", recovery
        server = cloud.server(sid)
        assert server["status"] == "ACTIVE" and server["OS-EXT-SRV-ATTR:host"] != "compute2"
        (step,) = [s for s in recovery["steps"] if s["kind"] == "evacuate"]
        assert step["attempts"] == 2, step
        # The lost request's migration record stays 'accepted': Nova never acted on it.
        acted = [m for m in cloud.evacuations(sid) if m["status"] != "accepted"]
        assert [m["status"] for m in acted] == ["done"], cloud.evacuations(sid)
        say(
            request,
            f"an evacuation Nova lost ({dropped} queued requests dropped) re-issued: "
            f"ACTIVE on {server['OS-EXT-SRV-ATTR:host']} {took:.1f}s after the kill",
        )
