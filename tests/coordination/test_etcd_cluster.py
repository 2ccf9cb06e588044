"""What vigil relies on from tooz's etcd3gw driver (``etcd3+http://``), on a real
three-member etcd cluster (``support.etcd``): a lease-backed lock per segment is the
ownership token, and group membership tells which servers are alive.

Measured here, with ``lock_timeout``/``membership_timeout`` of 2 s (etcd's shortest
lease with the test cluster's 100/1000 ms timing):

- a holder that stops heartbeating loses its lock 2 to 3.5 s after its last heartbeat
  (lease expiry is checked by the leader, in whole seconds);
- ``coordinator.heartbeat()`` refreshes the leases of the locks it holds, and its
  membership lease; nothing else does;
- the loser is not told: ``lock.heartbeat()`` still returns True and ``lock.acquired``
  stays True (both only look at the coordinator's own set); asking etcd whose value the
  key holds is the only truthful answer (``holds`` below);
- ``acquire(blocking=False)`` on a lock object that is already held returns False *and*
  replaces the lease the heartbeat refreshes: the held lock then expires;
- one member down: coordinators on the others go on (locks kept, acquired, refreshed),
  except that while a new leader is elected (1 to 2 s, if the leader died) their calls
  wait and may time out;
  a coordinator on the dead member gets ``ToozConnectionError`` at once (tooz talks to
  one member only, it does not fail over);
- two of three down: every call waits the URL's ``timeout`` and raises
  ``OperationTimedOut`` (``coordinator.heartbeat()`` raises etcd3gw's untranslated
  ``ConnectionTimeoutError``); once a quorum is back, everything works again; a lock
  held before is still held unless its lease ran out on a member that led when the
  quorum went (its revocation commits with the quorum) — the lease tells which.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import etcd3gw.exceptions
import pytest
from support.etcd import EtcdCluster
from tooz import coordination

pytestmark = pytest.mark.etcd

TTL = 2  # lock_timeout and membership_timeout (s); etcd grants no shorter lease here
SLACK = 1.5  # etcd checks expiry in whole seconds, plus an election when a leader dies
TIMEOUT = 2  # the URL's timeout: each HTTP request to etcd (s)

Coordinator = Any  # tooz.drivers.etcd3gw.Etcd3Driver
MakeCoordinator = Callable[..., Coordinator]


@pytest.fixture
def coordinators() -> Iterator[MakeCoordinator]:
    """``make(url, member_id)``: a started coordinator (no heart thread: a test calls
    ``heartbeat()`` itself), stopped after the test."""
    started: list[Coordinator] = []

    def make(url: str, member_id: str) -> Coordinator:
        coordinator = coordination.get_coordinator(url, member_id.encode())
        coordinator.start(start_heart=False)
        started.append(coordinator)
        return coordinator

    yield make
    for coordinator in started:
        with contextlib.suppress(Exception):  # its member may be dead by now
            coordinator.stop()


def holds(coordinator: Coordinator, lock: Any) -> bool:
    """Whether etcd's key of ``lock`` holds this lock object's value: the one truthful
    ownership check (the key is ``/tooz/locks`` + name, without a separator; the value
    is a random id per lock object)."""
    values = coordinator.client.get((b"/tooz/locks" + lock.name).decode())
    return bool(values == [base64.b64decode(lock._uuid)])


def heartbeat_for(seconds: float, *coordinators: Coordinator) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for coordinator in coordinators:
            assert coordinator.heartbeat() == TTL  # "call me again within this"
        time.sleep(0.3)


def wait_settled(read: Callable[[], bool], seconds: float = 1.0) -> bool:
    """``read()`` once it has given the same answer for ``seconds`` (a revocation still
    being applied after an election changes it once)."""
    value, since = read(), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.1)
        if (now := read()) != value:
            value, since = now, time.monotonic()
    return value


def acquire_within(lock: Any, seconds: float) -> float:
    """Poll ``lock.acquire(blocking=False)`` until it succeeds; return how long it took."""
    start = time.monotonic()
    while not lock.acquire(blocking=False):
        assert time.monotonic() - start < seconds, f"{lock.name!r} not acquired in {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_lock_is_kept_by_heartbeats_and_taken_over_when_they_stop(
    etcd_cluster: EtcdCluster, coordinators: MakeCoordinator, fresh_etcd_prefix: str
) -> None:
    url = {"timeout": TIMEOUT, "lock_timeout": TTL}
    a = coordinators(etcd_cluster.tooz_url(0, **url), "server-a")
    b = coordinators(etcd_cluster.tooz_url(1, **url), "server-b")
    name = f"{fresh_etcd_prefix}segment-x".encode()
    lock_a, lock_b = a.get_lock(name), b.get_lock(name)

    assert lock_a.acquire(blocking=False) is True
    assert lock_b.acquire(blocking=False) is False
    heartbeat_for(TTL + 1, a)  # longer than the lease: the heartbeats keep it
    assert lock_b.acquire(blocking=False) is False
    assert holds(a, lock_a)

    # A hangs or dies without releasing (no heartbeat from now on): B gets the lock
    # once A's lease runs out.
    took = acquire_within(lock_b, TTL + SLACK + 1)
    assert TTL - 1 <= took <= TTL + SLACK, took
    assert holds(b, lock_b) and not holds(a, lock_a)
    # ...and A is not told: the lock object still believes it holds the lock.
    assert lock_a.acquired is True
    assert lock_a.heartbeat() is True
    assert lock_a.release() is False  # the key is B's now: nothing is deleted
    assert lock_a.acquired is True  # (a failed release leaves it in the held set)
    assert holds(b, lock_b)


def test_acquiring_a_held_lock_again_breaks_its_keepalive(
    etcd_cluster: EtcdCluster, coordinators: MakeCoordinator, fresh_etcd_prefix: str
) -> None:
    url = {"timeout": TIMEOUT, "lock_timeout": TTL}
    a = coordinators(etcd_cluster.tooz_url(0, **url), "server-a")
    b = coordinators(etcd_cluster.tooz_url(1, **url), "server-b")
    name = f"{fresh_etcd_prefix}segment-y".encode()
    lock_a = a.get_lock(name)

    assert lock_a.acquire(blocking=False) is True
    assert lock_a.acquire(blocking=False) is False  # not re-entrant...
    # ...and the heartbeats now refresh the failed attempt's fresh lease, not the key's.
    heartbeat_for(TTL + SLACK, a)
    assert not holds(a, lock_a)
    assert b.get_lock(name).acquire(blocking=False) is True


def test_group_membership_follows_heartbeats(
    etcd_cluster: EtcdCluster, coordinators: MakeCoordinator, fresh_etcd_prefix: str
) -> None:
    url = {"timeout": TIMEOUT, "membership_timeout": TTL}
    a = coordinators(etcd_cluster.tooz_url(0, **url), "server-a")
    b = coordinators(etcd_cluster.tooz_url(2, **url), "server-b")
    group = f"{fresh_etcd_prefix}servers".encode()
    a.create_group(group).get()
    a.join_group(group).get()
    b.join_group(group).get()
    assert a.get_members(group).get() == b.get_members(group).get() == {b"server-a", b"server-b"}

    # B stops heartbeating: it leaves the group when its membership lease runs out.
    start = time.monotonic()
    while b"server-b" in a.get_members(group).get():
        assert time.monotonic() - start < TTL + SLACK + 1, "server-b still a member"
        a.heartbeat()
        time.sleep(0.1)
    assert TTL - 1 <= time.monotonic() - start <= TTL + SLACK
    # Heartbeating again does not bring it back (it gets a new lease, not its key):
    # a member must notice and join again.
    b.heartbeat()
    assert a.get_members(group).get() == {b"server-a"}
    b.join_group(group).get()
    assert a.get_members(group).get() == {b"server-a", b"server-b"}


def test_locks_with_one_member_down_and_without_quorum(
    own_etcd_cluster: EtcdCluster, coordinators: MakeCoordinator
) -> None:
    etcd = own_etcd_cluster  # this test breaks the quorum: a cluster of its own
    url = {"timeout": TIMEOUT, "lock_timeout": TTL}
    on_m1 = coordinators(etcd.tooz_url(0, **url), "server-1")
    on_m2 = coordinators(etcd.tooz_url(1, **url), "server-2")
    on_m3 = coordinators(etcd.tooz_url(2, **url), "server-3")
    held = on_m3.get_lock(b"segment-held")
    assert held.acquire(blocking=False) is True

    # m1 dies: the coordinator on it fails at once, and does not move to another member.
    etcd.kill(0)
    with pytest.raises(coordination.ToozConnectionError):
        on_m1.get_lock(b"segment-1").acquire(blocking=False)
    with pytest.raises(etcd3gw.exceptions.ConnectionFailedError):
        on_m1.heartbeat()  # not translated into a tooz error
    # The others go on: m3's coordinator keeps its lock past its lease, m2's takes new ones.
    # (If m1 led, calls wait for the new leader, 1 to 2 s: they may time out until then.)
    etcd.wait_healthy([1, 2])
    heartbeat_for(TTL + 1, on_m3)
    assert holds(on_m3, held)
    assert on_m2.get_lock(b"segment-held").acquire(blocking=False) is False
    assert on_m2.get_lock(b"segment-2").acquire(blocking=False) is True

    # m2 dies too: no quorum. Every call waits the URL's timeout, then raises.
    etcd.kill(1)
    start = time.monotonic()
    with pytest.raises(coordination.OperationTimedOut):
        on_m3.get_lock(b"segment-3").acquire(blocking=False)
    assert TIMEOUT - 0.1 <= time.monotonic() - start <= TIMEOUT + 1
    with pytest.raises(etcd3gw.exceptions.ConnectionTimeoutError):
        on_m3.heartbeat()

    # A quorum again (m1 back): m3's coordinator works again. Its lock may be gone: if
    # m3 led when the quorum went, it proposed to revoke the lease that ran out meanwhile,
    # and that proposal commits now; if it did not lead, no leader expired anything and a
    # new one renews every lease. Either way, asking the lease (``still_held``) tells the
    # truth, and a lost lock can be taken again.
    etcd.restart(0)
    etcd.wait_healthy([0, 2])
    assert on_m3.heartbeat() == TTL
    kept = wait_settled(lambda: holds(on_m3, held))
    assert kept == (held._lease.refresh() > 0)
    if not kept:
        assert on_m3.get_lock(b"segment-held").acquire(blocking=False) is True
    assert on_m3.get_lock(b"segment-3").acquire(blocking=False) is True
