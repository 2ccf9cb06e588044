"""Owner hints (issue 16, several servers): the owner of a host's segment asks its agent
to send it every heartbeat and the other servers one in ``every``; a hint lapses, is
refused when it is not an answer to this agent's own recent heartbeat, and is sent only
by a server that verifies the host and may act (``vigil.agent.routes``)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from vigil.agent.heartbeat import HeartbeatSender
from vigil.agent.routes import OwnerRoutes
from vigil.clock import SystemClock
from vigil.engine.heartbeat import HeartbeatReceiver, HeartbeatTable
from vigil.sim.senders import SenderProcesses
from vigil.wire.heartbeat import (
    BadHeartbeat,
    Heartbeat,
    OwnerHint,
    decode,
    decode_hint,
    encode,
    encode_hint,
)

KEY = b"owner-hint-key"
A, B, C = ("127.0.0.1", 1001), ("127.0.0.1", 1002), ("127.0.0.1", 1003)
SERVERS = (A, B, C)


def test_an_owner_hint_round_trips_and_a_forged_or_odd_one_is_refused() -> None:
    hint = OwnerHint("compute-1", "boot", 16, 8, 4.25)
    assert decode_hint(encode_hint(hint, KEY), KEY) == hint
    with pytest.raises(BadHeartbeat):
        decode_hint(encode_hint(hint, b"wrong-key"), KEY)
    with pytest.raises(BadHeartbeat, match="every 0"):
        decode_hint(encode_hint(OwnerHint("compute-1", "boot", 16, 0, 4.25), KEY), KEY)
    with pytest.raises(BadHeartbeat):  # a heartbeat is not a hint
        decode_hint(encode(Heartbeat("compute-1", "boot", 1, 0.0), KEY), KEY)


def test_a_hint_sends_every_heartbeat_to_its_owner_and_one_in_every_to_all() -> None:
    routes = OwnerRoutes()
    assert routes.targets("h", 1, SERVERS, now=0.0) == SERVERS  # no hint: every server
    hint = OwnerHint("h", "boot", 8, 4, 2.25)
    assert routes.hinted(hint, B, boot_id="boot", seq=9, interval=0.25, now=10.0)
    sent = {seq: routes.targets("h", seq, SERVERS, now=10.5) for seq in range(10, 17)}
    assert sent == {s: (SERVERS if s % 4 == 0 else (B,)) for s in range(10, 17)}
    assert routes.targets("other", 10, SERVERS, now=10.5) == SERVERS
    # In force 2.25 s from the answered heartbeat's sending (one beat before "now").
    assert routes.targets("h", 13, SERVERS, now=11.99) == (B,)
    assert routes.targets("h", 13, SERVERS, now=12.0) == SERVERS  # lapsed
    assert routes.owner("h", 12.0) is None


def test_a_hint_that_is_no_answer_to_this_agents_recent_heartbeat_is_refused() -> None:
    routes = OwnerRoutes()
    take = routes.hinted
    assert not take(
        OwnerHint("h", "old-boot", 8, 4, 2.25), B, boot_id="boot", seq=9, interval=0.25, now=0
    )
    assert not take(
        OwnerHint("h", "boot", 8, 4, 2.25), B, boot_id="boot", seq=17, interval=0.25, now=0
    )
    assert not take(
        OwnerHint("h", "boot", 12, 4, 2.25), B, boot_id="boot", seq=9, interval=0.25, now=0
    )
    assert not take(
        OwnerHint("h", "boot", 8, 1, 2.25), B, boot_id="boot", seq=9, interval=0.25, now=0
    )
    assert routes.owner("h", 0.0) is None


def test_a_later_owners_hint_wins_and_an_owner_no_longer_configured_is_passed_over() -> None:
    routes = OwnerRoutes()
    assert routes.hinted(
        OwnerHint("h", "b", 8, 4, 2.25), A, boot_id="b", seq=8, interval=0.25, now=0.0
    )
    assert routes.hinted(
        OwnerHint("h", "b", 12, 4, 2.25), B, boot_id="b", seq=12, interval=0.25, now=1.0
    )
    # A's hint for 8, delayed, arrives after B's: B stays the owner.
    assert not routes.hinted(
        OwnerHint("h", "b", 8, 4, 2.25), A, boot_id="b", seq=12, interval=0.25, now=1.1
    )
    assert routes.owner("h", 1.2) == B
    assert routes.targets("h", 13, (A, C), now=1.2) == (A, C)  # B not a server now
    routes.hinted(OwnerHint("h", "b", 16, 4, 2.25), B, boot_id="b", seq=16, interval=0.25, now=2.0)
    routes.forget("h")  # a new agent process
    assert routes.targets("h", 17, SERVERS, now=2.1) == SERVERS


def _hints(sock: socket.socket, wait: float = 0.5) -> list[OwnerHint]:
    hints: list[OwnerHint] = []
    sock.settimeout(wait)
    try:
        while True:
            datagram, _ = sock.recvfrom(2048)
            hints.append(decode_hint(datagram, KEY))
    except TimeoutError:
        return hints


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_server_hints_the_hosts_it_verifies_while_it_may_act(process: bool) -> None:
    """One heartbeat in ``every`` of a host verified here is answered with a hint to
    its sender; none for a host of another server's segment, none once the window
    given has closed or hints are turned off."""
    table = HeartbeatTable(SystemClock())
    rx = HeartbeatReceiver(
        table,
        key=KEY,
        known_host=lambda h: h in ("mine", "theirs"),
        bind=("127.0.0.1", 0),
        clock=SystemClock(),
        process=process,
    )
    rx.start()
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    try:
        rx.verify_only(["mine"])
        rx.hint((time.monotonic() + 60, 4, 2.25))
        time.sleep(0.2)  # the child told
        for seq in range(1, 10):
            for host in ("mine", "theirs"):
                agent.sendto(encode(Heartbeat(host, "b", seq, time.time()), KEY), rx.address)
        assert sorted((h.host, h.seq, h.every, h.ttl) for h in _hints(agent)) == [
            ("mine", 4, 4, 2.25),
            ("mine", 8, 4, 2.25),
        ]
        rx.hint((time.monotonic() - 1, 4, 2.25))  # the acting window closed
        time.sleep(0.2)
        agent.sendto(encode(Heartbeat("mine", "b", 12, time.time()), KEY), rx.address)
        rx.hint(None)
        time.sleep(0.2)
        agent.sendto(encode(Heartbeat("mine", "b", 16, time.time()), KEY), rx.address)
        assert _hints(agent) == []
        assert rx.received == 11  # every heartbeat of "mine" recorded all the same
    finally:
        agent.close()
        rx.stop()


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.02)
    return sock


def _drain(sock: socket.socket, seconds: float, owner: bool = False) -> list[int]:
    """Sequence numbers received for ``seconds``; an owner answers each multiple of 4."""
    seqs: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            datagram, source = sock.recvfrom(2048)
        except TimeoutError:
            continue
        beat = decode(datagram, KEY)
        seqs.append(beat.seq)
        if owner and beat.seq % 4 == 0:
            hint = OwnerHint(beat.host, beat.boot_id, beat.seq, 4, 9 * 0.02)
            sock.sendto(encode_hint(hint, KEY), source)
    return seqs


def test_an_agent_follows_its_owners_hints_and_goes_back_to_all_when_they_stop() -> None:
    owner, other = _udp(), _udp()
    sender = HeartbeatSender(
        ["c1"], servers=[owner.getsockname(), other.getsockname()], key=KEY, interval=0.02
    )
    sender.start()
    try:
        # The owner hints while the test plays it; the other hears the multiples of 4.
        heard: dict[str, list[int]] = {}
        t = threading.Thread(target=lambda: heard.update(other=_drain(other, 1.5)))
        t.start()
        heard["owner"] = _drain(owner, 1.5, owner=True)
        t.join()
        # The second half (the first hint and its way back have taken effect by then):
        # the owner got every heartbeat, the other only multiples of 4.
        last = heard["owner"][len(heard["owner"]) // 2 :]
        assert last == list(range(last[0], last[0] + len(last)))
        tail = [s for s in heard["other"] if s >= last[0]]
        assert len(tail) >= 3 and all(s % 4 == 0 for s in tail)
        # The owner stops hinting (it died, or gave the segment up): within the hint's
        # ttl, every heartbeat goes to every server again.
        _drain(owner, 0.3)
        back = _drain(other, 0.3)
        assert len(back) >= 8 and any(s % 4 for s in back)
    finally:
        sender.stop()
        owner.close()
        other.close()


def test_simulated_agents_follow_owner_hints_as_an_agent_does() -> None:
    """bench/scale.py's sender processes: the same routing, so that three servers'
    figures are what real agents would give them."""
    owner, other = _udp(), _udp()
    senders = SenderProcesses(
        ["s1", "s2"],
        {"s1": "k1", "s2": "k2"},
        key=KEY,
        addresses=[owner.getsockname(), other.getsockname()],
        interval=0.02,
        processes=1,
    )
    senders.start()
    try:
        counts: dict[str, list[int]] = {}
        t = threading.Thread(target=lambda: counts.update(other=_drain(other, 1.5)))
        t.start()
        counts["owner"] = _drain(owner, 1.5, owner=True)
        t.join()
        tail = counts["other"][len(counts["other"]) // 2 :]
        assert len(tail) >= 3 and all(s % 4 == 0 for s in tail)
        assert len(counts["owner"]) > 2 * len(counts["other"])
        assert senders.stats()[0]["hints"] > 0
    finally:
        senders.close()
        owner.close()
        other.close()
