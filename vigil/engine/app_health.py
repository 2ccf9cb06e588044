"""Application failures (the third layer): what an instance's owner declares, and the
rules that judge its checks and climb its recovery ladder — pure functions of the
declarations, the checks' results and the time, as ``vigil.engine.guest`` is for the
guest OS.

Declared per instance, one key per check, in server metadata, image properties or flavor
extra specs (the first that sets a key wins: the owner's choice for this instance, then
the image's author, then the operator's flavor — the precedence of the HA policy)::

    vigil:check:web   = type=http port=8080 path=/healthz interval=10 timeout=2 threshold=3
    vigil:check:db    = type=exec command='pg_isready -q' interval=10 grace=120
    vigil:check:agent = type=guest-agent
    vigil:check:app   = type=heartbeat interval=30
    vigil:check:ready = type=http port=8080 path=/ready readiness=true
    vigil:app_recovery = restart-command='systemctl restart web' restarts=2 reboots=2

Check types: ``guest-agent`` (the QEMU guest agent's ``guest-ping``); ``exec`` (a
command run in the guest through ``guest-exec``: healthy on exit status 0 within the
timeout); ``http`` and ``tcp`` (run inside the guest through the guest agent, since a
compute host usually cannot reach tenant networks); ``heartbeat`` (the application
calls vigil's API at least every ``interval`` seconds, or asks to be recovered now).
Each has ``interval``, ``timeout``, ``threshold`` (consecutive failures that make it
fail) and ``grace`` (seconds after a boot, rebuild or migration during which failures do
not count). A ``readiness=true`` check marks the instance not ready, and is never
recovered.

The ladder (``vigil:app_recovery``, policy ``keep-running``): restart the application
(``restart-command``, through ``guest-exec``) up to ``restarts`` times, then reboot —
soft, then hard — up to ``reboots`` times, then, if allowed (``rebuild=true``), rebuild
once; each rung waits ``settle`` seconds for the checks to pass before the next attempt,
and attempts back off (``backoff``, doubling). When the ladder is spent the failure is
escalated: an event, no more action, until an operator or the owner closes it. Policy
``notify``: events only, the owner acts.

Why a small ``key=value`` grammar of our own: Nova metadata values are strings of at most
255 characters, JSON there is hard to type on ``openstack server set --property`` and
shlex's quoting is what an operator already writes in a shell.
"""

from __future__ import annotations

import enum
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from vigil.engine.reconciler import backoff

CHECK_PREFIX = "vigil:check:"
RECOVERY_KEY = "vigil:app_recovery"
MAX_CHECKS = 8  # per instance: each one is work for the host agent every interval


class CheckType(enum.StrEnum):
    GUEST_AGENT = "guest-agent"
    EXEC = "exec"
    HTTP = "http"
    TCP = "tcp"
    HEARTBEAT = "heartbeat"


