"""Operator requests that wait on the cloud: recorded intents, carried out by workers.

Restoring a host (two Nova calls) and a consumer's restart of an instance (a Nova
reboot) are the operator's, not vigil's, but they wait on Nova all the same: the API
records each as an ``OperatorRequest`` (``submit``) and wakes this reaction; its rule
(``decide_requests``) picks the due ones, one at a time per target (a host, an
instance); the handler marks the request RUNNING and hands it to a worker, which calls
the kind's handler and records the outcome with its events — retried after a temporary
error with the one retry policy (``vigil.engine.reconciler.RetryPolicy``), given up
after its attempts. The decision thread never waits on Nova, and a request survives a
restart of vigil: one left RUNNING is requeued and run again (both kinds are safe to
repeat: a host already restored is left as it is; an instance is rebooted once more).

The API waits for the outcome (``outcome``), bounded, and answers as it would have had
it called Nova itself: the error the request ended with, or — when the cloud is slower
than the wait — a 503 that says vigil carries the request on.

A reaction on the skeleton of ``vigil.engine.reconciler``, run by the host engine's loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from vigil.clock import Clock
from vigil.drivers.errors import Conflict, DriverError, TemporaryError
from vigil.engine.ownership import SOLE_OWNER, HostOwner
from vigil.engine.reconciler import Reaction, RetryPolicy
from vigil.engine.workers import Cancelled, KeyedWorkers
from vigil.model import Event, InvalidTransition, OperatorRequest, RequestKind, StepStatus
from vigil.store import Store, StoreError, StoreUnavailable

LOG = logging.getLogger("vigil.engine.requests")
OPEN = (StepStatus.PENDING, StepStatus.RUNNING)
# Errors that end a request at once: the operator asked now and the answer is no (Nova
# refuses for now, the instance or host is gone or in the wrong state); retrying behind
# the operator's back would only make them wait for the same answer.
FINAL = (Conflict, InvalidTransition, StoreError)

# A kind's handler: carries the request out (waiting on the cloud) and returns a
# sentence for the log and the events recorded with its success.
Handler = Callable[[OperatorRequest], tuple[str, Sequence[Event]]]


@dataclass(frozen=True)
class RequestsView:
    now: float
    requests: tuple[OperatorRequest, ...]  # PENDING and RUNNING, oldest first
    busy: frozenset[str]  # targets a worker is on


@dataclass(frozen=True)
class RunRequest:
    request: OperatorRequest


def decide_requests(view: RequestsView) -> list[RunRequest]:
    """The due requests, the oldest of each target first, none for a target in work."""
    taken = set(view.busy)
    actions: list[RunRequest] = []
    for request in sorted(view.requests, key=lambda r: r.id):
        if request.target in taken:
            continue
        taken.add(request.target)  # a later request of the target waits for this one
        if request.status == StepStatus.PENDING and request.next_attempt_at <= view.now:
            actions.append(RunRequest(request))
    return actions


class OperatorRequests(Reaction[RequestsView, RunRequest]):
    name = "requests"

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        retry: RetryPolicy,
        wake: Callable[[], None],
        on_events: Callable[[], None] = lambda: None,
        threads: int = 2,
    ) -> None:
        super().__init__()
        self._store = store
        self._clock = clock
        self._retry = retry
        # With several servers, a request is carried out by the owner of its host's
        # segment, under its token (``vigil.engine.ownership.HostOwner``).
        self.owner: HostOwner = SOLE_OWNER
        self._wake = wake
        self._on_events = on_events
        self._workers = KeyedWorkers(threads, "vigil-request")
        self._kinds: dict[RequestKind, Handler] = {}
        self._done = threading.Condition()
        self._errors: dict[int, BaseException] = {}  # why a request failed, for its caller
        self.handle(RunRequest, self._run)

    def register(self, kind: RequestKind, handler: Handler) -> None:
        self._kinds[kind] = handler

    # --- the API's side -----------------------------------------------------------------

    def submit(
        self, kind: RequestKind, target: str, *, host: str | None, reason: str
    ) -> OperatorRequest:
        """Record the request (it is carried out even if vigil restarts) and wake the loop."""
        request = self._store.add_request(
            kind, target, host=host, reason=reason, at=self._clock.wall()
        )
        LOG.info(
            "%s: %s requested (%s), request %d", _about(request), kind.value, reason, request.id
        )
        self._wake()
        return request

    def outcome(self, request_id: int, timeout: float) -> OperatorRequest:
        """Wait up to ``timeout`` seconds for the request to end. Its record when it
        succeeded; the error it failed with (or a DriverError saying why) when it
        failed; TemporaryError when it is still waiting on the cloud (it goes on)."""
        deadline = time.monotonic() + timeout  # the caller waits in real time
        with self._done:
            while True:
                request = self._store.get_request(request_id)
                if request.status not in OPEN:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TemporaryError(
                        f"{_about(request)}: {request.kind.value} is still waiting on the "
                        f"cloud after {timeout:g}s; vigil carries it on (request {request_id})"
                    )
                self._done.wait(min(left, 1.0))
            error = self._errors.pop(request_id, None)
        if request.status == StepStatus.FAILED:
            raise error if error is not None else DriverError(request.detail)
        return request

    # --- the reaction -------------------------------------------------------------------

    def resume_after_restart(self) -> None:
        count = self._store.requeue_running_requests(at=self._clock.wall())
        if count:
            LOG.warning("resuming: %d operator requests were running when vigil stopped", count)

    def observe(self) -> RequestsView:
        busy = frozenset(str(key) for key in self._workers.busy())
        requests = tuple(
            r for r in self._store.list_requests(statuses=OPEN) if self.owner.owns(r.host)
        )
        return RequestsView(self._clock.wall(), requests, busy)

    def decide(self, snapshot: RequestsView) -> list[RunRequest]:
        return decide_requests(snapshot)

    def admit(self, action: RunRequest) -> bool:
        return self.owner.owns(action.request.host)  # not lost since the snapshot

    def acting(self, action: RunRequest) -> AbstractContextManager[None]:
        return self.owner.acting(action.request.host)

    def drain(self, timeout: float = 10.0) -> bool:
        return self._workers.drain(timeout)

    def close(self) -> None:
        self._workers.stop()

    def _run(self, action: RunRequest) -> None:
        request = self._store.start_request(action.request.id, at=self._clock.wall())
        # False when shutting down: it stays RUNNING and is requeued at the next start.
        run = self.owner.job(
            request.host,
            f"request {request.id}",
            self._execute,
            refused=lambda: self._redo(request, "not started: acting stopped"),
        )
        self._workers.submit(request.target, run, request, then=self._finished)

    def _redo(self, request: OperatorRequest, why: str) -> None:
        """Stopped, or not started, while the acting window had lapsed: due again, done
        once this server may act."""
        now = self._clock.wall()
        self._store.finish_request(
            request.id, StepStatus.PENDING, at=now, detail=why, next_attempt_at=now
        )

    def _execute(self, request: OperatorRequest) -> None:
        about, kind = _about(request), request.kind.value
        try:
            try:
                detail, events = self._kinds[request.kind](request)
            except Cancelled as exc:  # its segment's new owner carries it on
                LOG.warning("%s: %s (request %d) stopped: %s", about, kind, request.id, exc)
                if self.owner.to_redo(exc):  # or this server, once renewed
                    self._redo(request, str(exc))
                return
            except Exception as exc:
                if not isinstance(exc, DriverError | InvalidTransition | StoreError):
                    LOG.exception("%s: %s crashed", about, kind)
                now = self._clock.wall()
                final = isinstance(exc, FINAL) and not isinstance(exc, StoreUnavailable)
                delay = None if final else self._retry.after_failure(request.attempts, exc)
                if delay is None:
                    self._errors[request.id] = exc
                    while len(self._errors) > 1000:  # callers that gave up waiting
                        del self._errors[next(iter(self._errors))]
                    self._store.finish_request(
                        request.id, StepStatus.FAILED, at=now, detail=str(exc)
                    )
                    LOG.error(
                        "%s: %s (request %d) failed after %d attempt(s): %s",
                        about,
                        kind,
                        request.id,
                        request.attempts,
                        exc,
                    )
                else:
                    self._store.finish_request(
                        request.id,
                        StepStatus.PENDING,
                        at=now,
                        detail=str(exc),
                        next_attempt_at=now + delay,
                    )
                    LOG.warning(
                        "%s: %s (request %d) attempt %d failed, retrying in %.1fs: %s",
                        about,
                        kind,
                        request.id,
                        request.attempts,
                        delay,
                        exc,
                    )
                return
            self._store.finish_request(
                request.id,
                StepStatus.SUCCEEDED,
                at=self._clock.wall(),
                detail=detail,
                events=events,
            )
            LOG.info("%s: %s done (request %d): %s", about, kind, request.id, detail)
        except Exception:
            LOG.exception("%s: recording request %d failed", about, request.id)

    def _finished(self) -> None:
        with self._done:
            self._done.notify_all()
        self._on_events()
        self._wake()


def _about(request: OperatorRequest) -> str:
    if request.kind in (RequestKind.BUILD_CLUSTER, RequestKind.DELETE_CLUSTER):
        return f"cluster {request.target}"
    if request.kind != RequestKind.RESTORE_HOST:  # about an instance
        return f"host {request.host}: instance {request.target}"
    return f"host {request.target}"
