"""The notifier contract: every published event reaches the consumer, whole.

Reuse: subclass ``NotifierContract`` and define a ``notifier_world`` fixture returning a
``NotifierWorld``: the notifier, and a way to read what a consumer received (a queue
bound to the topic, a webhook receiver, captured log records), turned back into
``Event``s. Delivery is at least once: duplicates are allowed (consumers deduplicate on
``Event.id``), losses and altered fields are not. Order is not required.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from vigil.drivers.notifier import Event, Notifier


class NotifierWorld(Protocol):
    @property
    def notifier(self) -> Notifier: ...

    @property
    def timeout(self) -> float:
        """How long delivery may take, in seconds."""

    def received(self) -> list[Event]:
        """Every event the consumer has received so far, duplicates included."""

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None: ...


def make_event(**fields: Any) -> Event:
    defaults: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "event_type": "vigil.host.failure.confirmed",
        "timestamp": 1_800_000_123.25,
        "host": "compute-3",
        "instance_id": None,
        "priority": "ERROR",
        "payload": {"reason": "no heartbeat for 2.1s", "fenced": True},
    }
    return Event(**{**defaults, **fields})


class NotifierContract:
    def _received_by_id(self, world: NotifierWorld, wanted: set[str]) -> dict[str, Event]:
        def arrived() -> bool:
            return wanted <= {e.id for e in world.received()}

        world.wait_until(arrived, f"{len(wanted)} events received", world.timeout)
        return {e.id: e for e in world.received() if e.id in wanted}

    def test_an_event_arrives_unchanged(self, notifier_world: NotifierWorld) -> None:
        event = make_event()
        notifier_world.notifier.publish(event)
        assert self._received_by_id(notifier_world, {event.id})[event.id] == event

    def test_optional_fields_and_nested_payload_survive(
        self, notifier_world: NotifierWorld
    ) -> None:
        event = make_event(
            host=None,
            instance_id="6f1c2a4e-8d1b-4c55-9a0e-2f6f1e9b7c10",
            priority="INFO",
            payload={
                "steps": [{"kind": "fence", "ok": True}, {"kind": "evacuate", "ok": None}],
                "counts": {"evacuated": 49, "failed": 1},
                "ratio": 0.98,
                "note": "hôte compute-3 → compute-7",
            },
        )
        notifier_world.notifier.publish(event)
        assert self._received_by_id(notifier_world, {event.id})[event.id] == event

    def test_every_event_of_a_burst_arrives(self, notifier_world: NotifierWorld) -> None:
        events = [make_event(payload={"n": n}) for n in range(20)]
        for event in events:
            notifier_world.notifier.publish(event)
        got = self._received_by_id(notifier_world, {e.id for e in events})
        assert [got[e.id] for e in events] == events

    def test_concurrent_publishers_lose_nothing(self, notifier_world: NotifierWorld) -> None:
        batches = [[make_event(payload={"t": t, "n": n}) for n in range(10)] for t in range(6)]
        failures: list[BaseException] = []

        def publish(batch: list[Event]) -> None:
            try:
                for event in batch:
                    notifier_world.notifier.publish(event)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=publish, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not failures
        wanted = {e.id for batch in batches for e in batch}
        assert set(self._received_by_id(notifier_world, wanted)) == wanted
