"""The heartbeat protocol between vigil-agent and vigil-server.

Heartbeats are single UDP datagrams: one server must take tens of thousands per second
(10,000 hosts, a few beats per second each), which connection-oriented transports make
expensive, and a lost datagram is exactly the signal the detector measures. Each datagram
is signed with HMAC-SHA256 under its host's agent key (``vigil.wire.keys``: a server
verifies it with the key of the host it names, ``decode_signed``), and carries the
agent's boot id and a sequence number so that a replayed or reordered datagram is not
mistaken for a live host.

``boot_id`` is the agent *process*'s id (its sequence numbers start again with it);
``kernel_boot_id`` is the host's (``/proc/sys/kernel/random/boot_id``), new at every boot
of the host, so the server can tell that a host has really rebooted.

A self-fencing agent also says how long its hardware watchdog waits (``watchdog``) and
how long its peer checks may keep it alive (``peer_window``), and acknowledges the last
lease grant it received (``ack``, a sequence number of its own). The server answers each
of its heartbeats with a signed lease grant: the agent may pet its watchdog until the
heartbeat's send time plus the lease TTL. The grant also names the host's segment and
how many hosts it has (``segment``, ``n``): the agent needs both to ask its peers (see
``vigil.agent.peers``).

Peers: an agent whose lease ran out asks the other agents of its segment (``VGLQ``, with
a random nonce) how long ago they last heard a grant; each answers (``VGLA``, the same
nonce, so an old answer cannot be replayed into a new question).

Several servers: the server that owns a host's segment tells the agent so, at most every
third of ``ttl`` (``VGLH``, an ``OwnerHint``): for ``ttl`` seconds the agent then sends
every heartbeat to that server and to the others only every ``others`` seconds
(``vigil.agent.fanout``), instead of every heartbeat to every server.

Wire format: ``MAGIC + json + b"." + hex(hmac_sha256(key, MAGIC + json))`` with MAGIC
``VGL1`` for heartbeats, ``VGLG`` for grants, ``VGLH`` for owner hints, ``VGLQ`` /
``VGLA`` for peer queries and answers. Grants and hints are signed with the key the
heartbeat was verified with (the one its agent holds); peer queries and answers with
the peer key.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vigil.wire.keys import BadSignature

MAGIC = b"VGL1"
GRANT_MAGIC = b"VGLG"
HINT_MAGIC = b"VGLH"
QUERY_MAGIC = b"VGLQ"
ANSWER_MAGIC = b"VGLA"
MAX_DATAGRAM = 1024
_JSON = json.JSONDecoder()
_JSON_OUT = json.JSONEncoder(separators=(",", ":"))


class BadHeartbeat(Exception):
    """A datagram that is not a valid, correctly signed message; the message says why."""


class WrongKey(BadHeartbeat, BadSignature):
    """A message not signed with the key tried (another may still verify it)."""


@dataclass(frozen=True)
class Heartbeat:
    host: str
    boot_id: str
    seq: int
    sent_at: float
    watchdog: float = 0.0  # seconds the host's watchdog waits; 0: no self-fencing
    kernel_boot_id: str = ""  # the host's kernel boot id; "" when unknown
    ack: int = 0  # sequence number of the last lease grant received (this boot); 0: none
    peer_window: float = 0.0  # seconds one passing peer check lets the agent pet
    fanned: bool = False  # the agent follows an owner's hints (vigil.agent.fanout)


@dataclass(frozen=True)
class LeaseGrant:
    """The server's answer to heartbeat ``seq``: a lease of ``ttl`` seconds from its sending."""

    host: str
    boot_id: str
    seq: int
    ttl: float
    segment: str = ""  # the host's segment
    n: int = 0  # hosts in that segment (the host included); 0: unknown


@dataclass(frozen=True)
class OwnerHint:
    """The server sending it owns ``host``'s segment: for ``ttl`` seconds from its
    receipt, heartbeats need reach the other servers only every ``others`` seconds."""

    host: str
    ttl: float
    others: float


@dataclass(frozen=True)
class PeerQuery:
    """``host`` asks a peer how long ago it last received a lease grant."""

    host: str
    nonce: str


@dataclass(frozen=True)
class PeerAnswer:
    """``host`` answers ``to``'s query ``nonce``: its last grant was ``grant_age`` seconds
    ago (None: it holds none from this boot), for a host of ``segment``."""

    host: str
    to: str
    nonce: str
    grant_age: float | None
    segment: str


def _sign(magic: bytes, fields: dict[str, Any], key: bytes) -> bytes:
    body = magic + _JSON_OUT.encode(fields).encode()
    return body + b"." + hmac.digest(key, body, "sha256").hex().encode()