class SpecError(ValueError):
    """A declaration vigil refuses; ``field`` names what is wrong (for a 4xx)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class CheckSpec:
    name: str
    type: CheckType
    interval: float = 10.0
    timeout: float = 2.0
    threshold: int = 3
    grace: float = 60.0
    readiness: bool = False
    command: tuple[str, ...] = ()  # exec
    port: int = 0  # http, tcp
    path: str = "/"  # http

    @property
    def declares_failure_after(self) -> float:
        """Seconds from the first failed run to the check failing, at the latest."""
        return self.interval * (self.threshold - 1) + self.timeout


@dataclass(frozen=True)
class LadderSpec:
    restart_command: tuple[str, ...] = ()
    restarts: int = 2  # application restarts (only with a restart_command)
    reboots: int = 2  # the first soft, the others hard
    rebuild: bool = False
    settle: float = 60.0  # seconds a rung waits for the checks to pass
    backoff: float = 10.0  # before the second attempt of a rung; doubles, at most 300 s

    def rungs(self) -> list[Rung]:
        """The ladder, in order: one entry per attempt."""
        out = [Rung.RESTART_APP] * (self.restarts if self.restart_command else 0)
        out += [Rung.SOFT_REBOOT] + [Rung.HARD_REBOOT] * (self.reboots - 1) if self.reboots else []
        out += [Rung.REBUILD] if self.rebuild else []
        return out


class Rung(enum.StrEnum):
    RESTART_APP = "restart-app"
    SOFT_REBOOT = "soft-reboot"
    HARD_REBOOT = "hard-reboot"
    REBUILD = "rebuild"


_BOUNDS: dict[str, tuple[float, float]] = {
    "interval": (1.0, 3600.0),
    "timeout": (0.1, 300.0),
    "threshold": (1, 100),
    "grace": (0.0, 3600.0),
    "port": (1, 65535),
    "restarts": (0, 10),
    "reboots": (0, 10),
    "settle": (5.0, 3600.0),
    "backoff": (0.0, 3600.0),
}


def _words(key: str, value: str) -> dict[str, str]:
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise SpecError(key, f"cannot be read ({exc})") from exc
    out: dict[str, str] = {}
    for word in words:
        name, sep, text = word.partition("=")
        if not sep or not name:
            raise SpecError(key, f"{word!r} is not name=value")
        if name in out:
            raise SpecError(f"{key}.{name}", "given twice")
        out[name] = text
    return out


def _number(key: str, name: str, text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise SpecError(f"{key}.{name}", f"{text!r} is not a number") from None
    low, high = _BOUNDS[name]
    if not low <= value <= high:
        raise SpecError(f"{key}.{name}", f"{value:g} is outside [{low:g}, {high:g}]")
    return value


def _bool(key: str, name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise SpecError(f"{key}.{name}", f"{text!r} is not true or false")


def parse_check(key: str, value: str) -> CheckSpec:
    """One ``vigil:check:NAME`` declaration; ``SpecError`` names the faulty field."""
    name = key[len(CHECK_PREFIX) :]
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise SpecError(key, "a check's name is letters, digits, - and _")
    words = _words(key, value)
    kind = words.pop("type", None)
    if kind is None:
        raise SpecError(f"{key}.type", f"missing (one of {', '.join(CheckType)})")
    try:
        check_type = CheckType(kind)
    except ValueError:
        raise SpecError(f"{key}.type", f"{kind!r} is not one of {', '.join(CheckType)}") from None
    spec = CheckSpec(name, check_type)
    allowed = {"interval", "timeout", "threshold", "grace", "readiness"}
    allowed |= {
        CheckType.EXEC: {"command"},
        CheckType.HTTP: {"port", "path"},
        CheckType.TCP: {"port"},
    }.get(check_type, set())
    changes: dict[str, object] = {}
    for option, text in words.items():
        if option not in allowed:
            raise SpecError(f"{key}.{option}", f"not an option of a {check_type} check")
        if option in ("interval", "timeout", "grace"):
            changes[option] = _number(key, option, text, float)
        elif option in ("threshold", "port"):
            changes[option] = int(_number(key, option, text, int))
        elif option == "readiness":
            changes[option] = _bool(key, option, text)
        elif option == "command":
            changes[option] = tuple(shlex.split(text))
        elif option == "path":
            if not text.startswith("/"):
                raise SpecError(f"{key}.path", "must start with /")
            changes[option] = text
    spec = replace(spec, **changes)  # type: ignore[arg-type]
    if check_type == CheckType.EXEC and not spec.command:
        raise SpecError(f"{key}.command", "an exec check needs a command")
    if check_type in (CheckType.HTTP, CheckType.TCP) and not spec.port:
        raise SpecError(f"{key}.port", f"a {check_type} check needs a port")
    if spec.timeout >= spec.interval:
        raise SpecError(f"{key}.timeout", "must be shorter than the interval")
    return spec


def parse_ladder(value: str) -> LadderSpec:
    words = _words(RECOVERY_KEY, value)
    changes: dict[str, object] = {}
    for option, text in words.items():
        if option == "restart-command":
            changes["restart_command"] = tuple(shlex.split(text))
        elif option in ("restarts", "reboots"):
            changes[option] = int(_number(RECOVERY_KEY, option, text, int))
        elif option in ("settle", "backoff"):
            changes[option] = _number(RECOVERY_KEY, option, text, float)
        elif option == "rebuild":
            changes[option] = _bool(RECOVERY_KEY, option, text)
        else:
            raise SpecError(f"{RECOVERY_KEY}.{option}", "not a recovery option")
    return replace(LadderSpec(), **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AppDeclaration:
    checks: tuple[CheckSpec, ...] = ()
    ladder: LadderSpec = field(default_factory=LadderSpec)


def declaration_from(*sources: Mapping[str, object]) -> AppDeclaration:
    """The checks and ladder of an instance from its server metadata, image properties
    and flavor extra specs, in that order: each key from the first source that sets it.
    Raises ``SpecError`` for the first faulty one (a declaration is used whole or not)."""
    merged: dict[str, str] = {}
    for source in sources:
        for key, value in source.items():
            if (key.startswith(CHECK_PREFIX) or key == RECOVERY_KEY) and key not in merged:
                merged[key] = str(value)
    checks = tuple(parse_check(k, v) for k, v in sorted(merged.items()) if k != RECOVERY_KEY)
    if len(checks) > MAX_CHECKS:
        raise SpecError(CHECK_PREFIX + "*", f"{len(checks)} checks, at most {MAX_CHECKS}")
    ladder = parse_ladder(merged[RECOVERY_KEY]) if RECOVERY_KEY in merged else LadderSpec()
    return AppDeclaration(checks, ladder)


# --- judging a check --------------------------------------------------------------------


class Health(enum.StrEnum):
    UNKNOWN = "unknown"  # no result yet, or in its grace period
    HEALTHY = "healthy"
    FAILING = "failing"  # failed threshold times in a row
    SUSPENDED = "suspended"  # paused, migrating, rebuilding, or its host failing


@dataclass(frozen=True)
class CheckState:
    health: Health = Health.UNKNOWN
    failures: int = 0  # consecutive failed runs counted
    last_run_at: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class InstanceContext:
    """What suspends or excuses a check: the instance's state and its last (re)start."""

    started_at: float  # the last boot, rebuild or migration's end (wall clock)
    suspended: str = ""  # why checks are suspended now ("" if not): paused, migrating, ...


