"""OsloMessagingNotifier on the machine's real RabbitMQ, read by a real oslo.messaging
notification listener; and, without a broker, its envelope and its errors.

Each test uses an exchange and topic of its own (removed afterwards). The broker
stop/start test runs last in this file and always starts the broker again.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kombu
import pytest
from contract.notifier_contract import NotifierContract, make_event
from oslo_config import cfg
from services import require
from support import wait_until

from vigil.drivers.errors import DriverError, PermanentError, TemporaryError
from vigil.drivers.messaging import (
    CONTEXT_HOST,
    CONTEXT_INSTANCE_ID,
    CONTEXT_PROJECT_ID,
    CONTEXT_SEQ,
    OsloMessagingNotifier,
    notification_timestamp,
    parse_notification_timestamp,
)
from vigil.drivers.notifier import Event

from .rabbit import RABBIT_URL, BrokerControl, RabbitListener, oslo_messaging, rabbit_answers
from .receivers import closed_port

if TYPE_CHECKING:
    from contract.notifier_contract import NotifierWorld

PASSWORD = "amqp-Pa55-DO-NOT-LEAK"
VERSIONED_PAYLOAD: dict[str, Any] = {
    "vigil_object.name": "HostFailurePayload",
    "vigil_object.version": "1.0",
    "vigil_object.namespace": "vigil",
    "vigil_object.data": {
        "host": "compute-3",
        "reason": "no heartbeat for 2.1s",
        "fenced": True,
        "instances": ["6f1c2a4e-8d1b-4c55-9a0e-2f6f1e9b7c10"],
    },
}


@pytest.fixture(scope="module")
def rabbit() -> str:
    require("RabbitMQ", rabbit_answers)
    return RABBIT_URL


@pytest.fixture
def listener(rabbit: str) -> Iterator[RabbitListener]:
    with RabbitListener(rabbit) as started:
        yield started


def notifier_for(listener: RabbitListener, **options: Any) -> OsloMessagingNotifier:
    return OsloMessagingNotifier(
        listener.url,
        topic=listener.topic,
        exchange=listener.exchange,
        publisher_id="vigil-server:test-host",
        **options,
    )


@pytest.fixture
def notifier(listener: RabbitListener) -> Iterator[OsloMessagingNotifier]:
    n = notifier_for(listener)
    yield n
    n.close()


def received_ids(listener: RabbitListener) -> Callable[[set[str]], Callable[[], bool]]:
    def condition(wanted: set[str]) -> Callable[[], bool]:
        return lambda: wanted <= {n.metadata["message_id"] for n in listener.received}

    return condition


# -- without a broker ----------------------------------------------------------------------


def test_the_envelope_is_openstacks_with_the_event_id_as_message_id() -> None:
    notifier = OsloMessagingNotifier(RABBIT_URL, publisher_id="vigil-server:ctl-1")
    event = make_event(payload=VERSIONED_PAYLOAD)
    assert notifier.envelope(event) == {
        "message_id": event.id,
        "publisher_id": "vigil-server:ctl-1",
        "event_type": "vigil.host.failure.confirmed",
        "priority": "ERROR",
        "payload": VERSIONED_PAYLOAD,
        "timestamp": "2027-01-15 08:02:03.250000",
    }
    assert notifier.context(event) == {
        CONTEXT_HOST: "compute-3",
        CONTEXT_INSTANCE_ID: None,
        CONTEXT_PROJECT_ID: None,
        CONTEXT_SEQ: event.seq,
    }
    notifier.close()


def test_the_defaults_are_openstacks() -> None:
    notifier = OsloMessagingNotifier(RABBIT_URL)
    assert notifier.topic == "versioned_notifications"
    assert notifier.exchange == "vigil"
    assert notifier.publisher_id == f"vigil-server:{socket.gethostname()}"
    notifier.close()


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (0.0, "1970-01-01 00:00:00.000000"),
        (1_800_000_123.25, "2027-01-15 08:02:03.250000"),
        (1_700_000_000.000001, "2023-11-14 22:13:20.000001"),
    ],
)
def test_timestamps_are_utc_with_microseconds(timestamp: float, text: str) -> None:
    assert notification_timestamp(timestamp) == text
    assert parse_notification_timestamp(text) == pytest.approx(timestamp, abs=1e-6)


def test_timestamps_as_oslo_messaging_writes_them_parse_too() -> None:
    assert parse_notification_timestamp("2027-01-15 08:02:03") == 1_800_000_123.0
    assert parse_notification_timestamp("2027-01-15T08:02:03.250000+00:00") == 1_800_000_123.25


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("INFO", "INFO"),
        ("info", "INFO"),
        ("WARNING", "WARN"),
        ("WARN", "WARN"),
        ("ERROR", "ERROR"),
        ("CRITICAL", "CRITICAL"),
        ("FATAL", "CRITICAL"),
        ("DEBUG", "DEBUG"),
        ("AUDIT", "AUDIT"),
        ("SAMPLE", "SAMPLE"),
    ],
)
def test_priorities_map_to_oslo_messagings(given: str, sent: str) -> None:
    notifier = OsloMessagingNotifier(RABBIT_URL)
    assert notifier.envelope(make_event(priority=given))["priority"] == sent
    notifier.close()


def test_an_unknown_priority_or_a_payload_that_is_not_json_is_permanent() -> None:
    notifier = OsloMessagingNotifier(f"rabbit://guest:guest@127.0.0.1:{closed_port()}/")
    with pytest.raises(PermanentError, match="priority 'URGENT'"):
        notifier.publish(make_event(priority="URGENT"))
    with pytest.raises(PermanentError, match="not JSON"):
        notifier.publish(make_event(payload={"at": object()}))
    with pytest.raises(PermanentError, match="not JSON"):
        notifier.publish(make_event(payload={"ratio": float("inf")}))
    notifier.close()


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("", {}, "empty"),
        ("not a url", {}, "unusable"),
        (f"nosuchbus://u:{PASSWORD}@h:1/", {}, "unusable"),
        (f"rabbit://u:{PASSWORD}@h:notaport/", {}, "unusable"),
        (f"kafka://u:{PASSWORD}@h:9092/", {}, "confluent_kafka"),
        (RABBIT_URL, {"driver": "routing"}, "unknown"),
        (RABBIT_URL, {"retry": -1}, "forever"),
        (RABBIT_URL, {"topic": ""}, "empty"),
    ],
)
def test_a_configuration_that_cannot_work_is_permanent(
    url: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(PermanentError, match=match) as caught:
        OsloMessagingNotifier(url, **options)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None


def test_an_unreachable_broker_is_temporary_quickly_and_the_password_is_never_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"rabbit://vigil:{PASSWORD}@127.0.0.1:{closed_port()}/"
    errors: list[DriverError] = []
    for retry, bound in ((0, 1.0), (1, 3.0)):
        notifier = OsloMessagingNotifier(url, retry=retry)
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="could not publish") as caught:
            notifier.publish(make_event())
        assert time.monotonic() - started < bound, f"retry={retry}"
        errors.append(caught.value)
        assert PASSWORD not in repr(notifier)
        notifier.close()
    for exc in errors:
        chain: BaseException | None = exc
        while chain is not None:
            assert PASSWORD not in str(chain) and PASSWORD not in repr(chain)
            chain = chain.__cause__
    assert caplog.records, "oslo.messaging logs connection failures: they were checked"
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


def test_a_transport_without_the_call_this_driver_relies_on_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(oslo_messaging.Transport, "_send_notification")
    with pytest.raises(PermanentError, match="_send_notification"):
        OsloMessagingNotifier(RABBIT_URL)


def test_oslo_messagings_own_notifier_would_hide_a_lost_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Why the driver does not call oslo_messaging.Notifier: it swallows delivery errors.
    If this starts failing, oslo.messaging raises now and the driver could use it."""
    conf = cfg.ConfigOpts()
    conf(args=[], project="vigil-test", default_config_files=[], default_config_dirs=[])
    url = f"rabbit://guest:guest@127.0.0.1:{closed_port()}/"
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    notifier = oslo_messaging.Notifier(
        transport, "vigil-server:test", driver="messagingv2", topics=["t"], retry=0
    )
    with caplog.at_level(logging.ERROR, logger="oslo_messaging"):
        # no exception, though nothing was sent: the loss is only a log line
        assert notifier.error({}, "vigil.test", {"lost": True}) is None
    transport.cleanup()
    lost = [r for r in caplog.records if r.getMessage().startswith("Could not send notification")]
    assert lost and lost[0].name.startswith("oslo_messaging")


