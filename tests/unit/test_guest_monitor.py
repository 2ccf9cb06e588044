"""The libvirt monitor's mapping, on event sequences recorded from a real libvirt/QEMU
(tests/libvirt; ../shared/hv-notes.md): which sequences are failures to report, which are
intentional stops, and what a reconnection finds changed."""

from __future__ import annotations

from typing import Any

import pytest

from vigil.agent.libvirt_monitor import DomainState, classify, reconcile
from vigil.model import GuestFailureKind, GuestReport
from vigil.wire.reports import BadReport, decode_reports, encode_reports, sign

Seq = list[tuple[str, tuple[Any, ...]]]

# (event, callback arguments after the domain), as libvirt delivered them.
RECORDED: dict[str, tuple[Seq, list[GuestFailureKind]]] = {
    "panic, on_crash=destroy": (
        [("lifecycle", (3, 0)), ("lifecycle", (8, 0)), ("lifecycle", (5, 2))],
        [GuestFailureKind.CRASHED],
    ),
    "panic, on_crash=preserve": ([("lifecycle", (8, 0))], [GuestFailureKind.CRASHED]),
    "watchdog none": ([("watchdog", (0,))], [GuestFailureKind.WATCHDOG]),
    "watchdog reset, twice": (
        [("watchdog", (2,)), ("reboot", ()), ("watchdog", (2,)), ("reboot", ())],
        [GuestFailureKind.WATCHDOG, GuestFailureKind.WATCHDOG],
    ),
    "watchdog poweroff": (
        [("watchdog", (3,)), ("lifecycle", (5, 5))],
        [GuestFailureKind.WATCHDOG, GuestFailureKind.STOPPED_FAILED],
    ),
    "qemu killed": ([("lifecycle", (5, 5))], [GuestFailureKind.STOPPED_FAILED]),
    "io error, pause": (
        [("io-error", ("/var/lib/disk.qcow2", "virtio-disk0", 1, "enospc"))],
        [GuestFailureKind.IO_ERROR],
    ),
    # Intentional: never reported.
    "guest poweroff from inside": ([("lifecycle", (6, 1)), ("lifecycle", (5, 0))], []),
    "stop through Nova (graceful)": ([("lifecycle", (6, 0)), ("lifecycle", (5, 0))], []),
    "stop through Nova (destroy)": ([("lifecycle", (5, 1))], []),
    "start and reboot": ([("lifecycle", (2, 0)), ("reboot", ()), ("lifecycle", (4, 0))], []),
    "saved / migrated away": ([("lifecycle", (5, 4)), ("lifecycle", (5, 3))], []),
}


def replay(seq: Seq, last: DomainState | None = None) -> tuple[list[GuestFailureKind], Any]:
    reported = []
    for event, args in seq:
        observation = classify(event, args, last)
        if observation.state is not None:
            last = observation.state
        if observation.kind is not None:
            reported.append(observation.kind)
    return reported, last


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_sequences_map_to_the_failures_they_are(name: str) -> None:
    seq, expected = RECORDED[name]
    reported, _ = replay(seq, DomainState("running"))
    assert reported == expected


def test_watchdog_reports_carry_libvirts_action() -> None:
    for number, action in [(0, "none"), (1, "pause"), (2, "reset"), (3, "poweroff")]:
        observation = classify("watchdog", (number,), DomainState("running"))
        assert observation.detail["action"] == action


def test_a_stopped_crashed_alone_is_a_crash() -> None:
    # Missed the CRASHED event (connected after it): the stop alone still reports it.
    reported, last = replay([("lifecycle", (5, 2))], DomainState("running"))
    assert reported == [GuestFailureKind.CRASHED] and last == DomainState("shutoff", "crashed")


def test_reconcile_reports_what_changed_while_away() -> None:
    last = {
        "a": DomainState("running"),
        "b": DomainState("running"),
        "c": DomainState("running"),
        "d": DomainState("running"),
        "e": DomainState("crashed", "panicked"),
    }
    now = {
        "a": (1, 1),  # still running: nothing
        "b": (5, 6),  # shut off, failed: QEMU died while away
        "c": (5, 1),  # shut off, shutdown: the owner stopped it
        "d": (5, 3),  # shut off, crashed
        "e": (6, 0),  # still crashed: already reported
        "f": (6, 0),  # unknown before and crashed: nobody reported it
        "g": (5, 6),  # unknown before, shut off long ago: not ours to report
    }
    changes = {u: (s, k) for u, s, k, _ in reconcile(last, now)}
    assert changes["b"] == (DomainState("shutoff", "failed"), GuestFailureKind.STOPPED_FAILED)
    assert changes["c"] == (DomainState("shutoff", "shutdown"), None)
    assert changes["d"][1] == GuestFailureKind.CRASHED
    assert changes["f"][1] == GuestFailureKind.CRASHED
    assert changes["g"][1] is None
    assert "a" not in changes and "e" not in changes


def test_report_bodies_are_signed_and_bound_to_their_host() -> None:
    report = GuestReport("r1", "c1", "i1", GuestFailureKind.CRASHED, 5.0, {"reason": "x"})
    body = encode_reports("c1", [report])
    assert decode_reports(body, sign(body, b"k"), b"k", host="c1") == [report]
    with pytest.raises(BadReport, match="bad signature"):
        decode_reports(body, sign(body, b"other"), b"k", host="c1")
    with pytest.raises(BadReport, match="unsigned"):
        decode_reports(body, None, b"k", host="c1")
    with pytest.raises(BadReport, match="posted as"):
        decode_reports(body, sign(body, b"k"), b"k", host="c2")
    bad = b'{"host":"c1","reports":[{"id":"x"}]}'
    with pytest.raises(BadReport, match="malformed"):
        decode_reports(bad, sign(bad, b"k"), b"k", host="c1")