def next_run_at(spec: CheckSpec, state: CheckState, now: float) -> float:
    """When the check runs next: at once the first time, else an interval after the
    last run (a late run is not made up by running twice)."""
    return now if state.last_run_at is None else state.last_run_at + spec.interval


def judge(
    spec: CheckSpec,
    state: CheckState,
    *,
    ok: bool,
    at: float,
    detail: str,
    context: InstanceContext,
) -> CheckState:
    """The check's state after one run's result (``ok``) at ``at``. Suspended instances
    and failures within ``grace`` of the last (re)start do not count; ``threshold``
    consecutive failures make it FAILING; one success makes it HEALTHY again."""
    if context.suspended:
        return CheckState(Health.SUSPENDED, 0, at, context.suspended)
    if ok:
        return CheckState(Health.HEALTHY, 0, at, detail)
    if at - context.started_at < spec.grace:
        return CheckState(Health.UNKNOWN, 0, at, f"in its grace period: {detail}")
    failures = state.failures + 1
    health = Health.FAILING if failures >= spec.threshold else state.health
    if health == Health.SUSPENDED:
        health = Health.UNKNOWN
    return CheckState(health, failures, at, detail)


# --- the ladder -------------------------------------------------------------------------


class Mode(enum.StrEnum):
    KEEP_RUNNING = "keep-running"
    NOTIFY = "notify"


@dataclass(frozen=True)
class Episode:
    """One application failure of an instance, from its first FAILING check until all
    its checks pass again (resolved) or the ladder is spent (escalated)."""

    opened_at: float
    attempts: int = 0  # ladder attempts made so far (an index into ``rungs()``)
    last_action_at: float | None = None
    escalated: bool = False


@dataclass(frozen=True)
class Act:
    rung: Rung
    attempt: int  # 1-based, over the whole ladder
    reason: str


@dataclass(frozen=True)
class Wait:
    until: float
    reason: str


@dataclass(frozen=True)
class EscalateApp:
    reason: str


@dataclass(frozen=True)
class Tell:
    reason: str


@dataclass(frozen=True)
class Resolved:
    reason: str


LadderDecision = Act | Wait | EscalateApp | Tell | Resolved


def decide_ladder(
    mode: Mode,
    ladder: LadderSpec,
    episode: Episode,
    failing: Sequence[str],
    now: float,
) -> LadderDecision:
    """What to do about an open episode, given the liveness checks failing now
    (``failing``, by name; readiness checks never recover anything)."""
    if not failing:
        return Resolved("every check passes")
    if episode.escalated:
        return Wait(float("inf"), "escalated: waiting for an operator or the owner")
    if mode == Mode.NOTIFY:
        return Tell(f"failing: {', '.join(failing)}")
    rungs = ladder.rungs()
    if episode.last_action_at is not None:
        # The last rung gets ``settle`` seconds to work, then a backoff before the next
        # attempt (doubling with each attempt of the ladder).
        ready_at = episode.last_action_at + ladder.settle
        ready_at += backoff(episode.attempts - 1, base=ladder.backoff, cap=300.0)
        if now < ready_at:
            return Wait(ready_at, f"{rungs[episode.attempts - 1]} given time to work")
    if episode.attempts >= len(rungs):
        spent = ", ".join(f"{n} {r}" for r, n in Counter(rungs).items()) or "no rung declared"
        return EscalateApp(f"ladder spent ({spent}); still failing: {', '.join(failing)}")
    rung = rungs[episode.attempts]
    return Act(rung, episode.attempts + 1, f"failing: {', '.join(failing)}")
