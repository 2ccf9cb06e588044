"""The OpenStack notification bus end to end, on the machine's real RabbitMQ: an
oslo.messaging listener receives every event of a host recovery, in order, with valid
payloads — also when the broker is stopped and started again in the middle."""

from __future__ import annotations

import threading
import time

import jsonschema
import pytest
from notify.rabbit import RABBIT_URL, BrokerControl, RabbitListener, rabbit_answers
from services import require
from support import wait_until

from vigil.cli.demo import DemoOptions, Harness
from vigil.events import payload_schema

pytestmark = pytest.mark.rabbitmq


def _bus(listener: RabbitListener) -> tuple[str, ...]:
    return (
        "notifier.drivers=messaging,memory",
        f"notifier.transport_url={RABBIT_URL}",
        f"notifier.topic={listener.topic}",
        f"notifier.exchange={listener.exchange}",
    )


def test_listener_receives_every_event_of_a_recovery_in_order() -> None:
    require("RabbitMQ", rabbit_answers)
    with RabbitListener() as listener:
        with Harness(DemoOptions(hosts=3, instances=6, overrides=_bus(listener))) as h:
            t0 = h.inject("power-loss", "compute-1")
            done = h.watch("compute-1", t0)
            assert done is not None and done["status"] == "succeeded"
            outbox = h.client.get("/v1/events", params={"limit": 1000}).json()
            wait_until(
                lambda: len(listener.received) >= len(outbox), "the whole recovery", 20, every=0.02
            )
        got = listener.received
        # each priority has its own queue: in order within it, and vigil_seq restores the rest
        for priority in {n.priority for n in got}:
            seqs = [n.ctxt["vigil_seq"] for n in got if n.priority == priority]
            assert seqs == sorted(seqs)
        by_seq = sorted(got, key=lambda n: n.ctxt["vigil_seq"])
        assert [n.metadata["message_id"] for n in by_seq] == [e["id"] for e in outbox]
        assert [n.ctxt["vigil_seq"] for n in by_seq] == [e["seq"] for e in outbox]
        for n in got:
            assert n.publisher_id.startswith("vigil-server")
            jsonschema.validate(n.payload, payload_schema(n.event_type))
        types = [n.event_type for n in got]
        assert types[0] == "vigil.host.failure.suspected"
        assert types[-1] == "vigil.recovery.end"


def test_broker_stopped_and_restarted_mid_recovery_loses_nothing() -> None:
    require("RabbitMQ", rabbit_answers)
    require("rabbitmqctl", BrokerControl.available)
    broker = BrokerControl()
    with RabbitListener() as listener:
        opts = DemoOptions(hosts=3, instances=6, overrides=_bus(listener))
        with Harness(opts) as h:
            stopped = threading.Event()
            # The broker goes away just as the host fails, and comes back mid-recovery.
            with broker.stopped():
                stopped.set()
                t0 = h.inject("power-loss", "compute-1")
                done = h.watch("compute-1", t0)
                assert done is not None and done["status"] == "succeeded"
                time.sleep(1.0)
            outbox = h.client.get("/v1/events", params={"limit": 1000}).json()
            wait_until(
                lambda: len({n.metadata["message_id"] for n in listener.received}) >= len(outbox),
                "every event after the broker returned",
                60,
                every=0.02,
            )
            assert h.client.get("/v1/dead-letters").json() == []
        once = {n.metadata["message_id"]: n for n in listener.received}  # at least once
        by_seq = sorted(once.values(), key=lambda n: n.ctxt["vigil_seq"])
        assert [n.metadata["message_id"] for n in by_seq] == [e["id"] for e in outbox]
