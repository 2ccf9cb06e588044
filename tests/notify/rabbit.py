"""Real RabbitMQ for the notifier tests (and the outbox's): a listener, and stop/start.

``RabbitListener``: an oslo.messaging notification listener (the kind Ceilometer or a
consumer's tooling runs) on an exchange and topic of its own, recording what it receives
in order (one worker thread); ``close()`` removes its queues and exchange.
``BrokerControl``: ``rabbitmqctl stop_app`` / ``start_app``; ``stopped()`` always restarts.

The broker's URL can be changed with ``VIGIL_TEST_RABBIT_URL`` (an oslo.messaging URL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kombu
from oslo_config import cfg
from support import wait_until

from vigil.drivers.messaging import (
    CONTEXT_HOST,
    CONTEXT_INSTANCE_ID,
    CONTEXT_PROJECT_ID,
    parse_notification_timestamp,
)
from vigil.drivers.notifier import Event

from .receivers import unique_name

with warnings.catch_warnings():
    # oslo.messaging imports oslo.service and eventlet, which warn of their own futures.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import oslo_messaging  # type: ignore[import-untyped,unused-ignore]

RABBIT_URL = os.environ.get("VIGIL_TEST_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")


def _kombu_url(url: str) -> str:
    return "amqp://" + url.split("://", 1)[1] if url.startswith("rabbit://") else url


def rabbit_answers(url: str = RABBIT_URL) -> None:
    """A check for ``services.require``: an AMQP connection to the broker opens."""
    with kombu.Connection(_kombu_url(url), connect_timeout=3) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0.5)


@dataclass(frozen=True)
class Notification:
    """One notification as an oslo.messaging listener's endpoint is given it."""

    priority: str  # the endpoint method called, upper case: INFO, ERROR...
    ctxt: dict[str, Any]
    publisher_id: str
    event_type: str
    payload: dict[str, Any]
    metadata: dict[str, Any]  # message_id, timestamp

    def event(self) -> Event:
        """The ``Event`` this notification carries back (see vigil.drivers.messaging)."""
        return Event(
            id=self.metadata["message_id"],
            event_type=self.event_type,
            timestamp=parse_notification_timestamp(self.metadata["timestamp"]),
            host=self.ctxt.get(CONTEXT_HOST),
            instance_id=self.ctxt.get(CONTEXT_INSTANCE_ID),
            project_id=self.ctxt.get(CONTEXT_PROJECT_ID),
            priority=self.priority,
            payload=self.payload,
        )


def _endpoint_method(priority: str) -> Callable[..., None]:
    def method(
        self: _Endpoint,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        self.sink(Notification(priority.upper(), ctxt, publisher_id, event_type, payload, metadata))

    method.__name__ = priority
    return method


class _Endpoint:
    """Has one method per notification priority, as oslo.messaging's dispatcher expects."""

    def __init__(self, sink: Callable[[Notification], None]) -> None:
        self.sink = sink


for _priority in PRIORITIES:
    setattr(_Endpoint, _priority, _endpoint_method(_priority))


class RabbitListener:
    """Listens on ``exchange``/``topic`` from ``start()`` (or, since the publisher declares
    the same queues, from the first publish) until ``close()``, which deletes the queues."""

    def __init__(
        self, url: str = RABBIT_URL, *, exchange: str | None = None, topic: str | None = None
    ) -> None:
        self.url = url
        self.exchange = exchange or unique_name("vigil_test_exchange")
        self.topic = topic or unique_name("vigil_test_topic")
        self._lock = threading.Lock()
        self._received: list[Notification] = []
        conf = cfg.ConfigOpts()
        conf(args=[], project="vigil-test", default_config_files=[], default_config_dirs=[])
        self._transport = oslo_messaging.get_notification_transport(conf, url=url)
        self._listener = oslo_messaging.get_notification_listener(
            self._transport,
            [oslo_messaging.Target(topic=self.topic, exchange=self.exchange)],
            [_Endpoint(self._append)],
            executor="threading",
        )
        self._started = False

    def _append(self, notification: Notification) -> None:
        with self._lock:
            self._received.append(notification)

    def start(self) -> RabbitListener:
        # One worker: the endpoint sees messages in the order the listener took them.
        self._listener.start(override_pool_size=1)
        self._started = True
        return self

    @property
    def received(self) -> list[Notification]:
        with self._lock:
            return list(self._received)

    def events(self) -> list[Event]:
        return [n.event() for n in self.received]

    def close(self) -> None:
        try:
            if self._started:
                self._listener.stop()
                self._listener.wait()
        finally:
            self._transport.cleanup()
            self.delete_queues()

    def delete_queues(self) -> None:
        with kombu.Connection(_kombu_url(self.url), connect_timeout=3) as connection:
            channel = connection.default_channel
            for priority in PRIORITIES:
                channel.queue_delete(f"{self.topic}.{priority}")
            channel.exchange_delete(self.exchange)

    def __enter__(self) -> RabbitListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class BrokerControl:
    """Stops and starts the RabbitMQ application (the Erlang node stays up, so the
    management CLI still answers). ``stopped()`` always starts it again."""

    def __init__(self, url: str = RABBIT_URL) -> None:
        self.url = url

    @staticmethod
    def available() -> None:
        """A check for ``services.require``."""
        if shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmqctl is not on PATH")
        subprocess.run(["rabbitmqctl", "status"], check=True, capture_output=True, timeout=30)

    def stop_app(self) -> None:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)

    def start_app(self) -> None:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
        wait_until(self._answers, "RabbitMQ to accept connections again", 30, every=0.01)

    def _answers(self) -> bool:
        try:
            rabbit_answers(self.url)
        except Exception:
            return False
        return True

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.stop_app()
        try:
            yield
        finally:
            self.start_app()
