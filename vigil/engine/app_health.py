"""Application failures (the third layer): the recovery ladder's rule — what to do
about an instance whose application checks fail, a pure function of its declaration,
its episode and the time, as ``vigil.engine.guest`` is for the guest OS. The
declarations and the judging of each check live in ``vigil.wire.app_checks`` (the agent
judges its checks there; the server judges the application heartbeats with the same
rule).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vigil.engine.reconciler import backoff
from vigil.model import AppEpisodeStatus, AppInstance, CheckState, Health
from vigil.wire.app_checks import (
    AppDeclaration,
    CheckType,
    InstanceContext,
    LadderSpec,
    Rung,
    judge_heartbeat,
)

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


# --- the rule over every instance with checks -------------------------------------------

#: The pseudo checks a failure reported from outside sets FAILING: the application's
#: "recover me now", and a Masakari introspective monitor's QEMU_GUEST_AGENT_ERROR. The
#: next recovery action that completes, or closing the failure, clears them.
RESET_CHECK = "reset-requested"
MASAKARI_CHECK = "masakari-guest-agent"
REPORTED_CHECKS = (RESET_CHECK, MASAKARI_CHECK)


@dataclass(frozen=True)
class AppView:
    instance: AppInstance
    declaration: AppDeclaration | None  # None: refused (``instance.error`` says why)
    host_up: bool  # its host is not suspected, failed or being recovered
    busy: bool = False  # a recovery action of it runs on a worker now


@dataclass(frozen=True)
class AppSnapshot:
    now: float
    views: Sequence[AppView]


@dataclass(frozen=True)
class JudgeBeats:
    """Heartbeat checks whose health changed (the server judges those)."""

    instance_id: str
    host: str
    checks: Mapping[str, CheckState]


@dataclass(frozen=True)
class OpenEpisode:
    instance_id: str
    host: str
    mode: Mode
    failing: tuple[str, ...]


@dataclass(frozen=True)
class StartRung:
    instance_id: str
    host: str
    rung: Rung
    attempt: int
    reason: str


@dataclass(frozen=True)
class EscalateEpisode:
    instance_id: str
    host: str
    reason: str


@dataclass(frozen=True)
class ResolveEpisode:
    instance_id: str
    host: str
    reason: str


AppAction = JudgeBeats | OpenEpisode | StartRung | EscalateEpisode | ResolveEpisode


def failing_checks(declaration: AppDeclaration, checks: Mapping[str, CheckState]) -> list[str]:
    """The liveness checks failing now (readiness checks never recover anything), and
    the failures reported from outside (``REPORTED_CHECKS``)."""
    out = [
        spec.name
        for spec in declaration.checks
        if not spec.readiness
        and (state := checks.get(spec.name)) is not None
        and state.health == Health.FAILING
    ]
    out += [
        name
        for name in REPORTED_CHECKS
        if (state := checks.get(name)) is not None and state.health == Health.FAILING
    ]
    return out


def decide_apps(snapshot: AppSnapshot) -> list[AppAction]:
    """For each instance with checks: judge its heartbeat checks, open an episode when
    a liveness check fails, climb its ladder (``decide_ladder``), escalate when it is
    spent, resolve when every check passes. Nothing is done for an instance whose host
    is failing (the host's recovery owns it), nor while one of its actions runs."""
    now = snapshot.now
    actions: list[AppAction] = []
    for view in snapshot.views:
        inst, declaration = view.instance, view.declaration
        if declaration is None:
            continue
        context = InstanceContext(
            inst.started_at, "" if view.host_up else "its host is failing or recovering"
        )
        checks = dict(inst.checks)
        beats: dict[str, CheckState] = {}
        for spec in declaration.checks:
            if spec.type != CheckType.HEARTBEAT:
                continue
            old = checks.get(spec.name, CheckState())
            new = judge_heartbeat(
                spec, old, last_beat_at=inst.last_beat_at, now=now, context=context
            )
            if (new.health, new.failures) != (old.health, old.failures):
                beats[spec.name] = checks[spec.name] = new
        if beats:
            actions.append(JudgeBeats(inst.instance_id, inst.host, beats))
        if not view.host_up or view.busy:
            continue
        failing = failing_checks(declaration, checks)
        episode = inst.episode
        if episode is None or not episode.open:
            if not failing:
                continue
            # Opened, and its first rung decided in the same cycle: the first action is
            # not a loop tick later than the failure.
            mode = Mode(inst.mode)
            actions.append(OpenEpisode(inst.instance_id, inst.host, mode, tuple(failing)))
            ladder = Episode(now)
            decision = decide_ladder(mode, declaration.ladder, ladder, failing, now)
        else:
            ladder = Episode(
                episode.opened_at,
                episode.attempts,
                episode.last_action_at,
                escalated=episode.status == AppEpisodeStatus.ESCALATED,
            )
            decision = decide_ladder(Mode(episode.mode), declaration.ladder, ladder, failing, now)
        if isinstance(decision, Act):
            actions.append(
                StartRung(
                    inst.instance_id, inst.host, decision.rung, decision.attempt, decision.reason
                )
            )
        elif isinstance(decision, EscalateApp):
            actions.append(EscalateEpisode(inst.instance_id, inst.host, decision.reason))
        elif isinstance(decision, Resolved):
            actions.append(ResolveEpisode(inst.instance_id, inst.host, decision.reason))
    return actions