def _verify(datagram: bytes, magic: bytes, key: bytes) -> dict[str, Any]:
    if len(datagram) > MAX_DATAGRAM or not datagram.startswith(magic):
        raise BadHeartbeat("not a vigil message of this kind")
    body, sep, signature = datagram.rpartition(b".")
    if not sep:
        raise BadHeartbeat("unsigned message")
    # hmac.digest: the one-shot C path (no HMAC object); a server verifies 40,000 of
    # these a second at 10,000 hosts.
    expected = hmac.digest(key, body, "sha256").hex().encode()
    if not hmac.compare_digest(expected, signature):
        raise WrongKey("bad signature (wrong or missing agent key)")
    try:
        # raw_decode: decode() would look for whitespace around the object, which no
        # encoder of this protocol writes (a third of the parse at 40,000 a second).
        text = body[len(magic) :].decode()
        data, end = _JSON.raw_decode(text)
    except ValueError as exc:
        raise BadHeartbeat(f"malformed message: {exc}") from exc
    if end != len(text):
        raise BadHeartbeat("malformed message: extra data after the object")
    if not isinstance(data, dict):
        raise BadHeartbeat("malformed message: not an object")
    return data


def encode(beat: Heartbeat, key: bytes) -> bytes:
    fields: dict[str, Any] = {"h": beat.host, "b": beat.boot_id, "s": beat.seq, "t": beat.sent_at}
    if beat.watchdog:
        fields["w"] = beat.watchdog
    if beat.kernel_boot_id:
        fields["k"] = beat.kernel_boot_id
    if beat.ack:
        fields["a"] = beat.ack
    if beat.peer_window:
        fields["p"] = beat.peer_window
    if beat.fanned:
        fields["f"] = 1  # last: is_fanned reads it without parsing
    return _sign(MAGIC, fields, key)


class BeatTemplate:
    """One agent's heartbeats, the same bytes as ``encode`` gives, from a prefix and a
    suffix encoded once: only the sequence number and the send time change from one beat
    to the next. For a process sending the heartbeats of thousands of hosts
    (``vigil.sim.senders``), where building and encoding the whole message per beat was
    most of its cost. A heartbeat with any other field set uses ``encode``."""

    def __init__(self, host: str, boot_id: str, key: bytes, kernel_boot_id: str = "") -> None:
        # The dict's JSON with placeholders for seq and time, split around them: the
        # encoder's own escaping and separators, so the bytes cannot drift from encode's.
        text = _JSON_OUT.encode({"h": host, "b": boot_id, "s": 0, "t": 0.5})
        head, tail = text.rsplit(',"s":0,"t":0.5', 1)
        kernel = f',"k":{_JSON_OUT.encode(kernel_boot_id)}' if kernel_boot_id else ""
        self._head = MAGIC + f'{head},"s":'.encode()
        self._tail = f"{kernel}{tail}".encode()
        self._fanned_tail = f'{kernel},"f":1{tail}'.encode()
        self._key = key

    def datagram(self, seq: int, sent_at: float, fanned: bool = False) -> bytes:
        tail = self._fanned_tail if fanned else self._tail
        body = b'%s%d,"t":%s%s' % (self._head, seq, repr(sent_at).encode(), tail)
        return body + b"." + hmac.digest(self._key, body, "sha256").hex().encode()


HeartbeatFields = tuple[str, str, int, float, float, str, int, float]