# -- on the real broker --------------------------------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.parametrize("driver", ["messagingv2", "messaging"])
def test_a_listener_receives_the_versioned_notification(
    driver: str, listener: RabbitListener
) -> None:
    notifier = notifier_for(listener, driver=driver)
    event = make_event(
        instance_id="6f1c2a4e-8d1b-4c55-9a0e-2f6f1e9b7c10",
        project_id="8f6b2c1d4e7a4b0c9d3e5f7a1b2c4d6e",
        payload=VERSIONED_PAYLOAD,
    )
    notifier.publish(event)
    wait_until(received_ids(listener)({event.id}), "the notification", 10, every=0.01)
    (got,) = listener.received
    assert got.priority == "ERROR"
    assert got.event_type == "vigil.host.failure.confirmed"
    assert got.publisher_id == "vigil-server:test-host"
    assert got.payload == VERSIONED_PAYLOAD
    assert got.metadata["message_id"] == event.id
    assert got.metadata["timestamp"] == "2027-01-15 08:02:03.250000"
    assert got.ctxt[CONTEXT_HOST] == "compute-3"
    assert got.ctxt[CONTEXT_INSTANCE_ID] == event.instance_id
    assert got.ctxt[CONTEXT_PROJECT_ID] == event.project_id
    assert got.event() == event
    notifier.close()


