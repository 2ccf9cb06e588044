"""The agent's application checks (issue 17): the checks vigil-server planned for the
guests of this host, run next to them, judged here and reported.

One thread exchanges with the server (``POST /v1/agents/{host}/app``, signed; the
answer signed with the same key, ``vigil.wire.app_checks``): at start, at once when a
check changes health or a guest command ended, and at least every ``report_interval``
seconds — every ``busy_interval`` while a check is FAILING or a command is under way, so
that the server, which can only speak in answers, reaches the agent quickly. A report
is a level: the state of every check the agent runs, with the outcome of the commands
not yet acknowledged (an answer to a report carrying one acknowledges it). Each valid
answer's plan replaces the last; an answer that is refused, unsigned or for another
report changes nothing, and is retried with backoff like the other senders.

Another thread starts the checks when due (``next_run_at``) on a bounded pool of
workers, with at most one call in flight per guest: libvirt serialises a guest's agent
channel anyway, and so a hung guest holds one worker for at most its timeout and delays
no other guest. A guest command of the server (the ladder's application restart) takes
its guest's turn before the checks; each command id runs once.

A check runs against the libvirt domain whose UUID is the instance id, through its QEMU
guest agent (``vigil.agent.guest_agent``): ``guest-agent`` pings it, ``exec`` runs the
owner's command, ``http`` and ``tcp`` run a small ``/bin/sh`` script in the guest
(``command_for``) that uses what the guest has — curl, busybox or wget for ``http``;
bash with coreutils' timeout, busybox's nc or nc for ``tcp`` — since a compute host
usually cannot reach tenant networks. Before it runs, the domain's state is read on the
same worker: a paused, migrating or stopped guest's checks are SUSPENDED without
touching the guest, and failures within ``grace`` of the domain's (re)start do not
count. A (re)start is a new libvirt domain ID (a stop and start, a rebuild or a hard
reboot through Nova), the end of an incoming migration, or the agent seeing the domain
for the first time; a reboot from inside the guest keeps its ID and is not one.

Limits: libvirt calls have no timeout of their own; those made here (state, control
info, job stats only while a job runs) do not wait for QEMU's monitor, and each one
holds only its guest's worker. ``heartbeat`` checks are judged by the server and never
run here. A command still running in a guest when its ``timeout`` passes is reported
failed (the guest agent does not kill it); the ``http`` and ``tcp`` scripts bound
themselves in the guest.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import shlex
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx

from vigil.agent.guest_agent import ExecResult, GuestAgentError
from vigil.agent.servers import ServerUrls, urls_given
from vigil.model import CheckState, Health
from vigil.wire.app_checks import (
    AppAnswer,
    AppReport,
    CheckSpec,
    CheckType,
    CommandDone,
    GuestCommand,
    InstanceContext,
    decode_app_answer,
    encode_app_report,
    judge,
    next_run_at,
)
from vigil.wire.reports import SIGNATURE_HEADER, BadReport

LOG = logging.getLogger("vigil.agent.app_checks")

# libvirt's numbers (stable ABI), so that the decisions need no libvirt import.
STATE_RUNNING, STATE_BLOCKED, STATE_PAUSED = 1, 2, 3  # virDomainState
PAUSED_MIGRATION, PAUSED_POSTCOPY = 2, 12  # virDomainPausedReason
CONTROL_JOB = 1  # virDomainControlState: a background job (migration, dump...) runs
JOB_NONE = 0  # virDomainJobType
JOB_OPERATION_UNKNOWN, JOB_MIGRATION_IN, JOB_MIGRATION_OUT = 0, 4, 5
ERR_NO_DOMAIN = 42  # virErrorNumber

# Seconds a guest command of an http or tcp check is given beyond its own bound in the
# guest, so that the guest's "no answer" is what ends it, not the agent's wait.
EXEC_MARGIN = 1.0

# The http and tcp checks, as scripts for the guest's /bin/sh: $1 the URL (or port), $2
# the seconds allowed. Each bounds itself inside the guest. Busybox applets are run as
# "/bin/busybox APPLET": a static busybox's applet run by its symlink has crashed under
# guest-exec (tests/libvirt).
HTTP_SCRIPT = """\
if command -v curl >/dev/null 2>&1; then
  exec curl --noproxy '*' -fsS -o /dev/null --max-time "$2" "$1"
