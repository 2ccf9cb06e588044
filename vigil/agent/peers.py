"""Self-fencing peers: a host resets itself only when *it* is cut off, never because vigil is.

A self-fencing agent pets its hardware watchdog while it holds a lease from vigil-server
(``vigil.agent.selffence``). Alone, that rule resets every self-fencing host when
vigil-server is down for longer than a lease: losing vigil would reboot healthy hosts.
So, like medik8s self-node-remediation, an agent whose lease ran out asks the other
agents of its segment (its peers) how long ago *they* last received a grant, and:

- if ``1 + lost > N / 2``, where ``lost`` counts the distinct peers *of my segment*
  whose last grant is at least ``lease_ttl / 2`` old, and N is the segment's size: vigil
  is gone for a majority of the segment → keep petting for one peer window
  (``peer_interval + peer_timeout`` from the start of the check) and ask again every
  ``peer_interval``;
- else (no majority answered "lost" within ``peer_timeout``: the others still hear the
  server, which does not grant to me, or I reach too few of them) → stop petting.

A peer that heard a grant less than ``lease_ttl / 2`` ago ("fresh") does not vouch.
It does not force a reset either: in a partial partition where the server still
reaches a minority of the segment, the others would reset although the server can
never confirm them fenced (below) and so never evacuate them — an outage for nothing.

Resetting is the default; surviving needs positive evidence from a strict majority.

N is the larger of the segment size the server put in the last grant and the configured
peers + 1: an agent configured with too few peers cannot make N small enough to survive
in a minority. A peer counts as "lost" only when its own last grant named the same
segment, so a peer of another segment (a configuration mistake) cannot vouch. A peer
that holds no grant since its agent started (its host rebooted) answers with the time
since it started and the segment its previous agent last heard (the agent's state
file), so a reboot during an outage of vigil does not take a vouching peer away; one
that knows no segment cannot vouch. This is safe for the same reason as any "lost"
answer: the server counts as connected only peers with acknowledged grants, and one
without a grant is not.

Why the server may still treat a silent host X as fenced (``vigil.engine.lease``): the
server confirms X only when at least ``N - floor(N_X / 2)`` of the *other* hosts of the
segment (N_X: the size it last told X) have provably held a grant less than
``lease_ttl / 2`` old throughout the time X could have asked. Each of those answers
"fresh" or nothing, never "lost"; so at most ``N - 1 - (N - floor(N_X / 2)) <
floor(N_X / 2)`` peers can answer "lost" — fewer than X needs — and every check X makes
in that time fails. X then stops petting when its lease or last peer window ends, and its
watchdog fires ``watchdog_timeout`` later; the server waits lease TTL + peer window +
watchdog timeout + margin past the later of X's last grant and the start of the peers'
runs. When vigil itself is down, nobody is granted, every peer answers "lost", and no
host resets.

``judge`` is the rule, pure, on plain data. ``PeerGuard`` keeps one agent's checks on an
injectable clock (no I/O). ``PeerLink`` is the UDP side: it answers peers' queries and
sends this agent's.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from vigil.wire.heartbeat import (
    MAX_DATAGRAM,
    BadHeartbeat,
    LeaseGrant,
    PeerAnswer,
    PeerQuery,
    WrongKey,
    decode_answer,
    decode_query,
    encode_answer,
    encode_query,
)

LOG = logging.getLogger("vigil.agent.peers")
T = TypeVar("T")


class Verdict(enum.Enum):
    SURVIVE = "survive"  # vigil is gone for a majority of the segment: keep petting
    RESET = "reset"  # the server is alive, or no majority vouched: stop petting


@dataclass(frozen=True)
class PeerState:
    """What one peer said: how long ago it last received a grant (None: never, this boot)
    and the segment that grant named."""

    peer: str
    grant_age: float | None
    segment: str


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def segment_size(granted_n: int, configured_peers: int) -> int:
    """N: the larger of what the server said and what this agent was configured with."""
    return max(granted_n, configured_peers + 1, 1)


def judge(
    answers: Iterable[PeerState], *, me: str, segment: str, n: int, lease_ttl: float
) -> Judgement:
    """The peer rule (see the module docstring), on the answers of one check."""
    fresh_limit = lease_ttl / 2
    lost: set[str] = set()
    for a in answers:
        if a.peer == me:
            continue
        # A peer that heard the server lately ("fresh") simply does not vouch: a strict
        # majority of the segment must have lost vigil-server for this host to go on.
        # (Resetting at once because one peer is fresh would also reset hosts the
        # server cannot reach in a partial partition, where it could never confirm
        # them fenced and evacuate their instances: an outage for nothing.)
        vouches = a.grant_age is not None and a.grant_age >= fresh_limit
        if vouches and segment and a.segment == segment:
            lost.add(a.peer)
    if 1 + len(lost) > n / 2:
        return Judgement(
            Verdict.SURVIVE,
            f"vigil-server is unreachable for {1 + len(lost)} of the {n} hosts of segment "
            f"{segment}",
        )
    return Judgement(
        Verdict.RESET,
        f"only {1 + len(lost)} of the {n} hosts of segment {segment or '?'} lost vigil-server "
        "too: no majority, this host is the one cut off",
    )


@dataclass
class _Check:
    nonce: str
    started: float
    answers: dict[str, PeerState] = field(default_factory=dict)


class PeerGuard:
    """One agent's side of the rule, on an injectable clock; no I/O.

    ``on_grant`` records each lease grant (its receipt time is what this agent tells its
    peers). ``vouched(now)`` is asked while the lease is invalid: it starts a check when
    one is due (``send(nonce)`` sends the query to every peer), finishes it when every
    peer answered or ``peer_timeout`` passed, and returns whether the last passing check
    still covers ``now`` (its start + ``peer_interval + peer_timeout``). A new grant voids
    every check started before it.
    """

    def __init__(
        self,
        host: str,
        peers: Sequence[str],
        *,
        peer_interval: float,
        peer_timeout: float,
        send: Callable[[str], None] = lambda _nonce: None,
        monotonic: Callable[[], float] = time.monotonic,
        remembered: tuple[str, int] | None = None,
        on_segment: Callable[[str, int], None] | None = None,
    ) -> None:
        self.host = host
        # The segment (and its size) named by the last grant of an earlier agent process
        # (kept in the agent's state file): a host that just rebooted holds no grant yet,
        # but has not heard vigil since it started either, and can vouch for that.
        self._remembered = remembered or ("", 0)
        self._on_segment = on_segment
        self._started = monotonic()
        self._peers = [p for p in peers if p != host]
        self._interval = peer_interval
        self._timeout = peer_timeout
        self._send = send
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._grant_at: float | None = None
        self._segment = ""
        self._n = 0
        self._ttl = 0.0
        self._check: _Check | None = None
        self._last_start = -1e18
        self._vouched_until = -1e18
        self._verdict: Verdict | None = None

    @property
    def window(self) -> float:
        """Seconds one passing check lets the agent pet (the server waits for it)."""
        return self._interval + self._timeout

    def on_grant(self, grant: LeaseGrant, received_at: float) -> None:
        with self._lock:
            changed = (grant.segment, grant.n) != self._remembered
            if self._grant_at is None or received_at >= self._grant_at:
                self._grant_at = received_at
                self._segment = grant.segment
                self._n = grant.n
                self._ttl = grant.ttl
                self._remembered = (grant.segment, grant.n)
            self._check = None
            self._vouched_until = -1e18
            if self._verdict is Verdict.SURVIVE:
                LOG.warning("host %s: vigil-server grants again", self.host)
            self._verdict = None
        if changed and self._on_segment is not None:
            self._on_segment(grant.segment, grant.n)

    def answer(self, query: PeerQuery) -> PeerAnswer:
        """What this agent tells a peer that asks."""
        with self._lock:
            now = self._monotonic()
            if self._grant_at is not None:
                return PeerAnswer(
                    self.host,
                    query.host,
                    query.nonce,
                    max(0.0, now - self._grant_at),
                    self._segment,
                )
            segment = self._remembered[0]
            # No grant since this agent started: as long ago as it started, if it knows
            # its segment (a rebooted host); else it cannot vouch at all.
            age = max(0.0, now - self._started) if segment else None
            return PeerAnswer(self.host, query.host, query.nonce, age, segment)

    def on_answer(self, answer: PeerAnswer) -> None:
        with self._lock:
            check = self._check
            if check is None or answer.nonce != check.nonce or answer.to != self.host:
                return  # late, replayed, or not for this check
            if answer.host == self.host:
                return
            check.answers[answer.host] = PeerState(answer.host, answer.grant_age, answer.segment)

    def vouched(self, now: float | None = None) -> bool:
        now = self._monotonic() if now is None else now
        nonce = None
        with self._lock:
            check = self._check
            if check is not None and (
                len(check.answers) >= len(self._peers) or now - check.started >= self._timeout
            ):
                self._finish(check, now)
                check = self._check = None
            if check is None and now - self._last_start >= self._interval:
                nonce = secrets.token_hex(8)
                self._check = _Check(nonce, now)
                self._last_start = now
            vouched = now < self._vouched_until
        if nonce is not None:
            self._send(nonce)
        return vouched

    def _finish(self, check: _Check, now: float) -> None:
        n = segment_size(self._n, len(self._peers))
        j = judge(
            check.answers.values(), me=self.host, segment=self._segment, n=n, lease_ttl=self._ttl
        )
        if j.verdict is Verdict.SURVIVE:
            self._vouched_until = check.started + self.window
        if j.verdict is not self._verdict:  # a repeated verdict is not logged again
            self._verdict = j.verdict
            if j.verdict is Verdict.SURVIVE:
                LOG.critical(
                    "host %s: lease lost but %s: keep petting the watchdog", self.host, j.reason
                )
            else:
                LOG.critical("host %s: lease lost and %s: stop petting", self.host, j.reason)


class AgentState:
    """The agent's state file: the segment and size its last lease named. Read at start,
    written (atomically: a temporary file renamed) only when they change; a file that
    cannot be read or written is said once and otherwise ignored (the agent then simply
    cannot vouch for its peers after a reboot until its first grant)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._warned = False

    def load(self) -> tuple[str, int] | None:
        try:
            data = json.loads(self._path.read_text())
            return str(data["segment"]), int(data["n"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            LOG.warning("agent state %s not read: %s", self._path, exc)
            return None

    def save(self, segment: str, n: int) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"segment": segment, "n": n}))
            os.replace(tmp, self._path)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                LOG.warning("agent state %s not written: %s", self._path, exc)


