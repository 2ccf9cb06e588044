"""The heartbeat protocol between vigil-agent and vigil-server.

Heartbeats are single UDP datagrams: one server must take tens of thousands per second
(10,000 hosts, a few beats per second each), which connection-oriented transports make
expensive, and a lost datagram is exactly the signal the detector measures. Each datagram
is signed with HMAC-SHA256 over the agent key, and carries the agent's boot id and a
sequence number so that a replayed or reordered datagram is not mistaken for a live host.

Wire format: ``b"VGL1" + json + b"." + hex(hmac_sha256(key, b"VGL1" + json))``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

MAGIC = b"VGL1"
MAX_DATAGRAM = 1024


class BadHeartbeat(Exception):
    """A datagram that is not a valid, correctly signed heartbeat; the message says why."""


@dataclass(frozen=True)
class Heartbeat:
    host: str
    boot_id: str
    seq: int
    sent_at: float


def encode(beat: Heartbeat, key: bytes) -> bytes:
    body = (
        MAGIC
        + json.dumps(
            {"h": beat.host, "b": beat.boot_id, "s": beat.seq, "t": beat.sent_at},
            separators=(",", ":"),
        ).encode()
    )
    return body + b"." + hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def decode(datagram: bytes, key: bytes) -> Heartbeat:
    if len(datagram) > MAX_DATAGRAM or not datagram.startswith(MAGIC):
        raise BadHeartbeat("not a vigil heartbeat")
    body, sep, signature = datagram.rpartition(b".")
    if not sep:
        raise BadHeartbeat("unsigned heartbeat")
    expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, signature):
        raise BadHeartbeat("bad signature (wrong or missing agent key)")
    try:
        data = json.loads(body[len(MAGIC) :])
        return Heartbeat(
            host=str(data["h"]),
            boot_id=str(data["b"]),
            seq=int(data["s"]),
            sent_at=float(data["t"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadHeartbeat(f"malformed heartbeat: {exc}") from exc
