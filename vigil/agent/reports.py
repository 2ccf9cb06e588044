"""The guest failure report protocol between vigil-agent and vigil-server.

Reports go over HTTP (``POST /v1/agents/{host}/reports``), not UDP like heartbeats: each
one must arrive, so the agent retries until the server answers 2xx, which it does only
after the report is persisted. A report is signed like a heartbeat — HMAC-SHA256 with the
agent key over the exact body, hex in the ``X-Vigil-Agent-Signature`` header — and names
its host in the body, which must match the URL. Its ``id`` (a UUID) makes a retry
idempotent: the server records each id once.

Body: ``{"host": ..., "reports": [{"id", "instance_id", "kind", "at", "detail"}, ...]}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from vigil.model import GuestFailureKind, GuestReport

SIGNATURE_HEADER = "X-Vigil-Agent-Signature"
MAX_BODY = 256 * 1024
MAX_REPORTS = 500


class BadReport(Exception):
    """A report body that is unsigned, wrongly signed or malformed; the message says why."""


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


def decode_reports(
    body: bytes, signature: str | None, key: bytes, *, host: str
) -> list[GuestReport]:
    """Verify and parse a report body for ``host``; raises BadReport."""
    if signature is None:
        raise BadReport("unsigned report (no agent signature)")
    if len(body) > MAX_BODY:
        raise BadReport("report too large")
    if not key or not hmac.compare_digest(sign(body, key), signature.strip()):
        raise BadReport("bad signature (wrong or missing agent key)")
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
