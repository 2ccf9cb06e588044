"""The notifier interface: publish what vigil observed and did.

Later issues add oslo.messaging and webhooks behind this same interface.
"""

from __future__ import annotations

import abc
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One event. ``id`` is the idempotency key consumers deduplicate on."""

    id: str
    event_type: str  # e.g. vigil.host.failure.confirmed
    timestamp: float
    host: str | None = None
    instance_id: str | None = None
    priority: str = "INFO"
    payload: Mapping[str, Any] = field(default_factory=dict)


class Notifier(abc.ABC):
    @abc.abstractmethod
    def publish(self, event: Event) -> None:
        """Deliver one event; may raise a DriverError (the caller retries)."""


class LogNotifier(Notifier):
    """Writes each event as one JSON log line: the notifier of last resort."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("vigil.events")

    def publish(self, event: Event) -> None:
        self._log.info("event %s", json.dumps(asdict(event), sort_keys=True, default=str))


class MemoryNotifier(Notifier):
    """Keeps events in memory: the simulated notifier, for the demo and tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def publish(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)