@pytest.mark.rabbitmq
def test_events_arrive_in_the_order_they_were_published(
    listener: RabbitListener, notifier: OsloMessagingNotifier
) -> None:
    events = [make_event(priority="INFO", payload={"n": n}) for n in range(30)]
    for event in events:
        notifier.publish(event)
    wait_until(received_ids(listener)({e.id for e in events}), "30 notifications", 10, every=0.01)
    assert listener.events() == events


@pytest.mark.rabbitmq
def test_each_priority_reaches_the_listener_as_itself(
    listener: RabbitListener, notifier: OsloMessagingNotifier
) -> None:
    given = ["DEBUG", "INFO", "AUDIT", "WARNING", "ERROR", "CRITICAL", "SAMPLE"]
    events = [make_event(priority=p) for p in given]
    for event in events:
        notifier.publish(event)
    wait_until(received_ids(listener)({e.id for e in events}), "7 notifications", 10, every=0.01)
    by_id = {n.metadata["message_id"]: n.priority for n in listener.received}
    assert [by_id[e.id] for e in events] == [
        "DEBUG",
        "INFO",
        "AUDIT",
        "WARN",
        "ERROR",
        "CRITICAL",
        "SAMPLE",
    ]


@pytest.mark.rabbitmq
def test_events_published_before_the_listener_starts_wait_for_it(rabbit: str) -> None:
    """The publisher declares the listener's queues: a consumer that is down loses nothing."""
    late = RabbitListener(rabbit)
    try:
        notifier = notifier_for(late)
        events = [make_event(priority=p) for p in ("ERROR", "INFO", "ERROR")]
        for event in events:
            notifier.publish(event)
        notifier.close()
        late.start()
        wait_until(
            received_ids(late)({e.id for e in events}), "3 queued notifications", 10, every=0.01
        )
        assert sorted(late.events(), key=events.index) == events
    finally:
        late.close()


