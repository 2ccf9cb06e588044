"""Worker threads for slow calls, at most one at a time per key (a host, a failure)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class KeyedWorkers:
    """A thread pool that remembers which keys have work in flight.

    ``submit(key, fn, ...)`` runs ``fn`` on a worker and marks ``key`` busy until it
    returns (whatever it raises: ``fn`` logs its own errors); a loop asks ``busy()`` to
    leave such keys alone."""

    def __init__(self, threads: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._keys: set[Hashable] = set()

    def busy(self) -> set[Hashable]:
        with self._lock:
            return set(self._keys)

    def submit(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        *args: Any,
        then: Callable[[], None] | None = None,
    ) -> bool:
        """Run ``fn(*args)``, then ``then()`` once ``key`` is free again. False when
        shutting down (the work is not done; the caller requeues it)."""
        with self._lock:
            self._keys.add(key)

        def run() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._keys.discard(key)
                if then is not None:
                    then()

        try:
            self._pool.submit(run)
        except RuntimeError:
            with self._lock:
                self._keys.discard(key)
            return False
        return True

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