fi
if [ -x /bin/busybox ]; then
  exec /bin/busybox timeout "$2" /bin/busybox wget -Y off -q -O /dev/null "$1"
fi
if command -v wget >/dev/null 2>&1; then
  exec wget --no-proxy -q -O /dev/null -T "$2" -t 1 "$1"
fi
echo "no curl, busybox or wget in the guest" >&2
exit 127
"""
TCP_SCRIPT = """\
if command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then
  exec timeout "$2" bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' vigil-tcp "$1"
fi
if [ -x /bin/busybox ]; then
  exec /bin/busybox timeout "$2" /bin/busybox nc 127.0.0.1 "$1" -e /bin/busybox true
fi
if command -v nc >/dev/null 2>&1; then
  exec nc -z -w "$2" 127.0.0.1 "$1"
fi
echo "no bash, busybox or nc in the guest" >&2
exit 127
"""
TIMED_OUT_EXITS = (124, 143)  # coreutils' timeout; busybox's (its SIGTERM)
SIGTERM = 15


class GuestChannel(Protocol):
    """What the checks need of ``vigil.agent.guest_agent.GuestAgent``."""

    def ping(self, domain: Any, timeout: float = ...) -> None: ...

    def exec(self, domain: Any, argv: Sequence[str], timeout: float = ...) -> ExecResult: ...


def command_for(spec: CheckSpec) -> tuple[str, ...]:
    """The command a check of type ``exec``, ``http`` or ``tcp`` runs in the guest."""
    seconds = str(max(1, math.ceil(spec.timeout)))
    if spec.type == CheckType.EXEC:
        return spec.command
    if spec.type == CheckType.HTTP:
        url = f"http://127.0.0.1:{spec.port}{spec.path}"
        return ("/bin/sh", "-c", HTTP_SCRIPT, "vigil-http", url, seconds)
    if spec.type == CheckType.TCP:
        return ("/bin/sh", "-c", TCP_SCRIPT, "vigil-tcp", str(spec.port), seconds)
    raise ValueError(f"a {spec.type} check runs no command in the guest")


def exec_timeout(spec: CheckSpec) -> float:
    """How long the agent waits for a check's command to end."""
    if spec.type in (CheckType.HTTP, CheckType.TCP):
        return max(1, math.ceil(spec.timeout)) + EXEC_MARGIN
    return spec.timeout


def outcome(result: ExecResult, *, bounded: float | None = None) -> str:
    """A short detail of a command's end: its status and the tail of its stderr.
    ``bounded``: the seconds the command bounds itself to (a timeout's status says so)."""
    if result.ok:
        return f"exit 0 in {result.seconds:.1f}s"
    timed_out = result.exit_code in TIMED_OUT_EXITS or result.signal == SIGTERM
    if bounded is not None and timed_out:
        return f"no answer within {bounded:g}s"
    status = f"exit {result.exit_code}" if result.exit_code is not None else "killed"
    if result.signal is not None:
        status = f"killed by signal {result.signal}"
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return f"{status}: {lines[-1][-200:]}" if lines else status


def suspension(state: int | None, reason: int, job: int | None) -> str:
    """Why a domain's checks are suspended ("" if not), from ``virDomainGetState``'s
    (state, reason) — state None: no such domain here — and the operation of its active
    job (None: none). An active job of unknown operation counts as a migration: a
    check suspended wrongly costs a late verdict, a check run wrongly a false failure."""
    if state == STATE_PAUSED:
        return "migrating" if reason in (PAUSED_MIGRATION, PAUSED_POSTCOPY) else "paused"
    if state not in (STATE_RUNNING, STATE_BLOCKED):
        return "not running"
    if job in (JOB_MIGRATION_IN, JOB_MIGRATION_OUT, JOB_OPERATION_UNKNOWN):
        return "migrating"
    return ""


def _error_code(exc: BaseException) -> int | None:
    get = getattr(exc, "get_error_code", None)
    try:
        return int(get()) if callable(get) else None
    except Exception:
        return None


