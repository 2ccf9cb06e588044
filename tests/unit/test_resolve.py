"""``vigil.agent.resolve``: the heartbeat addresses of names, on a fake resolver."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from vigil.agent.resolve import ServerAddresses


class FakeDns:
    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.asked: list[str] = []

    def __call__(self, host: str, port: int, family: int, kind: int) -> list[Any]:
        assert (family, kind) == (socket.AF_INET, socket.SOCK_DGRAM)
        self.asked.append(host)
        if host not in self.names:
            raise socket.gaierror(-2, "Name or service not known")
        return [(family, kind, 17, "", (a, port)) for a in self.names[host]]


def test_literals_are_their_own_address_and_never_looked_up() -> None:
    dns = FakeDns()
    addresses = ServerAddresses([("10.0.0.1", 8788), ("10.0.0.2", 8788)], lookup=dns)
    assert addresses.current() == [("10.0.0.1", 8788), ("10.0.0.2", 8788)]
    assert dns.asked == [] and addresses.names == []
    addresses.start()  # nothing to resolve: no thread
    addresses.stop()


def test_a_name_counts_for_each_of_its_addresses_once() -> None:
    dns = FakeDns()
    dns.names["ha"] = ["10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.1"]
    addresses = ServerAddresses([("10.0.0.1", 8788), ("ha", 8788)], lookup=dns)
    assert addresses.current() == [("10.0.0.1", 8788), ("10.0.0.2", 8788), ("10.0.0.3", 8788)]


def test_a_name_that_stops_resolving_keeps_its_addresses_and_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dns = FakeDns()
    dns.names["ha"] = ["10.0.0.1", "10.0.0.2"]
    addresses = ServerAddresses([("ha", 8788)], lookup=dns)
    del dns.names["ha"]
    with caplog.at_level(logging.INFO, logger="vigil.agent.resolve"):
        for _ in range(3):
            addresses.refresh()
        assert addresses.current() == [("10.0.0.1", 8788), ("10.0.0.2", 8788)]
        dns.names["ha"] = ["10.0.0.2", "10.0.0.4"]
        addresses.refresh()
        addresses.refresh()
    assert addresses.current() == [("10.0.0.2", 8788), ("10.0.0.4", 8788)]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "servers ha:8788: cannot resolve ([Errno -2] Name or service not known); still "
        "sending to 10.0.0.1:8788, 10.0.0.2:8788",
        "servers ha:8788: resolved again",
        "servers ha:8788 resolve to 10.0.0.2, 10.0.0.4 from now",
    ]


def test_a_name_never_resolved_sends_nowhere_until_it_is() -> None:
    dns = FakeDns()
    addresses = ServerAddresses([("ha", 8788), ("10.0.0.9", 8788)], lookup=dns)
    assert addresses.current() == [("10.0.0.9", 8788)]
    dns.names["ha"] = ["10.0.0.1"]
    addresses.refresh()
    assert addresses.current() == [("10.0.0.1", 8788), ("10.0.0.9", 8788)]