@pytest.mark.rabbitmq
def test_credentials_the_broker_refuses_are_permanent(
    rabbit: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host = rabbit.rsplit("@", 1)[1]
    notifier = OsloMessagingNotifier(f"rabbit://guest:{PASSWORD}@{host}", retry=1)
    with pytest.raises(PermanentError, match="ACCESS_REFUSED") as caught:
        notifier.publish(make_event())
    notifier.close()
    assert PASSWORD not in str(caught.value)
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


@pytest.mark.rabbitmq
def test_an_unknown_virtual_host_is_permanent(rabbit: str) -> None:
    notifier = OsloMessagingNotifier(rabbit.rstrip("/") + "/vigil-no-such-vhost")
    with pytest.raises(PermanentError, match="vhost"):
        notifier.publish(make_event())
    notifier.close()


@pytest.mark.rabbitmq
def test_an_exchange_declared_otherwise_is_permanent(rabbit: str) -> None:
    listener = RabbitListener(rabbit)  # not started: only for its names and clean-up
    amqp_url = "amqp://" + rabbit.split("://", 1)[1]
    with kombu.Connection(amqp_url, connect_timeout=3) as connection:
        exchange = kombu.Exchange(listener.exchange, type="topic", durable=True)
        exchange(connection.default_channel).declare()
    notifier = notifier_for(listener)  # declares it not durable: the broker refuses
    try:
        with pytest.raises(PermanentError, match="PRECONDITION_FAILED"):
            notifier.publish(make_event())
    finally:
        notifier.close()
        listener.close()


# -- the notifier contract -----------------------------------------------------------------


@dataclass
class RabbitWorld:
    notifier: OsloMessagingNotifier
    listener: RabbitListener
    timeout: float = 15.0

    def received(self) -> list[Event]:
        return self.listener.events()

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        wait_until(condition, what, timeout, every=0.01)


@pytest.mark.rabbitmq
class TestOsloMessagingNotifierContract(NotifierContract):
    @pytest.fixture
    def notifier_world(
        self, listener: RabbitListener, notifier: OsloMessagingNotifier
    ) -> Iterator[RabbitWorld]:
        yield RabbitWorld(notifier, listener)


# -- the broker stopped and started again (last: it disturbs the broker) --------------------


@pytest.mark.rabbitmq
def test_while_the_broker_is_stopped_publish_fails_fast_and_then_delivers_after_restart(
    rabbit: str, listener: RabbitListener, notifier: OsloMessagingNotifier
) -> None:
    require("rabbitmqctl", BrokerControl.available)
    broker = BrokerControl(rabbit)
    before, during, after = (make_event(priority="INFO", payload={"n": n}) for n in range(3))
    notifier.publish(before)
    wait_until(received_ids(listener)({before.id}), "the first notification", 10, every=0.01)

    with broker.stopped():
        for _ in range(2):  # the pooled connection breaking, then a fresh one refused
            started = time.monotonic()
            with pytest.raises(TemporaryError):
                notifier.publish(during)
            assert time.monotonic() - started < 5.0

    # What the outbox does: try again until the broker takes it.
    deadline = time.monotonic() + 30
    while True:
        try:
            notifier.publish(during)
            break
        except TemporaryError:
            assert time.monotonic() < deadline, "the broker did not come back in 30 s"
            time.sleep(0.5)
    notifier.publish(after)
    wait_until(
        received_ids(listener)({during.id, after.id}), "the later notifications", 30, every=0.01
    )
    assert listener.events() == [before, during, after]


if TYPE_CHECKING:
    _world: type[NotifierWorld] = RabbitWorld
