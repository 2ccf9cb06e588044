"""vigil's coordinator (``vigil.drivers.coordination.ToozCoordinator``) on each backend it
is offered with, for real: the three-member etcd cluster and a Redis server of the
test's own (so that it can be killed).

- two deployments with two namespaces share one backend and see neither the other's
  servers nor its locks;
- a lock whose lease ran out while its holder was away is not taken for held (tooz's own
  ``acquired`` still says it is) and another server takes it;
- a dead backend is an error at once, not a minute of retries inside the keeper (Redis:
  the client library's own retries are off).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import wait_until
from support.redis import RedisServer

from vigil.drivers.coordination import CoordinationError, ToozCoordinator

TTL = 2  # lease_ttl (s): the shortest etcd grants here


Backend = Callable[..., ToozCoordinator]


@pytest.fixture(
    params=[
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def backend(request: pytest.FixtureRequest, fresh_etcd_prefix: str) -> Iterator[Backend]:
    """Makes started coordinators on the backend; each test uses fresh namespaces."""
    if request.param == "etcd":
        url = request.getfixturevalue("etcd_cluster").tooz_url(0)
    else:
        url = request.getfixturevalue("redis_server").url
    started: list[ToozCoordinator] = []

    def make(member: str, namespace: str = "a") -> ToozCoordinator:
        coordinator = ToozCoordinator(
            url,
            member,
            lease_ttl=TTL,
            call_timeout=1,
            namespace=f"{fresh_etcd_prefix}{namespace}",
        )
        coordinator.start()
        started.append(coordinator)
        return coordinator

    yield make
    for coordinator in started:
        try:
            coordinator.stop()
        except Exception as exc:  # its backend may be dead by now
            print(f"{coordinator.member} not stopped: {exc}")


def test_two_namespaces_on_one_backend_see_neither_the_other_servers_nor_locks(
    backend: Backend,
) -> None:
    a1, a2 = backend("vigil-1", "region-a"), backend("vigil-2", "region-a")
    b1 = backend("vigil-1", "region-b")  # the same member name, another deployment
    assert a1.members() == a2.members() == {"vigil-1", "vigil-2"}
    assert b1.members() == {"vigil-1"}

    assert a1.try_lock("segment-s") is True
    assert a2.try_lock("segment-s") is False  # one owner per segment in a deployment
    assert b1.try_lock("segment-s") is True  # the other deployment's segment of that name
    assert a1.still_held("segment-s") and b1.still_held("segment-s")


def test_a_lock_that_expired_while_its_holder_was_away_is_not_held(backend: Backend) -> None:
    away, other = backend("vigil-1"), backend("vigil-2")
    assert away.try_lock("segment-s") is True
    # The holder stops renewing (frozen, cut off) past its lease; the other renews.
    deadline = time.monotonic() + TTL + 1.5  # etcd counts whole seconds
    while time.monotonic() < deadline:
        other.heartbeat()
        time.sleep(0.3)
    wait_until(lambda: other.try_lock("segment-s"), "the other server to take the lock", 5)
    assert other.members() == {"vigil-2"}  # the one away left the group with its lease
    # Back: its renewal succeeds (tooz renews blindly) and tooz still calls the lock
    # acquired; vigil asks the backend instead.
    away.heartbeat()
    assert away._locks["segment-s"].acquired is True
    assert away.still_held("segment-s") is False
    assert other.still_held("segment-s") is True
    assert "vigil-1" in wait_until(other.members, "the member back in the group", 5)


@pytest.mark.redis
def test_a_dead_redis_is_an_error_at_once_not_a_minute_of_retries(
    redis_server: RedisServer,
) -> None:
    coordinator = ToozCoordinator(redis_server.url, "vigil-1", lease_ttl=TTL, call_timeout=1)
    coordinator.start()
    try:
        assert coordinator.try_lock("segment-s") is True
        redis_server.kill()
        calls: list[Callable[[], Any]] = [
            coordinator.heartbeat,
            coordinator.members,
            lambda: coordinator.still_held("segment-s"),
            lambda: coordinator.try_lock("segment-t"),
        ]
        for call in calls:
            start = time.monotonic()
            with pytest.raises(CoordinationError, match="Connection refused"):
                call()
            assert time.monotonic() - start < 1.0  # it took 59 s with the retries on
    finally:
        coordinator.stop()  # best effort: logs, never raises
