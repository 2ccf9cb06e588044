"""The engine's book and its snapshot at scale, on the fake clock: a cycle reads from the
store only what changed (whoever changed it), and decides on only the hosts that matter,
with the same decisions as when it read every host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.world import World

from vigil.engine.book import HostBook
from vigil.model import FenceMethod, Host, HostState, RecoveryStatus, Segment
from vigil.store.sql import SqlStore

HOSTS = [f"c{i:03d}" for i in range(60)]


class CountingStore:
    """The store, counting the hosts each read returns."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self.hosts_read = 0
        self.full_reads = 0

    def list_hosts(self, segment: str | None = None, *, names: Any = None) -> list[Host]:
        hosts = self._store.list_hosts(segment, names=names)
        self.hosts_read += len(hosts)
        self.full_reads += names is None
        return hosts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path, HOSTS, segment=Segment("s1", max_failed_share=0.1)) as w:
        counting = CountingStore(w.store)
        w.store = counting  # type: ignore[assignment]
        w.host_engine()
        for _ in range(10):
            w.tick()
        assert all(w.state(h) == HostState.UP for h in HOSTS)
        yield w


def counting(world: World) -> CountingStore:
    store = world.store
    assert isinstance(store, CountingStore)
    return store


def test_at_rest_a_cycle_reads_no_host_and_decides_on_none(world: World) -> None:
    store = counting(world)
    read, full = store.hosts_read, store.full_reads
    for _ in range(40):  # two seconds
        world.tick()
    assert (store.hosts_read, store.full_reads) == (read, full)
    snap = world.engine.snapshot()
    assert snap.hosts == {}  # nothing to decide on...
    assert snap.monitored == {"s1": len(HOSTS)}  # ...and every host counted


def test_a_change_by_another_writer_is_read_for_that_host_alone(
    world: World, tmp_path: Path
) -> None:
    """Maintenance set through another server's API (another store on the database):
    the next cycle reads that host, and only it; the rule then leaves it alone."""
    store = counting(world)
    other = SqlStore(str(world.store.engine.url))
    try:
        other.update_host("c007", maintenance=True)
    finally:
        other.close()
    read = store.hosts_read
    world.tick()
    assert store.hosts_read == read + 1
    assert world.engine.known.get("c007").maintenance  # type: ignore[union-attr]
    world.cloud.power_loss("c007")
    for _ in range(60):
        world.tick()
    assert world.state("c007") == HostState.UP  # in maintenance: not suspected, not fenced
    assert world.store.list_recoveries() == []
    assert world.engine.snapshot().monitored == {"s1": len(HOSTS) - 1}


def test_a_silent_host_enters_the_snapshot_and_its_recovery_runs(world: World) -> None:
    world.cloud.power_loss("c042")
    world.tick_until(lambda: world.state("c042") == HostState.SUSPECT, "c042 suspect")
    assert set(world.engine.snapshot().hosts) == {"c042"}
    world.tick_until(lambda: world.recovery_status("c042") == RecoveryStatus.SUCCEEDED)
    assert not world.cloud.is_powered("c042")
    assert world.state("c042") == HostState.RECOVERED
    # Others never in it: a host's own changes do not bring its neighbours in.
    assert set(world.engine.snapshot().hosts) <= {"c042"}


def test_the_storm_guard_counts_the_hosts_left_out_of_the_snapshot(world: World) -> None:
    """Seven of sixty hosts lose power (more than the segment's 10 %): held. The guard's
    share is of every host of the segment, not of the few in the snapshot."""
    victims = HOSTS[:7]
    for name in victims:
        world.cloud.power_loss(name)
    world.tick_until(
        lambda: all(world.recovery_status(h) == RecoveryStatus.PAUSED for h in victims),
        "every declaration held",
    )
    segment = world.store.get_segment("s1")
    assert segment.paused
    assert f"7 of {len(HOSTS)} hosts of segment s1" in segment.pause_reason
    assert world.cloud.calls("bmc_power_off") == 0


def test_a_deleted_host_makes_the_book_read_everything_again(world: World) -> None:
    book = HostBook(world.store)
    book.refresh()
    assert book.full_reads == 1 and len(book.hosts) == len(HOSTS)
    world.store.create_host(Host("late", "s1", fencing=(FenceMethod("sim"),)))
    assert book.refresh()
    assert book.full_reads == 1 and "late" in book.hosts and "late" in book.members["s1"]
    world.store.delete_host("late")
    assert book.refresh()
    assert book.full_reads == 2 and "late" not in book.hosts
    assert not book.refresh()  # nothing changed since
    assert book.monitored["s1"] == len(HOSTS)


def test_many_changes_at_once_are_read_in_one_go(world: World) -> None:
    """A new server's first cycles, every agent heard at once: past READ_ALL_ABOVE hosts
    changed, reading them all is one query, not one per host."""
    import vigil.engine.book as book_module

    book = HostBook(world.store)
    book.refresh()
    for name in HOSTS[:12]:
        world.store.update_host(name, reserved=True)
    original = book_module.READ_ALL_ABOVE
    book_module.READ_ALL_ABOVE = 10
    try:
        book.refresh()
    finally:
        book_module.READ_ALL_ABOVE = original
    assert book.full_reads == 2
    assert all(book.hosts[n].reserved for n in HOSTS[:12])
