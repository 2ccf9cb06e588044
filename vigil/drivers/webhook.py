"""Deliver vigil's events to an HTTP endpoint, signed, one POST per event.

What: ``WebhookNotifier(url, secret).publish(event)`` POSTs the event as JSON::

    {"id", "event_type", "timestamp", "priority", "host", "instance_id", "payload"}

with headers ``Content-Type: application/json``, ``X-Vigil-Event: <event_type>``,
``X-Vigil-Delivery: <event id>`` (the idempotency key: a retried delivery carries the same
one) and ``X-Vigil-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``, where the HMAC's
key is the shared secret and its message is ``f"{t}.".encode() + raw body``. Receivers check
it with ``verify_signature`` (constant-time; rejects a timestamp further than ``tolerance``
seconds from now, so a captured request cannot be replayed later). Signing the timestamp
with the body is what makes that check meaningful.

Why this shape: it is the scheme consumers already know from other webhook senders
(timestamp + HMAC over timestamp and body, several ``v1`` allowed so a receiver can accept
an old and a new secret while rotating), it needs only the standard library to verify.

Errors: 2xx means delivered. 408, 429, 5xx, a refused or dropped connection, a TLS or
network failure and a timeout raise ``TemporaryError``; any other answer (3xx: redirects
are not followed; 4xx) raises ``PermanentError``. One ``publish`` is one request; retries,
backoff and dead letters are the caller's.

Limits: ``timeout`` bounds each phase (connect, send, wait for the answer's headers) and
the reading of the answer's body, which is discarded after 64 KiB. The secret is never
logged nor put in an exception message; messages name the endpoint as scheme, host and
port only, since paths and query strings of webhook URLs often hold tokens. No filtering
of private addresses: vigil is an operator's tool and webhooks are often internal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
import time
from urllib.parse import urlsplit

import httpx

from vigil.drivers.errors import PermanentError, TemporaryError
from vigil.drivers.notifier import Event, Notifier

LOG = logging.getLogger(__name__)

EVENT_HEADER = "X-Vigil-Event"
DELIVERY_HEADER = "X-Vigil-Delivery"
SIGNATURE_HEADER = "X-Vigil-Signature"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300  # seconds a signature stays acceptable, either side of now
MAX_URL_LENGTH = 2048
_MAX_ANSWER_BYTES = 64 * 1024
_RETRYABLE_STATUSES = frozenset({408, 429})


def event_body(event: Event) -> bytes:
    """The JSON body of one delivery (UTF-8, compact, fields in a fixed order)."""
    document = {
        "id": event.id,
        "event_type": event.event_type,
        "timestamp": event.timestamp,
        "priority": event.priority,
        "host": event.host,
        "instance_id": event.instance_id,
        "payload": dict(event.payload),
    }
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Vigil-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},{SIGNATURE_VERSION}={_digest(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (an ``X-Vigil-Signature`` value) signs ``body`` with ``secret``
    at a time within ``tolerance`` seconds of ``now`` (default: the clock).

    ``body`` must be the raw bytes received, before any JSON parsing. A malformed header,
    a stale or future timestamp, or no matching ``v1`` gives False, never an exception.
    """
    if not header or not secret:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == SIGNATURE_VERSION:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = _digest(secret, timestamp, raw).encode()
    matched = False
    for candidate in candidates:  # compare with all of them: time must not tell which
        matched |= hmac.compare_digest(expected, candidate.encode(errors="replace"))
    return matched


def validate_webhook_url(url: object) -> str | None:
    """What is wrong with ``url`` as a webhook endpoint, or None if nothing is.

    Pure (no network, no DNS): for the API to answer a 4xx before storing a subscription.
    """
    if not isinstance(url, str) or not url:
        return "the URL must be a non-empty string"
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is longer than {MAX_URL_LENGTH} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "the URL must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        return f"the URL cannot be parsed: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return "the URL's scheme must be http or https"
    if not parts.hostname:
        return "the URL must name a host"
    if port == 0:
        return "the URL's port must be between 1 and 65535"
    if parts.fragment or url.endswith("#"):
        return "the URL must not have a fragment (#...)"
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        return f"the URL is not valid: {exc}"
    return None


def _endpoint(url: str) -> str:
    """``scheme://host:port`` of ``url``: enough to tell endpoints apart, no credentials,
    no path or query (where tokens live)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class WebhookNotifier(Notifier):
    """POSTs each event, signed, to ``url``; see the module doc.

    ``verify`` is True (system CAs), False (no TLS verification), or the path of a CA
    bundle. The client keeps connections open between events; ``close()`` releases them.
    Safe to share between threads.
    """

    def __init__(
        self, url: str, secret: str, *, timeout: float = 5.0, verify: bool | str = True
    ) -> None:
        problem = validate_webhook_url(url)
        if problem is not None:
            raise PermanentError(f"invalid webhook URL: {problem}")
        if not isinstance(secret, str) or not secret:
            raise PermanentError("the webhook secret must be a non-empty string")
        if not timeout > 0:
            raise PermanentError("the webhook timeout must be more than 0 seconds")
        self.url = url
        self.endpoint = _endpoint(url)
        self.timeout = timeout
        self._secret = secret
        tls: bool | ssl.SSLContext = verify if isinstance(verify, bool) else _ca_bundle(verify)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            verify=tls,
            follow_redirects=False,
            headers={"User-Agent": "vigil-webhook/1"},
        )

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.endpoint!r}, timeout={self.timeout})"

    def publish(self, event: Event) -> None:
        try:
            body = event_body(event)
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"event {event.id}: payload is not JSON: {exc}") from None
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: event.event_type,
            DELIVERY_HEADER: event.id,
            SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
        }
        what = f"{event.event_type} {event.id} to {self.endpoint}"
        started = time.monotonic()
        try:
            with self._client.stream("POST", self.url, content=body, headers=headers) as answer:
                status = answer.status_code
                self._drain(answer, started)
        except httpx.TimeoutException as exc:
            raise TemporaryError(
                f"webhook timed out after {time.monotonic() - started:.1f}s delivering {what} "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise TemporaryError(
                f"webhook unreachable delivering {what}: {type(exc).__name__}: {exc}"
            ) from exc
        elapsed = time.monotonic() - started
        if 200 <= status < 300:
            LOG.debug("delivered %s: %d in %.3fs", what, status, elapsed)
            return
        if status in _RETRYABLE_STATUSES or 500 <= status < 600:
            raise TemporaryError(f"webhook answered {status} to {what}")
        raise PermanentError(f"webhook answered {status} to {what}")

    def _drain(self, answer: httpx.Response, started: float) -> None:
        """Read (and drop) a bounded part of the answer's body so the connection can be
        reused; stop at the deadline or the size limit."""
        read = 0
        try:
            for chunk in answer.iter_raw():
                read += len(chunk)
                if read > _MAX_ANSWER_BYTES or time.monotonic() - started > self.timeout:
                    break
        except httpx.HTTPError:
            pass  # the status is what counts; the connection is closed, not reused

    def close(self) -> None:
        self._client.close()


def _ca_bundle(path: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(
            f"cannot load the webhook CA bundle {path!r}: {type(exc).__name__}"
        ) from None
