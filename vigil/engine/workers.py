"""Worker threads for slow calls, at most one at a time per key (a host, a step), with
cancellation.

Every reaction hands what waits on Nova, a BMC or the network to a ``KeyedWorkers``: the
host engine (steps and power probes), the guest engine (policy look-ups, restarts) and
the service keeper (one service action per host). The pool is concurrent.futures'; what
it adds is the keys — a snapshot asks ``busy()`` and the rule leaves a busy key alone —
and a cooperative cancel: a job cannot be interrupted inside a driver call, but at its
next wait (``waiter``) or check (``check``) it raises ``Cancelled``, and its owner
records the outcome. Work that is cancelled is never half-recorded: the job itself
writes what became of it (steps are idempotent, so a cancelled one can run again).

Urgent work has a lane of its own (``urgent_threads``): a pool's queue is first come,
first served, and a rack failure's 2,000 evacuations (each holding a worker for seconds
until its instance is ACTIVE) would otherwise queue another host's BMC probe, fence or
force-down behind them for minutes (bench/scale.py: a rack host's instance listing
waited 12 s for a worker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Cancelled(Exception):
    """The job's key was cancelled (``KeyedWorkers.cancel``); the text says why."""


class KeyedWorkers:
    """A thread pool that remembers which keys have work in flight.

    ``submit(key, fn, ...)`` runs ``fn`` on a worker and marks ``key`` busy until it
    returns (whatever it raises: ``fn`` logs its own errors); a loop asks ``busy()`` to
    leave such keys alone."""

    def __init__(self, threads: int, name: str, urgent_threads: int = 0) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._urgent = (
            ThreadPoolExecutor(urgent_threads, thread_name_prefix=f"{name}-urgent")
            if urgent_threads
            else self._pool
        )
        self._lock = threading.Lock()
        self._keys: dict[Hashable, threading.Event] = {}  # busy key → its cancel flag
        self._why: dict[Hashable, str] = {}

    def busy(self) -> set[Hashable]:
        with self._lock:
            return set(self._keys)

    def submit(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        *args: Any,
        then: Callable[[], None] | None = None,
        urgent: bool = False,
    ) -> bool:
        """Run ``fn(*args)``, then ``then()`` once ``key`` is free again; ``urgent`` on
        the urgent lane. False when shutting down (the work is not done; the caller
        requeues it)."""
        with self._lock:
            self._keys[key] = threading.Event()
            self._why.pop(key, None)

        def run() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._keys.pop(key, None)
                    self._why.pop(key, None)
                if then is not None:
                    then()

        try:
            (self._urgent if urgent else self._pool).submit(run)
        except RuntimeError:
            with self._lock:
                self._keys.pop(key, None)
            return False
        return True

    def cancel(self, key: Hashable, reason: str) -> bool:
        """Ask the job of ``key`` to stop: its next ``check`` or wait raises
        ``Cancelled(reason)``. False when no job of that key is in flight."""
        with self._lock:
            flag = self._keys.get(key)
            if flag is None:
                return False
            self._why.setdefault(key, reason)
        flag.set()
        return True

    def check(self, key: Hashable) -> None:
        """Raise ``Cancelled`` if ``key`` was cancelled (called by the job itself)."""
        with self._lock:
            flag = self._keys.get(key)
            why = self._why.get(key, "")
        if flag is not None and flag.is_set():
            raise Cancelled(why)

    def waiter(
        self, key: Hashable, wait: Callable[[float], None] = time.sleep
    ) -> Callable[[float], None]:
        """A wait for the job of ``key`` that ends early, raising ``Cancelled``, when
        the key is cancelled. On real time (``time.sleep``) it wakes at the cancel; on
        an injected clock (tests) it waits on that clock and checks before and after."""

        def cancellable(seconds: float) -> None:
            self.check(key)
            with self._lock:
                flag = self._keys.get(key)
            if wait is time.sleep and flag is not None:
                flag.wait(seconds)
            else:
                wait(seconds)
            self.check(key)

        return cancellable

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until nothing runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._keys:
                    return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._urgent.shutdown(wait=True, cancel_futures=True)
