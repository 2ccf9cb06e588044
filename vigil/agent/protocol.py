"""The heartbeat protocol between vigil-agent and vigil-server.

Heartbeats are single UDP datagrams: one server must take tens of thousands per second
(10,000 hosts, a few beats per second each), which connection-oriented transports make
expensive, and a lost datagram is exactly the signal the detector measures. Each datagram
is signed with HMAC-SHA256 over the agent key, and carries the agent's boot id and a
sequence number so that a replayed or reordered datagram is not mistaken for a live host.

A self-fencing agent also says how long its hardware watchdog waits (``watchdog``), and
the server answers each of its heartbeats with a signed lease grant: the agent may pet
its watchdog until the heartbeat's send time plus the lease TTL. An agent that hears no
grant stops petting, and its host resets.

Wire format: ``MAGIC + json + b"." + hex(hmac_sha256(key, MAGIC + json))`` with MAGIC
``VGL1`` for heartbeats and ``VGLG`` for grants.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

MAGIC = b"VGL1"
GRANT_MAGIC = b"VGLG"
MAX_DATAGRAM = 1024


class BadHeartbeat(Exception):
    """A datagram that is not a valid, correctly signed message; the message says why."""


@dataclass(frozen=True)
class Heartbeat:
    host: str
    boot_id: str
    seq: int
    sent_at: float
    watchdog: float = 0.0  # seconds the host's watchdog waits; 0: no self-fencing


@dataclass(frozen=True)
class LeaseGrant:
    """The server's answer to heartbeat ``seq``: a lease of ``ttl`` seconds from its sending."""

    host: str
    boot_id: str
    seq: int
    ttl: float


def _sign(magic: bytes, fields: dict[str, Any], key: bytes) -> bytes:
    body = magic + json.dumps(fields, separators=(",", ":")).encode()
    return body + b"." + hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def _verify(datagram: bytes, magic: bytes, key: bytes) -> dict[str, Any]:
    if len(datagram) > MAX_DATAGRAM or not datagram.startswith(magic):
        raise BadHeartbeat("not a vigil message of this kind")
    body, sep, signature = datagram.rpartition(b".")
    if not sep:
        raise BadHeartbeat("unsigned message")
    expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, signature):
        raise BadHeartbeat("bad signature (wrong or missing agent key)")
    try:
        data = json.loads(body[len(magic) :])
    except ValueError as exc:
        raise BadHeartbeat(f"malformed message: {exc}") from exc
    if not isinstance(data, dict):
        raise BadHeartbeat("malformed message: not an object")
    return data


def encode(beat: Heartbeat, key: bytes) -> bytes:
    fields: dict[str, Any] = {"h": beat.host, "b": beat.boot_id, "s": beat.seq, "t": beat.sent_at}
    if beat.watchdog:
        fields["w"] = beat.watchdog
    return _sign(MAGIC, fields, key)


def decode(datagram: bytes, key: bytes) -> Heartbeat:
    data = _verify(datagram, MAGIC, key)
    try:
        return Heartbeat(
            host=str(data["h"]),
            boot_id=str(data["b"]),
            seq=int(data["s"]),
            sent_at=float(data["t"]),
            watchdog=float(data.get("w", 0.0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed heartbeat: {exc}") from exc


def encode_grant(grant: LeaseGrant, key: bytes) -> bytes:
    return _sign(
        GRANT_MAGIC, {"h": grant.host, "b": grant.boot_id, "s": grant.seq, "l": grant.ttl}, key
    )


def decode_grant(datagram: bytes, key: bytes) -> LeaseGrant:
    data = _verify(datagram, GRANT_MAGIC, key)
    try:
        return LeaseGrant(
            host=str(data["h"]), boot_id=str(data["b"]), seq=int(data["s"]), ttl=float(data["l"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed lease grant: {exc}") from exc