def parse_peers(items: Iterable[str], default_port: int) -> dict[str, tuple[str, int]]:
    """``HOST=ADDR:PORT``, ``HOST=ADDR``, ``ADDR:PORT`` or ``ADDR`` → name: address.
    A peer without a name is known by its address (its answers name it: the name is
    only for the log)."""
    peers: dict[str, tuple[str, int]] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, sep, addr = item.partition("=")
        if not sep:
            name, addr = "", name
        host, colon, port = addr.rpartition(":")
        if not colon:
            host, port = addr, str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"peer {item!r}: expected HOST=ADDR:PORT or ADDR:PORT")
        peers[name.strip() or f"{host}:{port}"] = (host, int(port))
    return peers


def _first_valid(
    keys: Sequence[bytes], decode: Callable[[bytes, bytes], T], datagram: bytes
) -> tuple[T, bytes]:
    """``decode(datagram, key)`` with the first of ``keys`` that signed it, and that key."""
    for key in keys[:-1]:
        try:
            return decode(datagram, key), key
        except WrongKey:
            continue
    return decode(datagram, keys[-1]), keys[-1]


class PeerLink:
    """The UDP side: answers the queries of peers with ``guard``'s state, and sends
    ``guard``'s queries (``ask``) to ``peers``. Answers are accepted from any address:
    they are signed, and name their host and the nonce asked. Signed with the peer key
    (``vigil.wire.keys``), the same on every agent: ``keys``, the first signs, any
    verifies (a rotation under way); replaced when the peer key file changes."""

    def __init__(
        self,
        guard: PeerGuard,
        *,
        key: bytes,
        bind: tuple[str, int],
        peers: Mapping[str, tuple[str, int]],
    ) -> None:
        self._guard = guard
        self.keys: tuple[bytes, ...] = (key,)
        self._peers = dict(peers)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(bind)
        self._sock.settimeout(0.2)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._warned: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="peer-link", daemon=True)

    def ask(self, nonce: str) -> None:
        guard = self._guard
        datagram = encode_query(PeerQuery(guard.host, nonce), self.keys[0])
        for name, addr in self._peers.items():
            try:
                self._sock.sendto(datagram, addr)
            except OSError as exc:
                self._warn(name, f"host {guard.host}: query to peer {name} not sent: {exc}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= 30.0:
            self._warned[key] = now
            LOG.warning("%s", message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                datagram, source = self._sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)
                continue
            guard = self._guard
            try:
                if datagram.startswith(b"VGLQ"):
                    query, key = _first_valid(self.keys, decode_query, datagram)
                    reply = encode_answer(guard.answer(query), key)
                    self._sock.sendto(reply, source)
                else:
                    guard.on_answer(_first_valid(self.keys, decode_answer, datagram)[0])
            except BadHeartbeat as exc:
                self._warn(f"bad:{source[0]}", f"peer message from {source[0]} refused: {exc}")
            except OSError as exc:
                self._warn(f"send:{source[0]}", f"answer to {source[0]} not sent: {exc}")
