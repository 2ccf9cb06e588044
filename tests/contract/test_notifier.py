"""The notifier contract on MemoryNotifier, and on LogNotifier read back through caplog."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from support import wait_until

from vigil.drivers.notifier import Event, LogNotifier, MemoryNotifier, Notifier

from .notifier_contract import NotifierContract

if TYPE_CHECKING:
    from .notifier_contract import NotifierWorld

LOGGER = "vigil.events.contract"


@dataclass
class MemoryWorld:
    notifier: MemoryNotifier
    timeout: float = 1.0

    def received(self) -> list[Event]:
        return self.notifier.events

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        wait_until(condition, what, timeout, every=0.005)


@dataclass
class LogWorld:
    notifier: Notifier
    caplog: pytest.LogCaptureFixture
    timeout: float = 1.0

    def received(self) -> list[Event]:
        events = []
        for record in self.caplog.records:
            if record.name != LOGGER:
                continue
            message = record.getMessage()
            assert message.startswith("event "), message
            events.append(Event(**json.loads(message.removeprefix("event "))))
        return events

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        wait_until(condition, what, timeout, every=0.005)


class TestNotifiers(NotifierContract):
    @pytest.fixture(params=["memory", "log"])
    def notifier_world(
        self, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
    ) -> Iterator[MemoryWorld | LogWorld]:
        if request.param == "memory":
            yield MemoryWorld(MemoryNotifier())
            return
        caplog.set_level(logging.INFO, logger=LOGGER)
        yield LogWorld(LogNotifier(logging.getLogger(LOGGER)), caplog)


def test_log_notifier_writes_one_json_line_per_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    LogNotifier(logging.getLogger(LOGGER)).publish(Event("e-1", "vigil.test", 1.5, host="h"))
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.INFO
    assert "\n" not in record.getMessage()
    assert json.loads(record.getMessage().removeprefix("event "))["host"] == "h"


if TYPE_CHECKING:  # mypy checks the worlds against the contract's protocol
    _memory: type[NotifierWorld] = MemoryWorld
    _log: type[NotifierWorld] = LogWorld
