"""Application checks (issue 17): what an instance's owner declares, and how one
check's results are judged — shared by vigil-server, which reads the declarations and
plans the checks, and vigil-agent, which runs them next to the guest and judges them;
with the signed exchange between the two (``POST /v1/agents/{host}/app``).
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
import hmac
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from vigil.model import CheckState, Health
from vigil.wire.reports import BadReport, sign, verify_signature

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
        return _to(state, Health.SUSPENDED, 0, at, context.suspended)
    if ok:
        return _to(state, Health.HEALTHY, 0, at, detail)
    if at - context.started_at < spec.grace:
        return _to(state, Health.UNKNOWN, 0, at, f"in its grace period: {detail}")
    failures = state.failures + 1
    health = Health.FAILING if failures >= spec.threshold else state.health
    if health == Health.SUSPENDED:
        health = Health.UNKNOWN
    return _to(state, health, failures, at, detail)


def _to(state: CheckState, health: Health, failures: int, at: float, detail: str) -> CheckState:
    since = state.since if health == state.health and state.since is not None else at
    return CheckState(health, failures, at, detail[:500], since)


def judge_heartbeat(
    spec: CheckSpec,
    state: CheckState,
    *,
    last_beat_at: float | None,
    now: float,
    context: InstanceContext,
) -> CheckState:
    """A ``heartbeat`` check (the application calls vigil's API) judged at ``now``: it
    fails when no beat came for ``threshold`` intervals (counted from the last beat, or
    from the last (re)start while none came), never within ``grace`` of a (re)start."""
    if context.suspended:
        return _to(state, Health.SUSPENDED, 0, now, context.suspended)
    beat = last_beat_at if last_beat_at is not None and last_beat_at >= context.started_at else None
    since = beat if beat is not None else context.started_at + spec.grace
    if now < since:
        return _to(state, Health.UNKNOWN, 0, now, "in its grace period: no beat yet")
    missed = int((now - since) // spec.interval)
    if missed == 0:
        if beat is None:
            return _to(state, Health.UNKNOWN, 0, now, "no beat yet")
        return _to(state, Health.HEALTHY, 0, now, f"last beat {now - beat:.1f}s ago")
    detail = f"no beat for {now - since:.0f}s (every {spec.interval:g}s expected)"
    health = Health.FAILING if missed >= spec.threshold else state.health
    if health == Health.SUSPENDED:
        health = Health.UNKNOWN
    return _to(state, health, missed, now, detail)


# --- the exchange between vigil-agent and vigil-server ----------------------------------
#
# The agent posts the state of the checks it runs, signed like every report, to
# ``POST /v1/agents/{host}/app`` — at start, when a check changes health and every
# ``report_every`` seconds (a level: the latest wins) — with the outcome of the guest
# commands it ran. The server answers, signed with the same key and bound to the report
# (``answer_to``: the report's ``at``), with the checks the agent is to run on each of
# its instances (the plan) and the guest commands the ladder asks for: an agent runs
# commands in tenants' guests, so it runs only what the server it reports to signed.

MAX_INSTANCES = 1000  # on one host
MAX_ANSWER = 1024 * 1024


@dataclass(frozen=True)
class GuestCommand:
    """A command the server asks the agent to run inside a guest (the ladder's
    application restart); ``id`` makes running it once per request."""

    id: str
    instance_id: str
    argv: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class CommandDone:
    id: str
    instance_id: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class AppReport:
    host: str
    at: float
    instances: Mapping[str, Mapping[str, CheckState]]  # instance -> check -> state
    done: tuple[CommandDone, ...] = ()


@dataclass(frozen=True)
class AppAnswer:
    plan: Mapping[str, tuple[CheckSpec, ...]]  # instance -> the checks its agent runs
    commands: tuple[GuestCommand, ...] = ()


def spec_json(spec: CheckSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "type": spec.type.value,
        "interval": spec.interval,
        "timeout": spec.timeout,
        "threshold": spec.threshold,
        "grace": spec.grace,
        "readiness": spec.readiness,
        "command": list(spec.command),
        "port": spec.port,
        "path": spec.path,
    }


def spec_of(data: Mapping[str, Any]) -> CheckSpec:
    """A check from ``spec_json``'s form, held to the bounds of a declaration."""
    key = CHECK_PREFIX + str(data["name"])
    spec = CheckSpec(
        name=str(data["name"]),
        type=CheckType(data["type"]),
        interval=_number(key, "interval", str(data["interval"]), float),
        timeout=_number(key, "timeout", str(data["timeout"]), float),
        threshold=int(_number(key, "threshold", str(data["threshold"]), int)),
        grace=_number(key, "grace", str(data["grace"]), float),
        readiness=bool(data["readiness"]),
        command=tuple(str(a) for a in data.get("command") or ()),
        port=int(data.get("port") or 0),
        path=str(data.get("path") or "/"),
    )
    if not 0 <= spec.port <= 65535:
        raise SpecError(f"{key}.port", f"{spec.port} is outside [0, 65535]")
    return spec


def state_json(state: CheckState) -> dict[str, Any]:
    return {
        "health": state.health.value,
        "failures": state.failures,
        "last_run_at": state.last_run_at,
        "detail": state.detail,
        "since": state.since,
    }


def state_of(data: Mapping[str, Any]) -> CheckState:
    def time_or_none(value: Any) -> float | None:
        return None if value is None else float(value)

    return CheckState(
        health=Health(data["health"]),
        failures=int(data["failures"]),
        last_run_at=time_or_none(data.get("last_run_at")),
        detail=str(data.get("detail") or "")[:500],
        since=time_or_none(data.get("since")),
    )


def _dump(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def encode_app_report(report: AppReport) -> bytes:
    return _dump(
        {
            "host": report.host,
            "at": report.at,
            "instances": {
                iid: {name: state_json(s) for name, s in checks.items()}
                for iid, checks in report.instances.items()
            },
            "done": [
                {"id": d.id, "instance_id": d.instance_id, "ok": d.ok, "detail": d.detail}
                for d in report.done
            ],
        }
    )


def decode_app_report(body: bytes, signature: str | None, key: bytes, *, host: str) -> AppReport:
    """Verify and parse an agent's check states; raises ``BadReport``."""
    verify_signature(body, signature, key)
    try:
        data: Any = json.loads(body)
        if data["host"] != host:
            raise BadReport(f"report for host {data['host']!r} posted as {host!r}")
        items = data["instances"]
        if not isinstance(items, dict) or len(items) > MAX_INSTANCES:
            raise BadReport(
                f"malformed report: instances must be an object of at most {MAX_INSTANCES}"
            )
        instances: dict[str, dict[str, CheckState]] = {}
        for iid, checks in items.items():
            if not isinstance(checks, dict) or len(checks) > MAX_CHECKS:
                raise BadReport(f"malformed report: instances.{iid}: at most {MAX_CHECKS} checks")
            instances[str(iid)] = {str(n): state_of(s) for n, s in checks.items()}
        done = tuple(
            CommandDone(str(d["id"]), str(d["instance_id"]), bool(d["ok"]), str(d["detail"])[:500])
            for d in data.get("done") or ()
        )
        return AppReport(host, float(data["at"]), instances, done)
    except BadReport:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadReport(f"malformed report: {exc}") from exc


def encode_app_answer(host: str, answer_to: float, answer: AppAnswer) -> bytes:
    return _dump(
        {
            "host": host,
            "answer_to": answer_to,
            "plan": {iid: [spec_json(s) for s in specs] for iid, specs in answer.plan.items()},
            "commands": [
                {
                    "id": c.id,
                    "instance_id": c.instance_id,
                    "argv": list(c.argv),
                    "timeout": c.timeout,
                }
                for c in answer.commands
            ],
        }
    )


def decode_app_answer(
    body: bytes, signature: str | None, key: bytes, *, host: str, answer_to: float
) -> AppAnswer:
    """Verify and parse the server's answer to the report sent at ``answer_to``; raises
    ``BadReport`` (an answer not signed with the agent key, or to another report)."""
    if len(body) > MAX_ANSWER:
        raise BadReport("answer too large")
    if signature is None or not key or not hmac.compare_digest(sign(body, key), signature.strip()):
        raise BadReport("answer not signed with the agent key")
    try:
        data: Any = json.loads(body)
        if data["host"] != host or data["answer_to"] != answer_to:
            raise BadReport("answer to another report")
        plan = {str(iid): tuple(spec_of(s) for s in specs) for iid, specs in data["plan"].items()}
        commands = tuple(
            GuestCommand(
                str(c["id"]), str(c["instance_id"]), tuple(map(str, c["argv"])), float(c["timeout"])
            )
            for c in data.get("commands") or ()
        )
        return AppAnswer(plan, commands)
    except BadReport:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadReport(f"malformed answer: {exc}") from exc
