"""Publish vigil's events on the OpenStack message bus as versioned notifications.

What: ``OsloMessagingNotifier`` sends each ``Event`` through oslo.messaging, with the
envelope OpenStack services use for versioned notifications (Nova's, among others)::

    {"message_id": <event.id>, "publisher_id": "vigil-server:<hostname>",
     "event_type": <event.event_type>, "priority": "ERROR",
     "payload": <event.payload, as is>, "timestamp": "2027-01-15 08:02:03.250000"}

on topic ``<topic>.<priority>`` (default ``versioned_notifications.error``) of the exchange
``vigil``, so any oslo.messaging notification listener (Ceilometer, a consumer's own tools)
receives them. ``event.host``, ``event.instance_id`` and the instance's project travel
in the notification context (``vigil_host``, ``vigil_instance_id``, and ``project_id``
where oslo.context keeps it), which listeners receive as ``ctxt``.

Why not ``oslo_messaging.Notifier.info()``: that path swallows every delivery error (both
``Notifier._notify`` and the messaging driver catch ``Exception`` and only log it), so a
lost event would look delivered; and it stamps a fresh random ``message_id`` and the
current time on every call, where consumers need the event's own id, identical on every
retry, to deduplicate on. So this module builds the envelope itself and hands it to the
transport exactly as oslo.messaging's ``messagingv2`` driver does
(``Transport._send_notification``, the one private call made here), which raises when the
broker does not take the message.

Errors: one ``publish`` is one bounded attempt. A broker that is down, refuses the
connection or drops it raises ``TemporaryError`` after ``retry`` reconnection attempts
(default 1: about one second with oslo.messaging's default ``rabbit_retry_interval``).
Credentials or a virtual host the broker refuses, a payload that is not JSON, an unknown
priority, and an unusable transport URL raise ``PermanentError``. Retrying later is the
caller's job.

Limits:
- Order: oslo.messaging routes each priority to its own queue (``<topic>.info``,
  ``<topic>.error``...), so a consumer sees order within one priority, not across them;
  consumers that need a total order should sort on a sequence number in the payload.
- Timestamps travel at microsecond precision (the envelope's text format).
- Time bounds come from the transport: a refused connection fails at once, a silent host
  after kombu's 5 s connect timeout per attempt, a broker that accepts the connection but
  stops answering after ``[oslo_messaging_rabbit] heartbeat_timeout_threshold`` (60 s).
- Kafka (``kafka://``) needs ``confluent-kafka`` (``oslo.messaging[kafka]``); its driver
  produces asynchronously and only logs failures, so there ``publish`` returning does not
  prove delivery. Tested for real on RabbitMQ only.
- The transport URL's password never appears in this module's log records or exception
  messages; oslo.messaging's own records name only host and port.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import socket
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from oslo_config import cfg

from vigil.drivers.errors import PermanentError, TemporaryError
from vigil.drivers.notifier import Event, Notifier

with warnings.catch_warnings():
    # oslo.messaging imports oslo.service and eventlet, which warn (at import time only)
    # of their own deprecations: not ours to fix, and noise in every vigil process.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import oslo_messaging  # type: ignore[import-untyped,unused-ignore]

LOG = logging.getLogger(__name__)

DEFAULT_TOPIC = "versioned_notifications"
DEFAULT_EXCHANGE = "vigil"
CONTEXT_HOST = "vigil_host"
CONTEXT_INSTANCE_ID = "vigil_instance_id"
CONTEXT_PROJECT_ID = "project_id"  # oslo.context's key: a listener filters on it as usual
# The outbox position: oslo.messaging puts each priority on its own queue, so a consumer
# that reads several priorities restores vigil's order (per host, and overall) by it.
CONTEXT_SEQ = "vigil_seq"

#: oslo.messaging's notification priorities, and the spellings of them vigil accepts.
PRIORITIES: dict[str, str] = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "AUDIT": "AUDIT",
    "WARN": "WARN",
    "WARNING": "WARN",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
    "FATAL": "CRITICAL",
    "SAMPLE": "SAMPLE",
}

#: Notifier drivers this module implements, and the message format each sends (2.0 wraps
#: the notification in oslo.messaging's ``oslo.message`` envelope; 1.0 sends it bare).
DRIVERS: dict[str, float] = {"messagingv2": 2.0, "messaging": 1.0}

# Broker answers that no retry will change (AMQP 403 ACCESS_REFUSED, 530 NOT_ALLOWED
# e.g. an unknown virtual host, 406 PRECONDITION_FAILED e.g. an exchange declared with
# other options). Matched by name: they belong to py-amqp, an indirect dependency.
_PERMANENT_BROKER_ERRORS = frozenset({"AccessRefused", "NotAllowed", "PreconditionFailed"})

_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def notification_timestamp(timestamp: float) -> str:
    """The envelope's ``timestamp``: UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``, as oslo.messaging
    writes it for Nova (ISO 8601 with a space; always with microseconds)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime(_TIMESTAMP_FORMAT)


