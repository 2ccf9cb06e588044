"""What many tests share: waiting for a condition, a store to run a reaction on, and the
in-process worlds (``support.world``) that run vigil's reactions on a fake clock against
the simulated cloud.

Imported as ``from support import wait_until`` (the tests folder is on the path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from support.world import HOSTS, TICK, FakeTimeCloud, HostFailureWorld, World, new_store

__all__ = [
    "HOSTS",
    "TICK",
    "FakeTimeCloud",
    "HostFailureWorld",
    "World",
    "new_store",
    "wait_until",
]


def wait_until(
    condition: Callable[[], Any],
    what: str = "the condition",
    timeout: float = 20.0,
    *,
    every: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``condition`` every ``every`` seconds until it returns something true, and
    return that; after ``timeout`` seconds fail, naming ``what`` was awaited. Exceptions
    of the ``ignoring`` types count as "not yet" (a port not listening yet); the last one
    is named if time runs out."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
        except ignoring as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            why = f" (last: {last!r})" if last is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{why}")
        time.sleep(every)
