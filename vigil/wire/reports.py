"""The guest failure report protocol between vigil-agent and vigil-server.

Reports go over HTTP (``POST /v1/agents/{host}/reports``), not UDP like heartbeats: each
one must arrive, so the agent retries until the server answers 2xx, which it does only
after the report is persisted. A report is signed like a heartbeat — HMAC-SHA256 with its
host's agent key (``vigil.wire.keys``) over the exact body, hex in the
``X-Vigil-Agent-Signature`` header — and names its host in the body, which must match the
URL (whose key the server verifies with). Its ``id`` (a UUID) makes a retry
idempotent: the server records each id once.

Body: ``{"host": ..., "reports": [{"id", "instance_id", "kind", "at", "detail"}, ...]}``.

The service watch (``vigil.agent.services``) posts the whole state of the host's watched
services to ``POST /v1/agents/{host}/services``, signed the same way:
``{"host": ..., "at": <when the snapshot was taken>, "services": {name: {"up", "since",
"detail"}}}``. A snapshot is a level, not an edge: the latest one wins, an older one
(a retry overtaken by a later report) changes nothing, so no ordering is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from vigil.model import GuestFailureKind, GuestReport, ServiceState
from vigil.wire.keys import BadSignature

SIGNATURE_HEADER = "X-Vigil-Agent-Signature"
MAX_BODY = 256 * 1024
MAX_REPORTS = 500


class BadReport(Exception):
    """A report body that is unsigned, wrongly signed or malformed; the message says why."""


class WrongSignature(BadReport, BadSignature):
    """A report not signed with the key tried (another may still verify it)."""


def sign(body: bytes, key: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def encode_reports(host: str, reports: Sequence[GuestReport]) -> bytes:
    return json.dumps(
        {
            "host": host,
            "reports": [
                {
                    "id": r.id,
                    "instance_id": r.instance_id,
                    "kind": r.kind.value,
                    "at": r.at,
                    "detail": dict(r.detail),
                }
                for r in reports
            ],
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def encode_services(host: str, at: float, services: Mapping[str, ServiceState]) -> bytes:
    return json.dumps(
        {
            "host": host,
            "at": at,
            "services": {
                name: {"up": s.up, "since": s.since, "detail": s.detail}
                for name, s in services.items()
            },
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def verify_signature(body: bytes, signature: str | None, key: bytes) -> None:
    if signature is None:
        raise BadReport("unsigned report (no agent signature)")
    if len(body) > MAX_BODY:
        raise BadReport("report too large")
    if not key or not hmac.compare_digest(sign(body, key), signature.strip()):
        raise WrongSignature("bad signature (wrong or missing agent key)")


def decode_services(
    body: bytes, signature: str | None, key: bytes, *, host: str
) -> tuple[float, dict[str, ServiceState]]:
    """Verify and parse a service snapshot of ``host``: (taken at, services)."""
    verify_signature(body, signature, key)
    try:
        data: Any = json.loads(body)
        if data["host"] != host:
            raise BadReport(f"report for host {data['host']!r} posted as {host!r}")
        items = data["services"]
        if not isinstance(items, dict) or len(items) > 64:
            raise BadReport("malformed report: services must be an object of at most 64")
        services = {}
        for name, item in items.items():
            if not isinstance(item["up"], bool):
                raise BadReport(f"malformed report: services.{name}.up must be true or false")
            services[str(name)] = ServiceState(
                up=item["up"], since=float(item["since"]), detail=str(item.get("detail", ""))[:500]
            )
        return float(data["at"]), services
    except BadReport:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BadReport(f"malformed report: {exc}") from exc


def decode_reports(
    body: bytes, signature: str | None, key: bytes, *, host: str
) -> list[GuestReport]:
    """Verify and parse a report body for ``host``; raises BadReport."""
    verify_signature(body, signature, key)
    try:
        data: Any = json.loads(body)
        if data["host"] != host:
            raise BadReport(f"report for host {data['host']!r} posted as {host!r}")
        items = data["reports"]
        if not isinstance(items, list) or len(items) > MAX_REPORTS:
            raise BadReport("malformed report: reports must be a list of at most 500")
        return [
            GuestReport(
                id=str(item["id"]),
                host=host,
                instance_id=str(item["instance_id"]),
                kind=GuestFailureKind(item["kind"]),
                at=float(item["at"]),
                detail=dict(item.get("detail") or {}),
            )
            for item in items
        ]
    except BadReport:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BadReport(f"malformed report: {exc}") from exc


def post_signed(client: httpx.Client, url: str, body: bytes, key: bytes) -> str | None:
    """POST ``body`` signed with ``key``; None when the server accepted it (2xx), else
    why not."""
    try:
        response = client.post(
            url,
            content=body,
            headers={SIGNATURE_HEADER: sign(body, key), "Content-Type": "application/json"},
        )
    except httpx.HTTPError as exc:
        return str(exc) or type(exc).__name__
    if response.status_code // 100 == 2:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"