def decode_fields(datagram: bytes, key: bytes) -> HeartbeatFields:
    """A heartbeat's fields, in ``Heartbeat``'s order, without building one: what a
    server verifying 40,000 a second takes (a frozen dataclass costs more to build than
    its JSON to parse)."""
    data = _verify(datagram, MAGIC, key)
    try:
        return (
            str(data["h"]),
            str(data["b"]),
            int(data["s"]),
            float(data["t"]),
            float(data.get("w", 0.0)),
            str(data.get("k", "")),
            int(data.get("a", 0)),
            float(data.get("p", 0.0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed heartbeat: {exc}") from exc


_HOST_AT = MAGIC + b'{"h":"'  # every encoder of this protocol writes the host first


def peek_host(datagram: bytes) -> str | None:
    """The host a heartbeat says it comes from, NOT verified (None: not in the shape
    ``encode`` writes, with no escape in the name): what a server that leaves the
    heartbeats of other servers' segments unverified reads of them, for a fraction of
    a verification's cost."""
    if not datagram.startswith(_HOST_AT):
        return None
    end = datagram.find(b'"', len(_HOST_AT))
    if end < 0:
        return None
    name = datagram[len(_HOST_AT) : end]
    if b"\\" in name:
        return None
    try:
        return name.decode()
    except UnicodeDecodeError:
        return None


def claimed_host(datagram: bytes) -> str | None:
    """The host a heartbeat names, NOT verified: ``peek_host``, or for a name it cannot
    read (escaped), the parsed field (None: none)."""
    host = peek_host(datagram)
    if host is not None or not datagram.startswith(MAGIC):
        return host
    body = datagram[len(MAGIC) : datagram.rfind(b".")]
    try:
        data, _ = _JSON.raw_decode(body.decode())
    except ValueError:
        return None
    name = data.get("h") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def decode_signed(datagram: bytes, host: str, keys: Sequence[bytes]) -> tuple[HeartbeatFields, int]:
    """A heartbeat of ``host`` (its ``claimed_host``), verified with ``host``'s ``keys``
    (``AgentKeys.for_host``, the current first): its fields, and the index of the key
    that signed it. One signed with another host's key, or naming another host in its
    fields, raises ``BadHeartbeat``."""
    for index, key in enumerate(keys):
        try:
            fields = decode_fields(datagram, key)
        except WrongKey:
            continue
        if fields[0] != host:  # a second "h" in the object: JSON keeps the last
            raise BadHeartbeat(f"malformed heartbeat: names {host!r} and {fields[0]!r}")
        return fields, index
    raise WrongKey(f"bad signature (not host {host}'s agent key)")


def is_fanned(datagram: bytes) -> bool:
    """Whether a heartbeat says its agent follows an owner, NOT verified: read by a
    server of the heartbeats it leaves unverified, as ``peek_host``."""
    return datagram.find(_FANNED) >= 0


_FANNED = b',"f":1}.'


def decode(datagram: bytes, key: bytes) -> Heartbeat:
    fanned = datagram.find(_FANNED) >= 0
    return Heartbeat(*decode_fields(datagram, key), fanned=fanned)


def encode_grant(grant: LeaseGrant, key: bytes) -> bytes:
    fields: dict[str, Any] = {"h": grant.host, "b": grant.boot_id, "s": grant.seq, "l": grant.ttl}
    if grant.segment:
        fields["g"] = grant.segment
    if grant.n:
        fields["n"] = grant.n
    return _sign(GRANT_MAGIC, fields, key)


def decode_grant(datagram: bytes, key: bytes) -> LeaseGrant:
    data = _verify(datagram, GRANT_MAGIC, key)
    try:
        return LeaseGrant(
            host=str(data["h"]),
            boot_id=str(data["b"]),
            seq=int(data["s"]),
            ttl=float(data["l"]),
            segment=str(data.get("g", "")),
            n=int(data.get("n", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed lease grant: {exc}") from exc


def encode_hint(hint: OwnerHint, key: bytes) -> bytes:
    return _sign(HINT_MAGIC, {"h": hint.host, "l": hint.ttl, "o": hint.others}, key)


def decode_hint(datagram: bytes, key: bytes) -> OwnerHint:
    data = _verify(datagram, HINT_MAGIC, key)
    try:
        hint = OwnerHint(host=str(data["h"]), ttl=float(data["l"]), others=float(data["o"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed owner hint: {exc}") from exc
    if not (0 < hint.ttl <= 60 and 0 < hint.others <= 60):
        raise BadHeartbeat(f"malformed owner hint: ttl {hint.ttl}, others {hint.others}")
    return hint


def encode_query(query: PeerQuery, key: bytes) -> bytes:
    return _sign(QUERY_MAGIC, {"h": query.host, "q": query.nonce}, key)


def decode_query(datagram: bytes, key: bytes) -> PeerQuery:
    data = _verify(datagram, QUERY_MAGIC, key)
    try:
        return PeerQuery(host=str(data["h"]), nonce=str(data["q"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed peer query: {exc}") from exc


def encode_answer(answer: PeerAnswer, key: bytes) -> bytes:
    fields: dict[str, Any] = {
        "h": answer.host,
        "to": answer.to,
        "q": answer.nonce,
        "g": answer.segment,
    }
    if answer.grant_age is not None:
        fields["age"] = answer.grant_age
    return _sign(ANSWER_MAGIC, fields, key)


def decode_answer(datagram: bytes, key: bytes) -> PeerAnswer:
    data = _verify(datagram, ANSWER_MAGIC, key)
    try:
        age = data.get("age")
        return PeerAnswer(
            host=str(data["h"]),
            to=str(data["to"]),
            nonce=str(data["q"]),
            grant_age=None if age is None else float(age),
            segment=str(data["g"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed peer answer: {exc}") from exc
