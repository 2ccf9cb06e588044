"""Host services down (nova-compute, libvirtd): the rule, a pure function.

A host whose nova-compute or libvirtd stopped still runs its guests: QEMU does not need
either to go on. Fencing it would kill healthy instances for a process failure, so vigil
does not; the host keeps its heartbeats and the host engine leaves it alone. What must
not happen is Nova scheduling new instances onto a host that cannot start them, so:

- a service reported down, compute service not held → **disable** it for scheduling,
  with the reason ``vigil: host services down: <names>``. One already disabled by
  someone else (an operator's maintenance) is **left** as it is, and vigil will not
  enable it later;
- every service up again, held → **release**: enable the compute service, but only when
  Nova still shows vigil's reason (an operator who disabled it meanwhile, with a reason
  of their own, keeps it disabled). That is the "by rule" of re-enabling;
- the host is not UP (suspect, failed, under recovery, recovered) or is in maintenance →
  nothing: the host engine or the operator owns the compute service then. A hold left
  over from before a host failure is **forgotten** once the host engine owns the host, so
  that after the operator restores it a service still down is held again.

The store keeps the latest snapshot of each host and the hold (``HostServices``); the
keeper (``vigil.engine.service_keeper``) calls ``decide_services`` each cycle with the
hosts that may need an action and performs the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vigil.model import SERVICE_HOLD_PREFIX, ComputeHold, Host, HostServices, HostState

# The host engine owns the compute service of a host in these states.
_ENGINE_OWNS = frozenset({HostState.FAILED, HostState.RECOVERED})


@dataclass(frozen=True)
class DisableCompute:
    host: str
    down: tuple[str, ...]
    reason: str  # the disabled_reason to set


@dataclass(frozen=True)
class ReleaseCompute:
    host: str
    hold: ComputeHold  # DISABLED: enable if vigil's reason is still there; LEFT: just forget


@dataclass(frozen=True)
class ForgetHold:
    host: str
    why: str


ServiceAction = DisableCompute | ReleaseCompute | ForgetHold


def hold_reason(down: Sequence[str]) -> str:
    return f"{SERVICE_HOLD_PREFIX} {', '.join(down)}"


def may_act(services: HostServices) -> bool:
    """Whether this snapshot may need an action (the keeper reads the host only then):
    a service down, or a hold to release or forget."""
    return bool(services.down) or services.hold is not ComputeHold.NONE


def decide_services(
    reports: Sequence[HostServices], hosts: Mapping[str, Host]
) -> list[ServiceAction]:
    actions: list[ServiceAction] = []
    for services in reports:
        host = hosts.get(services.host)
        if host is None or not may_act(services):
            continue
        if host.state in _ENGINE_OWNS:
            if services.hold is not ComputeHold.NONE:
                actions.append(
                    ForgetHold(host.name, f"the host is {host.state.value}: its recovery owns it")
                )
            continue
        if host.state is not HostState.UP or host.maintenance:
            continue  # suspect: wait; new: no heartbeat yet; maintenance: the operator's
        held = services.hold is not ComputeHold.NONE
        if services.down and not held:
            actions.append(DisableCompute(host.name, services.down, hold_reason(services.down)))
        elif not services.down and held:
            actions.append(ReleaseCompute(host.name, services.hold))
    return actions
