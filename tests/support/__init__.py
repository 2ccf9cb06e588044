"""What many tests share: waiting for a condition, a store to run a reaction on.

Imported as ``from support import wait_until`` (the tests folder is on the path). The
in-process worlds are modules of their own, imported only by the tests that use them:
``support.world`` (vigil's reactions on a fake clock, the simulated cloud and a store)
and ``support.cloud`` (the simulated cloud alone on a fake clock)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a store is made: a test that only waits needs no SQL
    from vigil.model import Host, Segment
    from vigil.store.sql import SqlStore


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


def new_store(tmp_path: Path, segment: Segment, hosts: Iterable[Host] = ()) -> SqlStore:
    """A migrated SQLite store under ``tmp_path`` holding ``segment`` and ``hosts``: the
    one set-up of the tests that run a reaction on a real store."""
    from vigil.store.sql import SqlStore, upgrade

    url = f"sqlite:///{tmp_path / 'vigil.db'}"
    upgrade(url)
    store = SqlStore(url)
    store.create_segment(segment)
    for host in hosts:
        store.create_host(host)
    return store
