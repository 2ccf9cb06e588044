"""The self-fencing peer rule (``vigil.agent.peers``) on plain data and a fake clock, the
peer messages, and two agents' peer links over real UDP on the loopback."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from vigil.agent.peers import (
    AgentState,
    PeerGuard,
    PeerLink,
    PeerState,
    Verdict,
    judge,
    parse_peers,
    segment_size,
)
from vigil.wire.heartbeat import (
    BadHeartbeat,
    Heartbeat,
    LeaseGrant,
    PeerAnswer,
    PeerQuery,
    decode,
    decode_answer,
    decode_grant,
    decode_query,
    encode,
    encode_answer,
    encode_grant,
    encode_query,
)

KEY = b"peer-key"
TTL = 3.0


def lost(peer: str, age: float | None = 5.0, segment: str = "s") -> PeerState:
    return PeerState(peer, age, segment)


def verdict(answers: list[PeerState], n: int, segment: str = "s") -> Verdict:
    return judge(answers, me="c1", segment=segment, n=n, lease_ttl=TTL).verdict


# --- the rule -------------------------------------------------------------------------------


def test_fresh_peers_do_not_vouch_a_majority_decides() -> None:
    # the server hears c4 and c5 only: 3 of 5 lost it, a majority: nobody resets (the
    # server cannot confirm them fenced either: too few of the segment hear it)
    answers = [lost("c2"), lost("c3"), PeerState("c4", 0.1, "s"), PeerState("c5", 0.1, "s")]
    assert verdict(answers, n=5) is Verdict.SURVIVE
    # the server hears all the others: I am the one cut off
    fresh = [PeerState(f"c{i}", 0.1, "s") for i in range(2, 6)]
    assert verdict(fresh, n=5) is Verdict.RESET


@pytest.mark.parametrize(
    ("n", "lost_peers", "expected"),
    [
        (3, 1, Verdict.SURVIVE),  # 2 of 3
        (3, 0, Verdict.RESET),  # 1 of 3: I am the one cut off
        (4, 1, Verdict.RESET),  # 2 of 4 is no strict majority
        (4, 2, Verdict.SURVIVE),
        (5, 2, Verdict.SURVIVE),
        (5, 1, Verdict.RESET),
        (2, 1, Verdict.SURVIVE),
        (2, 0, Verdict.RESET),
        (1, 0, Verdict.SURVIVE),  # alone: nobody can vouch against it (and the server
        # never confirms such a host: see the lease keeper)
    ],
)
def test_survival_needs_a_strict_majority_of_the_segment(
    n: int, lost_peers: int, expected: Verdict
) -> None:
    answers = [lost(f"c{i + 2}") for i in range(lost_peers)]
    assert verdict(answers, n=n) is expected


def test_half_a_lease_old_is_lost_and_never_granted_peers_cannot_vouch() -> None:
    assert verdict([lost("c2", age=TTL / 2)], n=3) is Verdict.SURVIVE
    assert verdict([lost("c2", age=TTL / 2 - 0.01)], n=3) is Verdict.RESET
    assert verdict([lost("c2", age=None, segment="")], n=3) is Verdict.RESET


def test_only_peers_of_my_segment_and_each_peer_once_count() -> None:
    assert verdict([lost("c2", segment="other")], n=3) is Verdict.RESET
    assert verdict([lost("c2"), lost("c2")], n=4) is Verdict.RESET
    assert verdict([lost("c1"), lost("c1")], n=3) is Verdict.RESET  # myself
    assert verdict([lost("c2")], n=3, segment="") is Verdict.RESET  # I never had a grant


def test_the_segment_size_is_the_larger_of_the_servers_and_the_configured() -> None:
    assert segment_size(5, 2) == 5
    assert segment_size(3, 6) == 7  # more peers configured than the server said
    assert segment_size(0, 0) == 1


# --- one agent's guard on a fake clock -----------------------------------------------------


class Net:
    def __init__(self) -> None:
        self.asked: list[str] = []


def guard(now: list[float], net: Net, peers: tuple[str, ...] = ("c2", "c3")) -> PeerGuard:
    g = PeerGuard(
        "c1",
        list(peers),
        peer_interval=1.0,
        peer_timeout=0.5,
        send=net.asked.append,
        monotonic=lambda: now[0],
    )
    g.on_grant(LeaseGrant("c1", "b", 1, TTL, "s", 3), received_at=now[0])
    return g


def test_a_passing_check_covers_one_peer_window_and_checks_repeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now, net = [100.0], Net()
    g = guard(now, net)
    now[0] += TTL  # the lease ran out
    with caplog.at_level(logging.CRITICAL):
        assert not g.vouched()  # asks
        assert len(net.asked) == 1
        g.on_answer(PeerAnswer("c2", "c1", net.asked[0], 2.0, "s"))
        g.on_answer(PeerAnswer("c3", "c1", net.asked[0], None, ""))
        now[0] += 0.01
        assert g.vouched()  # all answered: 1 + 1 of 3 lost vigil
        for _ in range(3):  # and again every peer_interval, same answers
            now[0] += 1.0
            nonce = net.asked[-1]
            g.vouched()
            assert net.asked[-1] != nonce
            g.on_answer(PeerAnswer("c2", "c1", net.asked[-1], 3.0, "s"))
            now[0] += 0.01
            assert g.vouched()
    assert caplog.text.count("keep petting") == 1  # said once, on the change
    # no more answers: the last pass covers 1.5 s from its start, then it resets
    now[0] += 1.0
    assert g.vouched()
    now[0] += 0.48
    assert g.vouched()
    now[0] += 0.03
    assert not g.vouched()
    assert "stop petting" in caplog.text


def test_replayed_late_or_misaddressed_answers_are_ignored() -> None:
    now, net = [100.0], Net()
    g = guard(now, net)
    now[0] += TTL
    g.vouched()
    first = net.asked[0]
    now[0] += 0.6  # timed out with no answer: reset, then a new check later
    assert not g.vouched()
    now[0] += 0.5
    g.vouched()
    g.on_answer(PeerAnswer("c2", "c1", first, 9.0, "s"))  # an answer to the old question
    g.on_answer(PeerAnswer("c3", "c9", net.asked[-1], 9.0, "s"))  # for another host
    now[0] += 0.6
    assert not g.vouched()


def test_a_fresh_peer_does_not_vouch() -> None:
    now, net = [100.0], Net()
    g = guard(now, net)
    now[0] += TTL
    g.vouched()
    g.on_answer(PeerAnswer("c2", "c1", net.asked[0], 0.2, "s"))
    g.on_answer(PeerAnswer("c3", "c1", net.asked[0], 0.3, "s"))
    assert not g.vouched()


def test_a_new_grant_voids_the_checks_and_what_an_agent_answers() -> None:
    now, net = [100.0], Net()
    g = guard(now, net)
    now[0] += 2.0
    answer = g.answer(PeerQuery("c2", "n1"))
    assert answer == PeerAnswer("c1", "c2", "n1", 2.0, "s")
    now[0] += TTL
    g.vouched()
    g.on_grant(LeaseGrant("c1", "b", 2, TTL, "s", 3), received_at=now[0])
    g.on_answer(PeerAnswer("c2", "c1", net.asked[0], 9.0, "s"))
    assert not g.vouched(now[0] + 0.01)
    fresh = PeerGuard("c9", [], peer_interval=1.0, peer_timeout=0.5)
    assert fresh.answer(PeerQuery("c2", "n")).grant_age is None


# --- messages and addresses ----------------------------------------------------------------


def test_peer_messages_and_the_new_fields_round_trip_signed() -> None:
    q = PeerQuery("c1", "abc")
    a = PeerAnswer("c2", "c1", "abc", 1.25, "s")
    never = PeerAnswer("c2", "c1", "abc", None, "")
    assert decode_query(encode_query(q, KEY), KEY) == q
    assert decode_answer(encode_answer(a, KEY), KEY) == a
    assert decode_answer(encode_answer(never, KEY), KEY) == never
    grant = LeaseGrant("c1", "b", 3, 3.0, "s", 5)
    assert decode_grant(encode_grant(grant, KEY), KEY) == grant
    beat = Heartbeat("c1", "b", 4, 1.0, 8.0, kernel_boot_id="k-1", ack=3, peer_window=1.5)
    assert decode(encode(beat, KEY), KEY) == beat
    with pytest.raises(BadHeartbeat):
        decode_answer(encode_answer(a, b"wrong"), KEY)
    with pytest.raises(BadHeartbeat):
        decode_answer(encode_query(q, KEY), KEY)  # a query is no answer


def test_peers_are_parsed_with_or_without_a_name_and_port() -> None:
    assert parse_peers(["c2=10.0.0.2:9000", "10.0.0.3", " c4=10.0.0.4 "], 8789) == {
        "c2": ("10.0.0.2", 9000),
        "10.0.0.3:8789": ("10.0.0.3", 8789),
        "c4": ("10.0.0.4", 8789),
    }
    with pytest.raises(ValueError, match="expected HOST=ADDR:PORT"):
        parse_peers(["c2=10.0.0.2:port"], 8789)


# --- two agents over real UDP ----------------------------------------------------------------


def test_peer_links_ask_and_answer_over_udp() -> None:
    now = [time.monotonic()]
    links: dict[str, PeerLink] = {}
    guards: dict[str, PeerGuard] = {}
    for name in ("c1", "c2"):
        guards[name] = PeerGuard(
            name,
            ["other"],
            peer_interval=1.0,
            peer_timeout=0.5,
            send=lambda nonce, name=name: links[name].ask(nonce),  # type: ignore[misc]
        )
        guards[name].on_grant(LeaseGrant(name, "b", 1, 0.2, "s", 2), time.monotonic())
    links["c2"] = PeerLink(guards["c2"], key=KEY, bind=("127.0.0.1", 0), peers={})
    links["c1"] = PeerLink(
        guards["c1"], key=KEY, bind=("127.0.0.1", 0), peers={"c2": links["c2"].address}
    )
    for link in links.values():
        link.start()
    try:
        time.sleep(0.15)  # both grants are now more than half a 0.2 s lease old
        now[0] = time.monotonic()
        assert not guards["c1"].vouched()
        deadline = time.monotonic() + 2
        while not guards["c1"].vouched() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guards["c1"].vouched()  # c2 answered "lost": 2 of 2
    finally:
        for link in links.values():
            link.stop()


def test_a_rebooted_peer_vouches_with_the_segment_it_remembers(tmp_path: Path) -> None:
    """After its host rebooted while vigil was down, an agent holds no grant; it still
    tells its peers it has not heard vigil since it started, in the segment its state
    file remembers (fault schedule seed 82: otherwise two healthy hosts of four reset)."""
    now = [100.0]
    state = AgentState(tmp_path / "state.json")
    first = PeerGuard("c3", [], peer_interval=1.0, peer_timeout=0.5, monotonic=lambda: now[0])
    assert first.answer(PeerQuery("c1", "n")).grant_age is None  # knows no segment
    remembering = PeerGuard(
        "c3",
        [],
        peer_interval=1.0,
        peer_timeout=0.5,
        monotonic=lambda: now[0],
        on_segment=state.save,
    )
    remembering.on_grant(LeaseGrant("c3", "b", 1, TTL, "s", 4), received_at=now[0])
    assert state.load() == ("s", 4)
    now[0] += 50.0  # the host rebooted; a new agent starts
    rebooted = PeerGuard(
        "c3",
        [],
        peer_interval=1.0,
        peer_timeout=0.5,
        monotonic=lambda: now[0],
        remembered=state.load(),
    )
    now[0] += TTL
    answer = rebooted.answer(PeerQuery("c1", "n2"))
    assert (answer.grant_age, answer.segment) == (TTL, "s")
    lost = PeerState("c3", answer.grant_age, answer.segment)
    assert verdict([lost, PeerState("c2", 9.0, "s")], n=4) is Verdict.SURVIVE


def test_an_unreadable_state_file_is_no_segment(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert AgentState(path).load() is None
    AgentState(tmp_path / "missing" / "state.json").save("s", 3)  # creates its folder
    assert AgentState(tmp_path / "missing" / "state.json").load() == ("s", 3)
