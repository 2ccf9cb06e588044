"""WebhookNotifier against a real HTTP receiver on 127.0.0.1, and its signature scheme."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from contract.notifier_contract import NotifierContract, make_event
from support import wait_until

from vigil.drivers.errors import DriverError, PermanentError, TemporaryError
from vigil.drivers.notifier import Event
from vigil.drivers.webhook import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookNotifier,
    event_body,
    sign,
    validate_webhook_url,
    verify_signature,
)

from .receivers import WebhookReceiver, closed_port, self_signed_certificate

if TYPE_CHECKING:
    from contract.notifier_contract import NotifierWorld

SECRET = "whsec-7Qm2-pineapple-DO-NOT-LEAK"
BODY = b'{"id":"e-1","event_type":"vigil.host.failure.confirmed"}'


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def notifier(receiver: WebhookReceiver) -> Iterator[WebhookNotifier]:
    n = WebhookNotifier(receiver.url, SECRET, timeout=2.0)
    yield n
    n.close()


# -- the signature -------------------------------------------------------------------------


def test_a_signature_verifies_and_is_the_documented_hmac() -> None:
    header = sign(SECRET, BODY, 1_800_000_000)
    expected = hmac.new(SECRET.encode(), b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"
    assert verify_signature(SECRET, header, BODY, now=1_800_000_000)
    assert verify_signature(SECRET, header, BODY.decode(), now=1_800_000_000)


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        pytest.param(SECRET, BODY.replace(b"e-1", b"e-2"), 1_800_000_000, id="tampered-body"),
        pytest.param(SECRET, BODY + b" ", 1_800_000_000, id="one-byte-more"),
        pytest.param("another-secret", BODY, 1_800_000_000, id="wrong-secret"),
        pytest.param(SECRET, BODY, 1_800_000_301, id="stale: replayed 301s later"),
        pytest.param(SECRET, BODY, 1_799_999_699, id="from 301s in the future"),
    ],
)
def test_a_signature_fails_when_anything_differs(secret: str, body: bytes, now: float) -> None:
    header = sign(SECRET, BODY, 1_800_000_000)
    assert not verify_signature(secret, header, body, now=now)


def test_the_tolerance_is_inclusive_and_adjustable() -> None:
    header = sign(SECRET, BODY, 1_800_000_000)
    assert verify_signature(SECRET, header, BODY, now=1_800_000_300)
    assert not verify_signature(SECRET, header, BODY, now=1_800_000_011, tolerance=10)


def test_a_signature_with_the_timestamp_changed_fails() -> None:
    header = sign(SECRET, BODY, 1_800_000_000)
    forged = header.replace("t=1800000000", "t=1800000100")
    assert not verify_signature(SECRET, forged, BODY, now=1_800_000_100)


def test_any_of_several_v1_may_match_while_a_secret_is_rotated() -> None:
    old = sign("old-secret", BODY, 1_800_000_000).split(",")[1]
    header = sign(SECRET, BODY, 1_800_000_000) + "," + old
    assert verify_signature(SECRET, header, BODY, now=1_800_000_000)
    assert verify_signature("old-secret", header, BODY, now=1_800_000_000)
    assert not verify_signature("third", header, BODY, now=1_800_000_000)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "v1=abc",
        "t=1800000000",
        "t=18e8,v1=abc",
        "t=-1800000000,v1=abc",
        "t=1800000000,t=1800000000,v1=abc",
        "t=1800000000,v1=" + "0" * 64,
        "t=1800000000,v1=é",
    ],
)
def test_malformed_signature_headers_fail_without_raising(header: str | None) -> None:
    assert not verify_signature(SECRET, header, BODY, now=1_800_000_000)


def test_an_empty_secret_verifies_nothing() -> None:
    assert not verify_signature("", sign("", BODY, 1_800_000_000), BODY, now=1_800_000_000)


# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://hooks.example.com/vigil?tenant=7&token=abc",
        "https://[2001:db8::1]:8443/",
        "HTTPS://Example.COM",
        "https://user:pw@example.com/basic-auth",
    ],
)
def test_good_webhook_urls(url: str) -> None:
    assert validate_webhook_url(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "non-empty"),
        (None, "non-empty"),
        (42, "non-empty"),
        ("ftp://example.com/x", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("example.com/hook", "http or https"),
        ("http:///only-a-path", "host"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com/\r\nX-Injected: 1", "control"),
        ("https://example.com:99999/", "parsed"),
        ("https://example.com:0/", "port"),
        ("https://example.com:http/", "parsed"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com/" + "a" * 2100, "longer"),
    ],
)
def test_bad_webhook_urls_say_why(url: object, problem: str) -> None:
    message = validate_webhook_url(url)
    assert message is not None
    assert problem in message


def test_a_bad_url_or_secret_is_refused_at_construction() -> None:
    with pytest.raises(PermanentError, match="scheme"):
        WebhookNotifier("ftp://example.com/", SECRET)
    with pytest.raises(PermanentError, match="secret"):
        WebhookNotifier("https://example.com/", "")
    with pytest.raises(PermanentError, match="CA bundle"):
        WebhookNotifier("https://example.com/", SECRET, verify="/nonexistent/ca.pem")
    with pytest.raises(PermanentError, match="timeout"):
        WebhookNotifier("https://example.com/", SECRET, timeout=0)


# -- delivery to a real receiver -----------------------------------------------------------


def test_a_delivery_carries_the_documented_headers_and_body(
    receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    event = make_event(instance_id="6f1c2a4e-8d1b-4c55-9a0e-2f6f1e9b7c10")
    before = int(time.time())
    notifier.publish(event)
    (delivery,) = receiver.deliveries
    assert delivery.path == "/hooks/vigil?tenant=t1"
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers[EVENT_HEADER.lower()] == "vigil.host.failure.confirmed"
    assert delivery.headers[DELIVERY_HEADER.lower()] == event.id
    header = delivery.headers[SIGNATURE_HEADER.lower()]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert before <= timestamp <= time.time()
    assert verify_signature(SECRET, header, delivery.body)
    assert not verify_signature("wrong", header, delivery.body)
    assert json.loads(delivery.body) == {
        "id": event.id,
        "event_type": event.event_type,
        "timestamp": event.timestamp,
        "priority": "ERROR",
        "host": "compute-3",
        "instance_id": event.instance_id,
        "payload": {"reason": "no heartbeat for 2.1s", "fenced": True},
    }
    assert delivery.body == event_body(event)


def test_a_captured_delivery_replayed_later_fails_verification(
    receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    notifier.publish(make_event())
    (delivery,) = receiver.deliveries
    header = delivery.headers[SIGNATURE_HEADER.lower()]
    assert verify_signature(SECRET, header, delivery.body, now=time.time() + 200)
    assert not verify_signature(SECRET, header, delivery.body, now=time.time() + 400)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(
    status: int, receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    receiver.answer(status)
    notifier.publish(make_event())
    assert [d.status for d in receiver.deliveries] == [status]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_busy_or_failing_receivers_are_temporary(
    status: int, receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    receiver.answer(status)
    with pytest.raises(TemporaryError, match=f"answered {status}"):
        notifier.publish(make_event())


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301, 302])
def test_refusals_and_redirects_are_permanent(
    status: int, receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    receiver.answer(status)
    with pytest.raises(PermanentError, match=f"answered {status}"):
        notifier.publish(make_event())
    assert len(receiver.deliveries) == 1  # a redirect is not followed


def test_a_retried_event_is_the_same_delivery(
    receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    event = make_event()
    receiver.answer(503, 500, 429)
    for _ in range(3):
        with pytest.raises(TemporaryError):
            notifier.publish(event)
    notifier.publish(event)
    deliveries = receiver.deliveries
    assert [d.status for d in deliveries] == [503, 500, 429, 204]
    assert {d.headers[DELIVERY_HEADER.lower()] for d in deliveries} == {event.id}
    assert {d.body for d in deliveries} == {event_body(event)}
    assert receiver.events(SECRET) == [event]


def test_connection_refused_is_temporary_and_quick() -> None:
    notifier = WebhookNotifier(f"http://127.0.0.1:{closed_port()}/hook", SECRET, timeout=5)
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="unreachable"):
        notifier.publish(make_event())
    assert time.monotonic() - started < 1.0
    notifier.close()


def test_a_receiver_slower_than_the_timeout_is_temporary_within_the_timeout() -> None:
    with WebhookReceiver(delay=3.0) as slow:
        notifier = WebhookNotifier(slow.url, SECRET, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="timed out"):
            notifier.publish(make_event())
        elapsed = time.monotonic() - started
        notifier.close()
    assert 0.4 < elapsed < 1.5


def test_https_with_a_ca_bundle_verifies_the_receiver(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a certificate")
    cert, key = self_signed_certificate(str(tmp_path))
    with WebhookReceiver(tls=(cert, key)) as tls_receiver:
        trusting = WebhookNotifier(tls_receiver.url, SECRET, verify=cert)
        event = make_event()
        trusting.publish(event)
        assert tls_receiver.events(SECRET) == [event]
        trusting.close()

        # Not trusted: a TLS failure is reported as temporary (a certificate can be fixed
        # or rotated while the event waits), naming the problem.
        distrusting = WebhookNotifier(tls_receiver.url, SECRET)
        with pytest.raises(TemporaryError, match="CERTIFICATE_VERIFY_FAILED"):
            distrusting.publish(make_event())
        distrusting.close()

        unverified = WebhookNotifier(tls_receiver.url, SECRET, verify=False)
        unverified.publish(make_event())
        unverified.close()
        assert len(tls_receiver.events(SECRET)) == 2


def test_a_payload_that_is_not_json_is_permanent_and_not_sent(
    receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    with pytest.raises(PermanentError, match="not JSON"):
        notifier.publish(make_event(payload={"when": object()}))
    with pytest.raises(PermanentError, match="not JSON"):
        notifier.publish(make_event(payload={"ratio": float("nan")}))
    assert receiver.deliveries == []


def test_the_secret_appears_in_no_log_record_and_no_exception(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[DriverError] = []
    notifier = WebhookNotifier(receiver.url, SECRET, timeout=0.3)
    receiver.answer(204, 500, 404)
    for _ in range(3):
        try:
            notifier.publish(make_event())
        except DriverError as exc:
            errors.append(exc)
    refused = WebhookNotifier(f"http://127.0.0.1:{closed_port()}/", SECRET)
    with WebhookReceiver(delay=1.0) as slow:
        too_slow = WebhookNotifier(slow.url, SECRET, timeout=0.2)
        for n in (refused, too_slow):
            with pytest.raises(TemporaryError) as caught:
                n.publish(make_event())
            errors.append(caught.value)
            n.close()
    with pytest.raises(PermanentError) as bad:
        WebhookNotifier("ftp://example.com/", SECRET)
    errors.append(bad.value)
    notifier.close()

    assert len(errors) == 5
    assert any(r.name.startswith(("vigil", "httpx", "httpcore")) for r in caplog.records)
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in str(record.args)
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            assert SECRET not in str(chain)
            assert SECRET not in repr(chain)
            chain = chain.__cause__
    assert SECRET not in repr(notifier)


# -- the notifier contract -----------------------------------------------------------------


@dataclass
class WebhookWorld:
    notifier: WebhookNotifier
    receiver: WebhookReceiver
    secret: str
    timeout: float = 5.0

    def received(self) -> list[Event]:
        """Only the deliveries whose signature verifies count as received."""
        return self.receiver.events(self.secret)

    def wait_until(self, condition: object, what: str, timeout: float) -> None:
        assert callable(condition)
        wait_until(condition, what, timeout, every=0.01)


class TestWebhookNotifierContract(NotifierContract):
    @pytest.fixture
    def notifier_world(
        self, receiver: WebhookReceiver, notifier: WebhookNotifier
    ) -> Iterator[WebhookWorld]:
        yield WebhookWorld(notifier, receiver, SECRET)


def test_a_receiver_failing_three_times_gets_the_event_on_the_fourth_try(
    receiver: WebhookReceiver, notifier: WebhookNotifier
) -> None:
    """What the dispatcher's retry does, one attempt per publish."""
    event = make_event()
    receiver.answer(500, 502, 503)
    attempts = 0
    while True:
        attempts += 1
        try:
            notifier.publish(event)
            break
        except TemporaryError:
            assert attempts < 10
    assert attempts == 4
    assert receiver.events(SECRET) == [event]


if TYPE_CHECKING:
    _world: type[NotifierWorld] = WebhookWorld
