"""The simulated cloud over real HTTP: values and errors cross intact, failures are temporary."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from vigil.clock import FakeClock, SystemClock
from vigil.drivers.errors import Conflict, NotFound, PermanentError, TemporaryError
from vigil.drivers.fencing import PowerState
from vigil.model import HaPolicy
from vigil.sim import rpc
from vigil.sim.cloud import SimCloud, SimLatency
from vigil.sim.rpc import CloudServer, RemoteCloud, serve_cloud


@pytest.fixture
def cloud() -> SimCloud:
    c = SimCloud(FakeClock(), latency=SimLatency.zero())
    for h in ("h1", "h2"):
        c.add_host(h)
    return c


@pytest.fixture
def served(cloud: SimCloud) -> Iterator[tuple[CloudServer, RemoteCloud]]:
    server, url = serve_cloud(cloud)
    remote = RemoteCloud(url)
    yield server, remote
    remote.close()
    server.close()


@pytest.fixture
def remote(served: tuple[CloudServer, RemoteCloud]) -> RemoteCloud:
    return served[1]


def test_values_arrive_as_the_cloud_returns_them(cloud: SimCloud, remote: RemoteCloud) -> None:
    sid = cloud.add_instance(
        "vm", "h1", policy=HaPolicy.NOTIFY, priority=4, server_group="g", anti_affinity=True
    )
    cloud.disable("h2", "maintenance")
    assert remote.list_services() == cloud.list_services()
    assert remote.get_service("h2") == cloud.get_service("h2")
    server = remote.get_server(sid)
    assert server == cloud.get_server(sid)
    assert server.policy is HaPolicy.NOTIFY
    assert remote.list_servers("h1") == [server]
    assert remote.bmc_power_status("h1") is PowerState.ON


def test_mutations_reach_the_cloud(cloud: SimCloud, remote: RemoteCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    remote.bmc_power_off("h1")
    assert not cloud.is_powered("h1")
    remote.set_forced_down("h1", True)
    remote.evacuate(sid, target_host="h2")
    assert cloud.get_server(sid).host == "h2"
    remote.stop(sid)
    remote.start(sid)
    remote.reboot(sid, hard=False)
    remote.disable("h2", "x")
    remote.enable("h2")
    remote.bmc_power_on("h1")
    for method, target in [
        ("bmc_power_off", "h1"),
        ("set_forced_down", "h1"),
        ("evacuate", sid),
        ("stop", sid),
        ("start", sid),
        ("reboot", sid),
        ("disable", "h2"),
        ("enable", "h2"),
        ("bmc_power_on", "h1"),
    ]:
        assert cloud.calls(method, target) == 1, method
    assert cloud.is_powered("h1")


def test_errors_keep_their_class_and_message(cloud: SimCloud, remote: RemoteCloud) -> None:
    sid = cloud.add_instance("vm", "h1")
    with pytest.raises(NotFound, match="nope"):
        remote.get_server("nope")
    with pytest.raises(Conflict, match="ComputeServiceInUse"):
        remote.evacuate(sid)
    cloud.set_forced_down("h1", True)
    with pytest.raises(PermanentError, match="same one") as caught:
        remote.evacuate(sid, "h1")
    assert type(caught.value) is PermanentError
    cloud.bmc_unreachable("h2", True)
    with pytest.raises(TemporaryError, match="h2"):
        remote.bmc_power_status("h2")


def test_only_the_cloud_api_is_served(
    cloud: SimCloud, served: tuple[CloudServer, RemoteCloud]
) -> None:
    url = served[0].url
    answer = httpx.post(f"{url}/rpc/power_loss", json={"host": "h1"})
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "NotFound"
    assert cloud.is_powered("h1")
    answer = httpx.post(f"{url}/rpc/get_service", json={"hostname": "h1"})
    assert (answer.status_code, answer.json()["error"]["type"]) == (400, "PermanentError")
    answer = httpx.post(f"{url}/rpc/get_service", content=b"[1, 2]")
    assert answer.status_code == 400


def test_a_closed_server_is_a_temporary_error(served: tuple[CloudServer, RemoteCloud]) -> None:
    server, remote = served
    assert remote.get_service("h1").up  # a kept-alive connection now exists
    server.close()
    with pytest.raises(TemporaryError, match="unreachable"):
        remote.get_service("h1")
    with pytest.raises(TemporaryError):
        RemoteCloud(server.url).list_services()


def test_a_slow_answer_times_out_as_temporary() -> None:
    cloud = SimCloud(SystemClock(), latency=dataclasses.replace(SimLatency.zero(), bmc_timeout=0.5))
    cloud.add_host("h1")
    cloud.bmc_unreachable("h1", True)
    with (
        serve_cloud(cloud)[0] as server,
        RemoteCloud(server.url, timeout=0.1) as remote,
        pytest.raises(TemporaryError, match="unreachable"),
    ):
        remote.bmc_power_off("h1")


def test_concurrent_clients(cloud: SimCloud, remote: RemoteCloud) -> None:
    ids = [cloud.add_instance(f"vm{i}", "h1") for i in range(8)]
    failures: list[BaseException] = []

    def work(sid: str) -> None:
        try:
            for _ in range(10):
                assert remote.get_server(sid).id == sid
                assert remote.get_service("h1").up
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(sid,)) for sid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert failures == []


def test_a_kept_alive_connection_the_server_closed_is_replaced(
    cloud: SimCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The served side closes an idle connection (its handler's timeout): the next call
    of that thread goes out on a new connection, without an error, and the call it
    carries is made once."""
    monkeypatch.setattr(rpc._Handler, "timeout", 0.2)
    server, url = serve_cloud(cloud)
    remote = RemoteCloud(url)
    try:
        assert remote.get_service("h1").host == "h1"
        time.sleep(0.6)  # the served side has closed the connection meanwhile
        remote.disable("h1", "maintenance")
        assert cloud.calls("disable", "h1") == 1
        assert remote.get_service("h1").disabled
    finally:
        remote.close()
        server.close()