class LibvirtConnection:
    """A read-write libvirt connection, opened on first use and opened again when it
    died (libvirtd restarted); thread-safe: the workers share it."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._lock = threading.Lock()
        self._conn: Any = None

    def __call__(self) -> Any:
        import libvirt  # type: ignore[import-untyped]

        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                with contextlib.suppress(Exception):
                    if self._conn is not None:
                        self._conn.close()
                self._conn = libvirt.open(self._uri)
                # A hung libvirtd is noticed (needs the event loop LibvirtMonitor runs).
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.setKeepAlive(5, 3)
            return self._conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()


class _Unreadable(Exception):
    """libvirt did not say what state the domain is in (not a verdict on the guest)."""


@dataclass
class _Check:
    spec: CheckSpec
    state: CheckState = field(default_factory=CheckState)


@dataclass
class _Domain:
    libvirt_id: int  # a new one is a (re)start
    started_at: float
    migrating: bool = False


class AppChecks:
    """Runs the application checks of this host's guests and reports them."""

    def __init__(
        self,
        *,
        host: str,
        connection: Callable[[], Any],
        guest_agent: GuestChannel,
        key: bytes,
        server_url: str = "",
        server_urls: Sequence[str] | None = None,
        workers: int = 16,
        report_interval: float = 30.0,
        busy_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        poll: float = 1.0,
        timeout: float = 5.0,
        backoff_max: float = 10.0,
        remember_commands: int = 1000,
        transport: httpx.BaseTransport | None = None,
        on_run: Callable[[str, CheckSpec, float, float], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``on_run(instance, spec, due, started)``, if given, is called on the worker as
        each check run starts, with when it was due (``next_run_at``) and when it started
        on ``clock``: how late the checks run (``bench/app_failure.py``). ``tls``
        verifies an https:// server's certificate (None: against the system's trust
        store)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._host = host
        self._connection = connection
        self._agent = guest_agent
        self.key = key  # the host's agent key; replaced when its key file changes
        self._servers = ServerUrls(urls_given(server_url, server_urls), tls)
        self._path = f"/v1/agents/{host}/app"
        self._workers = workers
        self._report_interval = report_interval
        self._busy_interval = busy_interval
        self._clock = clock
        self._poll = poll  # longest real wait between two looks at the clock
        self._timeout = timeout
        self._backoff_max = backoff_max
        self._remember = remember_commands
        self._transport = transport
        self._on_run = on_run
        self._cv = threading.Condition()
        self._plan: dict[str, dict[str, _Check]] = {}  # instance -> check name -> check
        self._domains: dict[str, _Domain] = {}
        self._busy: set[str] = set()  # guests with a call in flight
        self._in_flight = 0
        self._commands: dict[str, collections.deque[GuestCommand]] = {}  # to run
        self._running: set[str] = set()  # ids of the commands running
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._done: dict[str, CommandDone] = {}  # ended, not yet acknowledged
        self._libvirt_error = ""  # logged, until libvirt answers again
        self._report_now = True  # at start
        self._stopped = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="app-check")
        self._threads = [
            threading.Thread(target=self._schedule, name="app-checks", daemon=True),
            threading.Thread(target=self._exchange_loop, name="app-report", daemon=True),
        ]
        self.exchanges = 0  # answers accepted (tests and logs)
        self.last_error = ""  # why the last exchange failed ("" once one succeeds)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=10)
        # A worker still waiting on a hung guest ends at its timeout, unwaited for.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def states(self) -> dict[str, dict[str, CheckState]]:
        """instance -> check -> state, of the checks planned now."""
        with self._cv:
            return {
                iid: {name: c.state for name, c in checks.items()}
                for iid, checks in self._plan.items()
            }

    # --- scheduling (the "app-checks" thread) -----------------------------------------

    def _schedule(self) -> None:
        with self._cv:
            while not self._stopped:
                wait = self._dispatch(self._clock())
                self._cv.wait(timeout=wait)

    def _dispatch(self, now: float) -> float:
        """Start on the pool what is due and whose guest is free (commands first, then
        the most overdue checks); the real seconds to wait before looking again."""
        due: list[tuple[float, str, GuestCommand | _Check]] = []
        next_due = math.inf
        for iid, queue in self._commands.items():
            if queue and iid not in self._busy:
                due.append((-math.inf, iid, queue[0]))
        for iid, checks in self._plan.items():
            if iid in self._busy:
                continue  # run when it is free: its end wakes this thread
            for check in checks.values():
                at = next_run_at(check.spec, check.state, now)
                if at - now > check.spec.interval:  # the wall clock went back
                    at = now
                if at <= now:
                    due.append((at, iid, check))
                else:
                    next_due = min(next_due, at)
        due.sort(key=lambda item: item[0])
        for due_at, iid, job in due:
            if self._in_flight >= self._workers:
                break
            if iid in self._busy:
                continue
            self._busy.add(iid)
            self._in_flight += 1
            if isinstance(job, GuestCommand):
                self._commands[iid].popleft()
                if not self._commands[iid]:
                    del self._commands[iid]
                self._running.add(job.id)
                self._pool.submit(self._run_command, job)
            else:
                self._pool.submit(self._run_check, iid, job.spec, now, due=due_at)
        return max(0.0, min(self._poll, next_due - now))

    def _free(self, iid: str) -> None:
        with self._cv:
            self._busy.discard(iid)
            self._in_flight -= 1
            self._cv.notify_all()

    # --- one check (on a worker) -------------------------------------------------------

    def _run_check(self, iid: str, spec: CheckSpec, at: float, *, due: float) -> None:
        try:
            self._started(iid, spec, due)
            try:
                context, domain = self._context(iid, at)
            except _Unreadable as exc:
                self._unjudged(iid, spec, at, str(exc))
                return
            self._readable()
            if context.suspended:
                ok, detail = False, context.suspended  # the guest is not asked
            else:
                ok, detail = self._probe(domain, spec)
            self._judged(iid, spec, ok=ok, at=at, detail=detail, context=context)
        except Exception as exc:  # a worker never dies of one check; it runs again later
            LOG.exception("host %s: instance %s: check %s not run", self._host, iid, spec.name)
            self._unjudged(iid, spec, at, f"not run: {exc}", log=False)
        finally:
            self._free(iid)

    def _started(self, iid: str, spec: CheckSpec, due: float) -> None:
        if self._on_run is None:
            return
        try:
            self._on_run(iid, spec, due, self._clock())
        except Exception:  # an observer's bug never stops a check
            LOG.exception(
                "host %s: on_run failed (instance %s, check %s)", self._host, iid, spec.name
            )

    def _context(self, iid: str, at: float) -> tuple[InstanceContext, Any]:
        """The instance's domain (None if not here) and what excuses its checks."""
        domain: Any = None
        state: int | None = None
        reason = 0
        job: int | None = None
        try:
            domain = self._connection().lookupByUUIDString(iid)
            state, reason = (int(v) for v in domain.state()[:2])
            libvirt_id = int(domain.ID())
            if state in (STATE_RUNNING, STATE_BLOCKED):
                job = self._job(domain)
        except Exception as exc:
            if _error_code(exc) != ERR_NO_DOMAIN:
                raise _Unreadable(f"libvirt: {exc}") from exc
            domain, state, libvirt_id = None, None, -1
        suspended = suspension(state, reason, job)
        with self._cv:
            started_at = self._started_at(iid, libvirt_id, suspended == "migrating", at)
        return InstanceContext(started_at, suspended), domain

    def _job(self, domain: Any) -> int | None:
        """The operation of the domain's active job, None if none (libvirt's job stats
        only while its control interface says one runs: they may ask QEMU)."""
        if int(domain.controlInfo()[0]) != CONTROL_JOB:
            return None
        stats = domain.jobStats()
        if int(stats.get("type", JOB_NONE)) == JOB_NONE:
            return None
        return int(stats.get("operation", JOB_OPERATION_UNKNOWN))

    def _started_at(self, iid: str, libvirt_id: int, migrating: bool, at: float) -> float:
        """When the domain last (re)started as far as the agent saw (under the lock)."""
        known = self._domains.get(iid)
        if libvirt_id < 0:  # not running here: its next start is one
            self._domains.pop(iid, None)
            return at if known is None else known.started_at
        if known is None or known.libvirt_id != libvirt_id:
            if known is not None:
                LOG.info(
                    "host %s: instance %s: restarted (libvirt id %d, was %d): checks in "
                    "their grace period",
                    self._host,
                    iid,
                    libvirt_id,
                    known.libvirt_id,
                )
            known = self._domains[iid] = _Domain(libvirt_id, at, migrating)
        elif known.migrating and not migrating:
            known.started_at = at  # a migration ended: the grace period applies again
        known.migrating = migrating
        return known.started_at

    def _probe(self, domain: Any, spec: CheckSpec) -> tuple[bool, str]:
        try:
            if spec.type == CheckType.GUEST_AGENT:
                self._agent.ping(domain, spec.timeout)
                return True, "the guest agent answers"
            result = self._agent.exec(domain, command_for(spec), exec_timeout(spec))
        except ValueError as exc:  # an exec check without a command
            return False, str(exc)
        except GuestAgentError as exc:
            why = "guest agent unresponsive" if exc.unresponsive else "guest agent error"
            return False, f"{why}: {exc}"
        bounded = spec.timeout if spec.type != CheckType.EXEC else None
        return result.ok, outcome(result, bounded=bounded)

    def _judged(
        self,
        iid: str,
        spec: CheckSpec,
        *,
        ok: bool,
        at: float,
        detail: str,
        context: InstanceContext,
    ) -> None:
        with self._cv:
            check = self._plan.get(iid, {}).get(spec.name)
            if check is None:
                return  # no longer planned
            before = check.state
            check.state = after = judge(spec, before, ok=ok, at=at, detail=detail, context=context)
            if after.health != before.health:
                self._report_now = True
                self._cv.notify_all()
        if after.health != before.health:
            LOG.log(
                logging.WARNING if after.health == Health.FAILING else logging.INFO,
                "host %s: instance %s: check %s is %s: %s",
                self._host,
                iid,
                spec.name,
                after.health.value.upper(),
                after.detail,
            )

    def _unjudged(
        self, iid: str, spec: CheckSpec, at: float, why: str, *, log: bool = True
    ) -> None:
        """No verdict (libvirt could not be read): the state stays, the check runs
        again an interval on. Logged once per change of error for the host: libvirtd
        down stops every check at once."""
        with self._cv:
            check = self._plan.get(iid, {}).get(spec.name)
            if check is not None:
                check.state = replace(check.state, last_run_at=at, detail=why)
            log = log and why != self._libvirt_error
            if log:
                self._libvirt_error = why
        if log:
            LOG.warning(
                "host %s: application checks not run (first: instance %s, check %s): %s",
                self._host,
                iid,
                spec.name,
                why,
            )

    def _readable(self) -> None:
        with self._cv:
            if not self._libvirt_error:
                return
            self._libvirt_error = ""
        LOG.info("host %s: libvirt answers again: application checks run", self._host)

    # --- one guest command (on a worker) -----------------------------------------------

    def _run_command(self, command: GuestCommand) -> None:
        iid = command.instance_id
        try:
            LOG.info(
                "host %s: instance %s: running guest command %s: %s",
                self._host,
                iid,
                command.id,
                shlex.join(command.argv),
            )
            ok, detail = self._command(command)
            (LOG.info if ok else LOG.warning)(
                "host %s: instance %s: guest command %s %s: %s",
                self._host,
                iid,
                command.id,
                "succeeded" if ok else "FAILED",
                detail,
            )
            with self._cv:
                self._done[command.id] = CommandDone(command.id, iid, ok, detail[:500])
                self._report_now = True
        except Exception:
            LOG.exception("host %s: instance %s: guest command %s", self._host, iid, command.id)
        finally:
            with self._cv:
                self._running.discard(command.id)
            self._free(iid)

    def _command(self, command: GuestCommand) -> tuple[bool, str]:
        if not command.argv:
            return False, "an empty command"
        try:
            domain = self._connection().lookupByUUIDString(command.instance_id)
        except Exception as exc:
            if _error_code(exc) == ERR_NO_DOMAIN:
                return False, "the instance is not on this host"
            return False, f"libvirt: {exc}"
        try:
            result = self._agent.exec(domain, command.argv, command.timeout)
        except GuestAgentError as exc:
            why = "guest agent unresponsive" if exc.unresponsive else "guest agent error"
            return False, f"{why}: {exc}"
        return result.ok, outcome(result)

    # --- the exchange with the server (the "app-report" thread) ------------------------

    def _exchange_loop(self) -> None:
        delay = 0.0
        last = -math.inf  # clock time of the last attempt
        next_try = -math.inf  # no attempt before (backoff)
        retry = False  # the last attempt failed
        with self._servers.client(self._timeout, self._transport) as client:
            while True:
                with self._cv:
                    if self._stopped:
                        return
                    now = self._clock()
                    interval = self._busy_interval if self._busy_now() else self._report_interval
                    wanted = self._report_now or retry or now - last >= interval or now < last
                    backing_off = now < next_try <= now + self._backoff_max
                    if not wanted or backing_off:
                        until = next_try if wanted else last + interval
                        self._cv.wait(timeout=max(0.0, min(self._poll, until - now)))
                        continue
                    report = self._report(now)
                    self._report_now = False
                last = now
                if self._exchange(client, report):
                    retry, delay = False, 0.0
                else:
                    retry, delay = True, min(self._backoff_max, max(0.5, delay * 2))
                    next_try = now + delay

    def _busy_now(self) -> bool:
        """A check failing or a command under way: the server wants to hear often."""
        return bool(
            self._commands
            or self._running
            or self._done
            or any(
                c.state.health == Health.FAILING
                for checks in self._plan.values()
                for c in checks.values()
            )
        )

    def _report(self, now: float) -> AppReport:
        return AppReport(
            host=self._host,
            at=now,
            instances={
                iid: {name: c.state for name, c in checks.items()}
                for iid, checks in self._plan.items()
            },
            done=tuple(self._done.values()),
        )

    def _exchange(self, client: httpx.Client, report: AppReport) -> bool:
        """Post one report, apply the answer; False (logged) if it did not come back
        valid."""
        key = self.key  # the answer is signed with the key the report was
        answer = self._servers.exchange(client, self._path, encode_app_report(report), key)
        if isinstance(answer, str):
            self._failed(f"report not accepted ({answer})")
            return False
        try:
            decoded = decode_app_answer(
                answer.content,
                answer.headers.get(SIGNATURE_HEADER),
                key,
                host=self._host,
                answer_to=report.at,
            )
        except BadReport as exc:
            self._failed(f"answer of {answer.url} refused ({exc}); the plan is kept")
            return False
        self._apply(decoded, report.done)
        self.exchanges += 1
        if self.last_error:
            LOG.info("host %s: application check reports accepted again", self._host)
            self.last_error = ""
        return True

    def _failed(self, error: str) -> None:
        if error != self.last_error:  # once per change, not per retry
            LOG.warning("host %s: application checks: %s; retrying", self._host, error)
        self.last_error = error

    def _apply(self, answer: AppAnswer, acknowledged: Sequence[CommandDone]) -> None:
        with self._cv:
            for done in acknowledged:
                if self._done.get(done.id) == done:
                    del self._done[done.id]
            self._replan(answer.plan)
            for command in answer.commands:
                if command.id in self._seen:
                    continue  # asked again before its outcome reached the server
                self._seen[command.id] = None
                while len(self._seen) > self._remember:
                    self._seen.popitem(last=False)
                self._commands.setdefault(command.instance_id, collections.deque()).append(command)
            self._cv.notify_all()

    def _replan(self, plan: Mapping[str, Sequence[CheckSpec]]) -> None:
        """The plan replaces the last one (under the lock); a check kept keeps its state."""
        new: dict[str, dict[str, _Check]] = {}
        for iid, specs in plan.items():
            runnable = {s.name: s for s in specs if s.type != CheckType.HEARTBEAT}
            if not runnable:
                continue
            old = self._plan.get(iid, {})
            new[iid] = {
                name: _Check(spec, old[name].state if name in old else CheckState())
                for name, spec in runnable.items()
            }
            if {n: c.spec for n, c in old.items()} != runnable:
                LOG.info(
                    "host %s: instance %s: checks %s",
                    self._host,
                    iid,
                    ", ".join(f"{s.name} ({s.type.value})" for s in runnable.values()),
                )
        for iid in self._plan.keys() - new.keys():
            LOG.info("host %s: instance %s: no checks to run any more", self._host, iid)
            self._domains.pop(iid, None)
        self._plan = new
