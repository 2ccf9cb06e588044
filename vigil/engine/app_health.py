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
from collections.abc import Sequence
from dataclasses import dataclass

from vigil.engine.reconciler import backoff
from vigil.wire.app_checks import LadderSpec, Rung

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
