"""Steps' shared look-ups, on the fake clock: the compute service listing the workers
choose destinations from is listed once a second at most, by one worker at a time, and
no worker waits for a new listing while it has one."""

from __future__ import annotations

import threading
import time

import pytest

from vigil.clock import FakeClock
from vigil.config import RecoverySettings
from vigil.drivers.compute import ComputeService
from vigil.drivers.errors import TemporaryError
from vigil.engine.steps import ServiceListing, StepContext, destinations
from vigil.model import Host, HostState, Segment
from vigil.sim.cloud import SimCloud
from vigil.sim.drivers import SimCompute


class CountingCompute(SimCompute):
    def __init__(self, cloud: SimCloud, delay: float = 0.0) -> None:
        super().__init__(cloud)
        self.listings = 0
        self.delay = delay

    def list_services(self) -> list[ComputeService]:
        self.listings += 1
        time.sleep(self.delay)
        return super().list_services()


def test_the_listing_is_shared_until_it_is_a_second_old() -> None:
    clock = FakeClock()
    cloud = SimCloud(clock)
    for name in ("c1", "c2"):
        cloud.add_host(name)
    compute = CountingCompute(cloud)
    listing = ServiceListing(compute, clock, max_age=1.0)

    assert set(listing()) == {"c1", "c2"}
    clock.advance(0.9)
    cloud.disable("c2", "maintenance")
    assert not listing()["c2"].disabled  # still the same one
    assert compute.listings == 1

    clock.advance(0.1)
    assert listing()["c2"].disabled  # listed again
    assert compute.listings == 2


def test_workers_asking_at_once_wait_for_one_listing() -> None:
    clock = FakeClock()
    cloud = SimCloud(clock)
    cloud.add_host("c1")
    compute = CountingCompute(cloud, delay=0.2)
    listing = ServiceListing(compute, clock)
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(len(listing()))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert answers == [1] * 8
    assert compute.listings == 1


def test_while_one_worker_lists_again_the_others_use_the_last_listing() -> None:
    clock = FakeClock()
    cloud = SimCloud(clock)
    cloud.add_host("c1")
    compute = CountingCompute(cloud)
    listing = ServiceListing(compute, clock)
    assert not listing()["c1"].disabled
    clock.advance(1.0)
    cloud.disable("c1", "maintenance")
    compute.delay = 0.5
    lister = threading.Thread(target=listing)
    lister.start()
    deadline = time.monotonic() + 5
    while compute.listings < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    assert not listing()["c1"].disabled  # the last listing, at once
    assert time.monotonic() - began < 0.3
    lister.join(5)
    assert listing()["c1"].disabled and compute.listings == 2


def test_a_failed_listing_is_not_kept_and_the_next_caller_lists_again() -> None:
    clock = FakeClock()
    cloud = SimCloud(clock)
    cloud.add_host("c1")

    class Failing(CountingCompute):
        def list_services(self) -> list[ComputeService]:
            if self.listings == 0:
                self.listings += 1
                raise TemporaryError("nova-api: 503")
            return super().list_services()

    compute = Failing(cloud)
    listing = ServiceListing(compute, clock)
    with pytest.raises(TemporaryError):
        listing()
    assert set(listing()) == {"c1"} and compute.listings == 2


def test_destinations_are_ranked_once_per_listing_and_hosts_and_follow_both() -> None:
    """The workers of one recovery rank the segment's hosts once (not once per
    instance), and a new view of the hosts or a new listing is ranked again at once."""
    clock = FakeClock()
    cloud = SimCloud(clock)
    for name in ("a", "b", "c", "other"):
        cloud.add_host(name)
    compute = CountingCompute(cloud)
    views = [
        {
            "a": Host("a", "seg", HostState.FAILED),
            "b": Host("b", "seg", HostState.UP),
            "c": Host("c", "seg", HostState.NEW),
            "other": Host("other", "seg2", HostState.UP),
        }
    ]
    ctx = StepContext(
        compute=compute,
        fence_devices=lambda h: [],
        policies=lambda _ids: {},
        settings=RecoverySettings(),
        clock=clock,
        wait=clock.advance,
        hosts=lambda: views[-1],
        services=ServiceListing(compute, clock),
    )
    failed, seg = views[0]["a"], Segment("seg")
    assert destinations(ctx, failed, seg) == ["b"]  # up first; never another segment's
    assert destinations(ctx, failed, seg) == ["b"]
    ranked = ctx.ranked["seg"]
    views.append({**views[0], "b": Host("b", "seg", HostState.SUSPECT)})  # a new view
    assert destinations(ctx, failed, seg) == ["c"]  # no up host left: a new one
    assert ctx.ranked["seg"] is not ranked
    cloud.disable("c", "maintenance")
    clock.advance(1.0)  # the next listing shows it disabled
    assert destinations(ctx, failed, seg) == []
    assert compute.listings == 2
