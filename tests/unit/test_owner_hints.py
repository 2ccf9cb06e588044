"""Several servers: the owner of a host's segment tells its agent so, and the agent then
sends every heartbeat to it and to the others only every few seconds; a server taking a
segment over holds its hosts' silence until the agents send to it again. The rules on a
given clock, then the real sockets: a receiver's hints, an agent and the simulated
senders following them."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from vigil.agent.fanout import Fanout
from vigil.agent.heartbeat import HeartbeatSender
from vigil.clock import FakeClock, SystemClock
from vigil.engine.heartbeat import HeartbeatReceiver, HeartbeatTable
from vigil.sim.senders import SenderProcesses
from vigil.wire.heartbeat import (
    BadHeartbeat,
    BeatTemplate,
    Heartbeat,
    OwnerHint,
    decode,
    decode_hint,
    encode,
    encode_hint,
    is_fanned,
)
from vigil.wire.keys import AgentKeys, host_key

KEY = b"hint-key"
MASTER = "hint-master"  # the receiver's; its agents hold host_key(MASTER, host)
A, B, C = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)


# --- the rules --------------------------------------------------------------------------


def test_without_a_hint_every_heartbeat_goes_to_every_server() -> None:
    fanout = Fanout()
    assert [list(fanout.targets("c1", [A, B, C], t)) for t in (0.0, 0.25, 0.5)] == [[A, B, C]] * 3


def test_a_hinted_owner_gets_every_heartbeat_the_others_one_every_few_seconds() -> None:
    """After ``others`` seconds of every heartbeat to every server saying it follows an
    owner (so that each server has seen the flag before the stream thins)."""
    fanout = Fanout()
    fanout.targets("c1", [A, B, C], 0.0)  # to all, before any hint
    assert not fanout.fanned("c1", 0.0)
    fanout.hinted("c1", B, ttl=2.0, others=1.0, now=0.1)
    assert fanout.fanned("c1", 0.1)
    fanout.hinted("c1", B, ttl=2.0, others=1.0, now=0.6)  # renewed: the same since
    times = (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75)
    sent = {t: list(fanout.targets("c1", [A, B, C], t)) for t in times}
    assert sent == {
        0.5: [A, B, C],  # following B for less than 1 s: still to every server
        1.0: [A, B, C],
        1.25: [B],
        1.5: [B],
        1.75: [B],
        2.0: [A, B, C],  # the others, once a second
        2.25: [B],
        2.5: [B],
        2.75: [A, B, C],  # the hint renewed at 0.6 lapsed at 2.6
    }
    # Other hosts are not affected.
    assert list(fanout.targets("c2", [A, B, C], 1.25)) == [A, B, C]


def test_a_lapsed_hint_sends_to_all_again_and_a_renewed_one_keeps_the_owner() -> None:
    fanout = Fanout()
    fanout.hinted("c1", B, ttl=2.0, others=0.5, now=0.0)
    assert list(fanout.targets("c1", [A, B], 0.1)) == [A, B]  # the first 0.5 s: to all
    assert list(fanout.targets("c1", [A, B], 0.45)) == [A, B]
    assert list(fanout.targets("c1", [A, B], 0.75)) == [B]
    fanout.hinted("c1", B, ttl=2.0, others=0.5, now=0.8)  # renewed while heartbeats come
    assert list(fanout.targets("c1", [A, B], 0.9)) == [B]
    assert fanout.owners("c1", 2.5) == [B]  # the first hint lapsed at 2.0
    assert list(fanout.targets("c1", [A, B], 3.0)) == [A, B]  # lapsed: the owner may be gone
    assert fanout.owners("c1", 3.0) == [] and not fanout.fanned("c1", 3.0)


def test_two_owners_briefly_both_get_every_heartbeat() -> None:
    """While ownership moves, the old owner's hint may last a little longer: both get
    every heartbeat, neither judges the host on a thinned stream."""
    fanout = Fanout()
    fanout.hinted("c1", A, ttl=2.0, others=0.5, now=0.0)
    fanout.hinted("c1", B, ttl=2.0, others=0.5, now=1.0)
    assert list(fanout.targets("c1", [A, B, C], 1.2)) == [A, B, C]
    assert list(fanout.targets("c1", [A, B, C], 1.5)) == [A, B]
    assert list(fanout.targets("c1", [A, B, C], 2.1)) == [A, B, C]
    assert list(fanout.targets("c1", [A, B, C], 2.5)) == [B]  # A's lapsed at 2.0


def test_a_hint_from_an_address_heartbeats_do_not_go_to_is_ignored() -> None:
    fanout = Fanout()
    fanout.targets("c1", [A, B], 0.0)
    fanout.hinted("c1", C, ttl=2.0, others=5.0, now=0.0)
    assert list(fanout.targets("c1", [A, B], 0.5)) == [A, B]


def test_a_restarted_agent_forgets_its_owner() -> None:
    fanout = Fanout()
    fanout.targets("c1", [A, B], 0.0)
    fanout.hinted("c1", A, ttl=2.0, others=5.0, now=0.0)
    fanout.forget("c1")
    assert list(fanout.targets("c1", [A, B], 0.5)) == [A, B]


def test_an_owner_hint_is_signed() -> None:
    hint = OwnerHint("c1", 2.0, 1.5)
    assert decode_hint(encode_hint(hint, KEY), KEY) == hint
    with pytest.raises(BadHeartbeat, match="signature"):
        decode_hint(encode_hint(hint, b"other"), KEY)
    with pytest.raises(BadHeartbeat):  # a heartbeat is not a hint
        decode_hint(encode(Heartbeat("c1", "b", 1, 0.0), KEY), KEY)
    with pytest.raises(BadHeartbeat, match="ttl"):
        decode_hint(encode_hint(OwnerHint("c1", 0.0, 1.0), KEY), KEY)


def test_a_heartbeat_says_whether_its_agent_follows_an_owner() -> None:
    """Signed with the rest, and readable without verifying (what a server reads of the
    heartbeats it leaves unverified); the simulated senders' bytes are the agent's."""
    fanned = Heartbeat("c1", "b", 3, 1.5, kernel_boot_id="k", fanned=True)
    datagram = encode(fanned, KEY)
    assert decode(datagram, KEY) == fanned and is_fanned(datagram)
    plain = Heartbeat("c1", "b", 3, 1.5, kernel_boot_id="k")
    assert not is_fanned(encode(plain, KEY)) and not decode(encode(plain, KEY), KEY).fanned
    template = BeatTemplate("c1", "b", KEY, "k")
    assert template.datagram(3, 1.5, fanned=True) == datagram
    assert template.datagram(3, 1.5) == encode(plain, KEY)


def test_the_table_keeps_which_unverified_hosts_follow_an_owner() -> None:
    table = HeartbeatTable(FakeClock())
    table.heard_unverified(["a", "b"], ["a"])
    assert table.fanned(["a", "b", "c"]) == ["a"] and table.age("b") == 0.0
    table.heard_unverified(["a"], [])
    assert table.fanned(["a", "b"]) == []


def test_a_hold_postpones_silence_and_is_no_first_heartbeat() -> None:
    """A server taking a segment over: its hosts' silence counts only from the end of the
    hold; a host it never heard stays never heard; a heartbeat after the hold counts as
    usual."""
    clock = FakeClock()
    table = HeartbeatTable(clock)
    table.heard(["a", "b"])
    clock.advance(1.5)
    assert set(table.silent(["a", "b"], 1.0)) == {"a", "b"}
    table.hold(["a", "b", "never"], 3.0)
    assert table.silent(["a", "b", "never"], 1.0) == {"never": None}
    assert table.age("a") == 0.0 and table.age("never") is None
    clock.advance(2.9)
    assert table.silent(["a", "b"], 1.0) == {}
    clock.advance(0.2)  # the hold ended 0.1 s ago
    table.heard(["b"])
    clock.advance(0.95)
    assert table.silent(["a", "b"], 1.0) == {"a": pytest.approx(1.05)}
    clock.advance(0.1)
    assert table.silent(["a", "b"], 1.0) == {
        "a": pytest.approx(1.15),
        "b": pytest.approx(1.05),
    }
    assert table.ages()["a"] == pytest.approx(1.15)


# --- real sockets ------------------------------------------------------------------------


def _key(host: str) -> bytes:
    return host_key(MASTER, host).encode()


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.05)
    return s


@pytest.fixture(params=["thread", "process"])
def receiver(request: pytest.FixtureRequest) -> Iterator[HeartbeatReceiver]:
    rx = HeartbeatReceiver(
        HeartbeatTable(SystemClock()),
        keys=AgentKeys([MASTER]),
        known_host=lambda h: h in ("c1", "c2"),
        bind=("127.0.0.1", 0),
        clock=SystemClock(),
        process=request.param == "process",
        owner_hint=(0.6, 1.0),
    )
    rx.start()
    yield rx
    rx.stop()


def _drain(s: socket.socket) -> int:
    """How many heartbeats are queued on ``s``, taken."""
    s.setblocking(False)
    n = 0
    while True:
        try:
            decode(s.recv(2048), KEY)
        except BlockingIOError:
            break
        n += 1
    s.settimeout(0.05)
    return n


def _hints(agent: socket.socket, seconds: float) -> list[OwnerHint]:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(decode_hint(agent.recv(2048), _key("c1")))
        except TimeoutError:
            continue
    return got


def test_the_receiver_hints_the_agents_of_the_hosts_it_verifies(
    receiver: HeartbeatReceiver,
) -> None:
    """Alone (verifying all): no hint. Holding c1's segment: c1's agent is told, at most
    every third of the ttl however often it beats; c2's (another server's) is not."""
    agent = _udp()
    try:

        def beat(host: str, seq: int) -> None:
            agent.sendto(
                encode(Heartbeat(host, "boot", seq, time.time()), _key(host)), receiver.address
            )

        beat("c1", 1)
        assert _hints(agent, 0.3) == []
        receiver.verify_only(["c1"])
        time.sleep(0.2)  # the child told
        for seq in range(2, 12):  # 0.5 s of heartbeats every 0.05 s
            beat("c1", seq)
            beat("c2", seq)
            time.sleep(0.05)
        hints = _hints(agent, 0.2)
        assert {h.host for h in hints} == {"c1"}
        assert hints[0] == OwnerHint("c1", 0.6, 1.0)
        assert 2 <= len(hints) <= 4  # one every 0.2 s over 0.5-0.6 s, not one per heartbeat (10)
        # c2's heartbeats, read by name: whether its agent follows an owner is kept.
        table = receiver._table
        assert table.fanned(["c2"]) == []
        agent.sendto(
            encode(Heartbeat("c2", "boot", 20, time.time(), fanned=True), _key("c2")),
            receiver.address,
        )
        deadline = time.monotonic() + 2
        while not table.fanned(["c2"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert table.fanned(["c1", "c2"]) == ["c2"]
    finally:
        agent.close()


def test_an_agent_follows_its_owners_hints_and_falls_back_to_every_server() -> None:
    """A real agent sending to two servers every 0.02 s: once server b says it owns the
    host, b gets every heartbeat and a one every 0.2 s; when b stops saying so, both get
    every heartbeat again."""
    a, b = _udp(), _udp()
    sender = HeartbeatSender(
        ["c1"], servers=[a.getsockname(), b.getsockname()], key=KEY, interval=0.02
    )
    sender.start()
    try:
        _, agent_address = b.recvfrom(2048)
        b.sendto(encode_hint(OwnerHint("c1", 1.0, 0.2), KEY), agent_address)
        deadline = time.monotonic() + 2
        while not sender.owners("c1") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sender.owners("c1") == [b.getsockname()]
        time.sleep(0.25)  # following b for 0.2 s, every heartbeat still goes to both
        _drain(a)
        _drain(b)  # what was sent before the hint took effect
        time.sleep(0.4)  # within the hint's 1 s
        counts = {"a": _drain(a), "b": _drain(b)}
        assert counts["b"] >= 12  # ~20 at one every 0.02 s
        assert 1 <= counts["a"] <= 3  # one every 0.2 s
        time.sleep(0.45)  # the hint lapsed: every server again
        assert sender.owners("c1") == []
        _drain(a)
        a.settimeout(0.2)
        seqs = [decode(a.recv(2048), KEY).seq for _ in range(5)]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    finally:
        sender.stop()
        a.close()
        b.close()


def test_the_simulated_senders_follow_the_hints_as_an_agent_does() -> None:
    a, b = _udp(), _udp()
    senders = SenderProcesses(
        ["h1"],
        {"h1": "k1"},
        addresses=[a.getsockname(), b.getsockname()],
        key=KEY,
        interval=0.02,
        processes=1,
    )
    senders.start()
    try:
        _, agent_address = b.recvfrom(2048)
        hint = encode_hint(OwnerHint("h1", 5.0, 0.5), KEY)
        b.sendto(hint, agent_address)
        time.sleep(0.8)  # the hint taken, then 0.5 s of every heartbeat to both
        _drain(a)
        time.sleep(1.0)
        to_a = _drain(a)
        assert 1 <= to_a <= 3  # one every 0.5 s, against 50 without the hint
        assert senders.stats()[0]["hints"] == 1
    finally:
        senders.close()
        a.close()
        b.close()
