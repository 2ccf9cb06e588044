"""The notifier interface: publish what vigil observed and did.

``LogNotifier`` writes to the log; the OpenStack bus (``vigil.drivers.messaging``) and
webhooks (``vigil.drivers.webhook``) implement the same interface, and the outbox
(``vigil.engine.outbox``) delivers every event to each.
"""

from __future__ import annotations

import abc
import json
import logging
import threading
from dataclasses import asdict

from vigil.model import Event

__all__ = ["Event", "LogNotifier", "MemoryNotifier", "Notifier"]


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
