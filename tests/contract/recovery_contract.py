"""The host-recovery contract: what an operator sees when a hypervisor dies under vigil,
whichever cloud it runs on.

Reuse: subclass ``RecoveryContract`` in a test module and define a ``recovery_world``
fixture giving a ``RecoveryWorld`` — vigil-server running on that cloud, watching its
hosts, each with a fence device and a heartbeat that stops when the host dies. The same
scenarios then run on the simulated cloud (tests/e2e/test_recovery_contract.py) and on
the real Nova tier (tests/nova/test_recovery_contract.py), so a behaviour the simulated
cloud shows in the demo and the benchmarks is one a real Nova shows too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx
from support import wait_until

from vigil.drivers.compute import MASAKARI_KEY, POLICY_KEY, PRIORITY_KEY

# What each instance of the scenario says about its HA policy, and by which source.
# "image": the policy comes from the image's properties where the cloud has images (the
# simulated cloud has none: there it is the same key in the metadata).
INSTANCES: Mapping[str, Mapping[str, str]] = {
    "db-1": {POLICY_KEY: "keep-running", PRIORITY_KEY: "10"},
    "db-2": {POLICY_KEY: "keep-running"},
    "legacy": {MASAKARI_KEY: "True"},  # Masakari's key, vigil's policy absent
    "appliance": {"image": "ha"},
    "scratch": {POLICY_KEY: "off"},
    "plain": {},  # nothing said: the segment's default, off
    "pet": {POLICY_KEY: "notify"},
}
MOVED = ("db-1", "db-2", "legacy", "appliance")
STAYED = ("scratch", "plain", "pet")


class RecoveryWorld(Protocol):
    """A cloud with vigil-server watching it (segment default policy: off)."""

    @property
    def hosts(self) -> Sequence[str]:
        """Three hosts, all up in vigil."""

    @property
    def api(self) -> httpx.Client:
        """vigil's API, authenticated."""

    @property
    def recovery_timeout(self) -> float:
        """How long from the host's death to every HA instance ACTIVE elsewhere may take
        here, in seconds (a real Nova is slower than the simulated cloud)."""

    def boot(self, host: str, instances: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        """Boot the named instances on ``host`` with those metadata (and the key "image"
        naming an image whose properties carry the policy); their ids once ACTIVE."""

    def kill(self, host: str) -> None:
        """The host dies: its agent falls silent and its BMC reads power off."""

    def repair(self, host: str) -> None:
        """The host is repaired and powered on again (its agent beats again)."""

    def server(self, server_id: str) -> tuple[str, str | None, str | None]:
        """Nova's view of the instance: status, host, task state."""

    def evacuations(self, server_id: str) -> int:
        """How many evacuations the cloud recorded for the instance."""

    def compute_service(self, host: str) -> tuple[bool, bool]:
        """The host's compute service in Nova: forced down, disabled."""

    def powered(self, host: str) -> bool:
        """Whether the host runs (its BMC would read power on)."""

    def say(self, text: str) -> None:
        """A line for the test log (timings)."""


def _recovery(api: httpx.Client, host: str) -> dict[str, Any] | None:
    found = api.get("/v1/recoveries", params={"host": host}).json()
    return found[0] if found else None


class RecoveryContract:
    def test_a_dead_host_is_fenced_and_its_ha_instances_come_back_once_elsewhere(
        self, recovery_world: RecoveryWorld
    ) -> None:
        w = recovery_world
        dead = w.hosts[0]
        ids = w.boot(dead, INSTANCES)
        t0 = time.monotonic()
        w.kill(dead)

        def moved() -> bool:
            for name in MOVED:
                status, host, task = w.server(ids[name])
                if status != "ACTIVE" or host in (None, dead) or task:
                    return False
            return True

        wait_until(moved, "every HA instance ACTIVE on another host", w.recovery_timeout, every=0.1)
        took = time.monotonic() - t0
        w.say(f"{dead} died -> {len(MOVED)} HA instances ACTIVE elsewhere in {took:.2f}s")

        recovery = wait_until(
            lambda: (r := _recovery(w.api, dead)) and r["status"] in ("succeeded", "failed") and r,
            f"the recovery of {dead} to end",
            30,
            every=0.1,
        )
        assert recovery["status"] == "succeeded", recovery
        steps = recovery["steps"]
        by_kind = {s["kind"]: s for s in steps if s["kind"] in ("fence", "force-down")}
        assert by_kind["fence"]["status"] == "succeeded"
        assert by_kind["force-down"]["status"] == "succeeded"
        assert {s["instance_id"] for s in steps if s["kind"] == "evacuate"} == {
            ids[n] for n in MOVED
        }
        assert {s["instance_id"] for s in steps if s["kind"] == "notify"} == {ids["pet"]}
        for name in MOVED:
            assert w.evacuations(ids[name]) == 1, f"{name} evacuated more than once"
        for name in STAYED:
            assert w.server(ids[name])[1] == dead, f"{name} moved against its policy"
            assert w.evacuations(ids[name]) == 0, f"{name} evacuated against its policy"

        # Fenced before anything moved (S1): the fence ended before the first evacuation.
        events = w.api.get("/v1/events", params={"limit": 1000}).json()
        order = [e["event_type"] for e in events if e.get("host") == dead]
        fenced = order.index("vigil.host.fence.end")
        first_move = min(i for i, t in enumerate(order) if t.startswith("vigil.instance.evacuate"))
        assert fenced < first_move, order
        host = w.api.get(f"/v1/hosts/{dead}").json()
        assert host["state"] == "recovered"
        assert w.compute_service(dead) == (True, True)  # forced down and disabled
        assert not w.powered(dead), "the fence keeps the host off"

        # Repaired: the operator restores it, and vigil watches it again.
        w.repair(dead)
        refusals: list[str] = []

        def restored() -> bool:
            response = w.api.post(f"/v1/hosts/{dead}/restore")
            if response.status_code == 200:
                return True
            # A real Nova refuses to un-force a host until its restarted compute has
            # cleaned up what was evacuated from it: correct, and worth a retry.
            refusals.append(str(response.json().get("detail", "")))
            return False

        wait_until(restored, f"vigil to restore {dead}", 60, every=0.5)
        assert all("evacuation" in r or "force up" in r for r in refusals), refusals
        assert w.compute_service(dead) == (False, False)
        wait_until(
            lambda: w.api.get(f"/v1/hosts/{dead}").json()["state"] == "up",
            f"vigil to see {dead} up again",
            30,
            every=0.2,
        )