def parse_notification_timestamp(text: str) -> float:
    """Seconds since the epoch from an envelope ``timestamp`` (with or without fraction)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def default_publisher_id() -> str:
    return f"vigil-server:{socket.gethostname()}"


class OsloMessagingNotifier(Notifier):
    """Publishes each event as one OpenStack versioned notification; see the module doc.

    ``transport_url`` is any oslo.messaging URL (``rabbit://user:pass@host:5672/vhost``,
    ``kafka://host:9092``). ``retry`` is how many times one ``publish`` may reconnect
    (oslo.messaging's meaning: 0 = one try only; never "forever" here). ``conf`` lets the
    server pass its own ``ConfigOpts`` so ``[oslo_messaging_rabbit]`` options (TLS,
    durable queues, heartbeats) apply; by default a private one with oslo's defaults.
    """

    def __init__(
        self,
        transport_url: str,
        *,
        topic: str = DEFAULT_TOPIC,
        publisher_id: str | None = None,
        driver: str = "messagingv2",
        exchange: str = DEFAULT_EXCHANGE,
        retry: int = 1,
        conf: cfg.ConfigOpts | None = None,
    ) -> None:
        if not transport_url:
            raise PermanentError("the notification transport URL is empty")
        if driver not in DRIVERS:
            raise PermanentError(
                f"unknown oslo.messaging notifier driver {driver!r}: use one of "
                + ", ".join(sorted(DRIVERS))
            )
        if not topic or not exchange:
            raise PermanentError("the notification topic and exchange must not be empty")
        if retry < 0:
            raise PermanentError("retry must be 0 or more: a publish must not wait forever")
        if conf is None:
            conf = cfg.ConfigOpts()
            conf(args=[], project="vigil", default_config_files=[], default_config_dirs=[])
        self._secrets = _url_passwords(transport_url)
        self.topic = topic
        self.exchange = exchange
        self.publisher_id = publisher_id or default_publisher_id()
        self.retry = retry
        self._version = DRIVERS[driver]
        try:
            self._where = _describe_url(conf, transport_url)
            self._transport = oslo_messaging.get_notification_transport(conf, url=transport_url)
        except ImportError as exc:
            raise PermanentError(
                f"the transport of {_scheme(transport_url)}:// needs a Python package that is "
                f"not installed ({exc.name}); for Kafka install oslo.messaging[kafka]"
            ) from None
        except Exception as exc:
            raise PermanentError(
                f"unusable notification transport URL: {type(exc).__name__}: "
                f"{self._redact(str(exc))}"
            ) from None
        if not callable(getattr(self._transport, "_send_notification", None)):
            # The one private call this module makes (see the module doc) is gone.
            raise PermanentError(
                f"oslo.messaging {_oslo_version()} has no Transport._send_notification: "
                "vigil.drivers.messaging must be adapted to it"
            )
        LOG.debug(
            "publishing notifications to %s, exchange %s, topic %s",
            self._where,
            exchange,
            topic,
        )

    def __repr__(self) -> str:
        return (
            f"OsloMessagingNotifier({self._where!r}, exchange={self.exchange!r}, "
            f"topic={self.topic!r}, publisher_id={self.publisher_id!r})"
        )

    def envelope(self, event: Event) -> dict[str, Any]:
        """The notification ``event`` becomes (what a listener's ``metadata``, ``event_type``,
        ``publisher_id``, ``priority`` and ``payload`` are taken from)."""
        return {
            "message_id": event.id,
            "publisher_id": self.publisher_id,
            "event_type": event.event_type,
            "priority": _priority(event),
            "payload": _payload(event),
            "timestamp": notification_timestamp(event.timestamp),
        }

    @staticmethod
    def context(event: Event) -> dict[str, Any]:
        """The notification context: the event's fields the envelope has no place for."""
        return {
            CONTEXT_HOST: event.host,
            CONTEXT_INSTANCE_ID: event.instance_id,
            CONTEXT_PROJECT_ID: event.project_id,
            CONTEXT_SEQ: event.seq,
        }

    def publish(self, event: Event) -> None:
        envelope = self.envelope(event)
        target = oslo_messaging.Target(
            topic=f"{self.topic}.{envelope['priority'].lower()}", exchange=self.exchange
        )
        try:
            # The transport adds its own keys to the message and context: fresh dicts.
            self._transport._send_notification(
                target, self.context(event), envelope, version=self._version, retry=self.retry
            )
        except Exception as exc:
            raw = f"{type(exc).__name__}: {exc}"
            detail = self._redact(raw)
            cause = exc if detail == raw else None  # a cause quoting the password: dropped
            where = f"{event.event_type} {event.id} to {self._where}"
            if _is_permanent(exc):
                raise PermanentError(f"the broker refused {where}: {detail}") from cause
            raise TemporaryError(f"could not publish {where}: {detail}") from cause
        LOG.debug("published %s %s to %s", event.event_type, event.id, self._where)

    def close(self) -> None:
        """Close the transport's connections (and their heartbeat threads)."""
        self._transport.cleanup()

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _priority(event: Event) -> str:
    try:
        return PRIORITIES[event.priority.upper()]
    except KeyError:
        raise PermanentError(
            f"event {event.id}: priority {event.priority!r} is not one of "
            + ", ".join(sorted(set(PRIORITIES.values())))
        ) from None


def _payload(event: Event) -> dict[str, Any]:
    payload = dict(event.payload)
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"event {event.id}: payload is not JSON: {exc}") from None
    return payload


def _is_permanent(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if {c.__name__ for c in type(current).__mro__} & _PERMANENT_BROKER_ERRORS:
            return True
        current = current.__cause__ or current.__context__
    return False


def _oslo_version() -> str:
    try:
        return importlib.metadata.version("oslo.messaging")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def _scheme(url: str) -> str:
    return url.split(":", 1)[0] if ":" in url else "?"


def _url_passwords(url: str) -> list[str]:
    """Every password in ``url`` (one per host), raw and percent-decoded, longest first.

    Parsed by hand, leniently, so that even a URL oslo.messaging rejects is redacted."""
    rest = url.split("://", 1)[1] if "://" in url else url
    at = rest.rfind("@")
    slash = rest.find("/", at + 1)
    netloc = rest if slash < 0 else rest[:slash]
    found: set[str] = set()
    for segment in netloc.split(","):
        userinfo, sep, _ = segment.rpartition("@")
        _, colon, password = userinfo.partition(":")
        if sep and colon and password:
            found.update({password, unquote(password)})
    return sorted(found, key=len, reverse=True)


def _describe_url(conf: cfg.ConfigOpts, url: str) -> str:
    """``scheme://host:port,host:port/vhost``: the URL without its credentials."""
    parsed = oslo_messaging.TransportURL.parse(conf, url)
    hosts: Iterable[Any] = parsed.hosts or []
    netlocs = ",".join(f"{h.hostname}:{h.port}" if h.port else str(h.hostname or "") for h in hosts)
    return f"{parsed.transport}://{netlocs}/{parsed.virtual_host or ''}"
