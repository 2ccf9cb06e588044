"""The recovery steps: each performs one step through the drivers and says how it ended.

Every step is idempotent — it looks before it acts — because a step found RUNNING after
a crash is simply run again: a fence of a host already off reads OFF and succeeds; an
evacuation first reads where the instance is, and does not evacuate an instance that has
already left (or is leaving) the failed host. That is what makes "resume after kill -9
without repeating a completed action" hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vigil.clock import Clock
from vigil.config import RecoverySettings
from vigil.drivers import compute as nova
from vigil.drivers.compute import ComputeDriver, Server
from vigil.drivers.errors import DriverError, PermanentError, TemporaryError
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.model import HaPolicy, Host, InstancePolicy, NewStep, Recovery, Segment, Step, StepKind

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Done:
    detail: str
    result: Mapping[str, Any] = field(default_factory=dict)
    new_steps: Sequence[NewStep] = ()


def scheduler_chooses(_host: Host, _segment: Segment) -> tuple[str | None, ...]:
    """Where evacuations go by default: wherever Nova's scheduler puts them."""
    return (None,)


@dataclass(frozen=True)
class StepContext:
    """What a step may use. Sleeping goes through ``wait`` so tests need no real time."""

    compute: ComputeDriver
    fence_devices: Callable[[Host], list[FenceDevice]]
    policies: Callable[[str], InstancePolicy | None]
    settings: RecoverySettings
    clock: Clock
    wait: Callable[[float], None]
    # The destinations an evacuation from a host of a segment tries, in order, one per
    # attempt (None: Nova's scheduler chooses); e.g. Masakari's reserved hosts.
    targets: Callable[[Host, Segment], Sequence[str | None]] = scheduler_chooses


def pick_target(candidates: Sequence[str | None], attempt: int) -> str | None:
    """The destination of an evacuation's ``attempt`` (1, 2, ...): the candidates in
    order, one attempt each, then the last one for every later attempt."""
    if not candidates:
        return None
    return candidates[min(max(attempt, 1), len(candidates)) - 1]


def run_step(
    ctx: StepContext, *, step: Step, recovery: Recovery, host: Host, segment: Segment
) -> Done:
    """Perform one step. Raises TemporaryError (retry later) or PermanentError (give up)."""
    if step.kind == StepKind.FENCE:
        return fence(ctx, host)
    if step.kind == StepKind.FORCE_DOWN:
        return force_down(ctx, host)
    if step.kind == StepKind.LIST_INSTANCES:
        return plan_instances(ctx, host, segment)
    if step.kind == StepKind.EVACUATE:
        return evacuate(ctx, step, recovery, host, segment)
    if step.kind == StepKind.NOTIFY:
        return Done(f"instance {step.instance_name} ({step.instance_id}): owner notified")
    raise PermanentError(f"unknown step kind {step.kind}")


def _poll(ctx: StepContext, read: Callable[[], T], ok: Callable[[T], bool], timeout: float) -> T:
    """Read until ``ok`` or ``timeout``: first after ``poll_interval``, then 1.5 times
    longer each time up to ``poll_interval_max``. A power-off shows at once and is caught
    at once; an evacuation takes seconds, and eight of them polling Nova ten times a
    second each would load the very API that does the work."""
    deadline = ctx.clock.monotonic() + timeout
    interval = ctx.settings.poll_interval
    longest = max(interval, ctx.settings.poll_interval_max)
    value = read()
    while not ok(value):
        if ctx.clock.monotonic() >= deadline:
            return value
        ctx.wait(interval)
        interval = min(longest, interval * 1.5)
        value = read()
    return value


def fence(ctx: StepContext, host: Host) -> Done:
    """Power the host off, level after level, until a status read confirms OFF."""
    devices = ctx.fence_devices(host)
    if not devices:
        raise PermanentError(
            f"host {host.name} has no fencing configured: refusing to recover it unfenced"
        )
    errors: list[str] = []
    for level, device in enumerate(devices, start=1):
        try:
            if device.power_status() != PowerState.OFF:
                device.power_off()
            timeout = device.confirm_within or ctx.settings.fence_confirm_timeout
            state = _poll(ctx, device.power_status, lambda s: s == PowerState.OFF, timeout)
        except DriverError as exc:
            errors.append(f"level {level} ({device.description}): {exc}")
            LOG.warning("host %s: fencing level %d failed: %s", host.name, level, exc)
            continue
        if state == PowerState.OFF:
            return Done(
                f"host {host.name} powered off, confirmed by {device.description}",
                {"level": level, "device": device.description},
            )
        errors.append(
            f"level {level} ({device.description}): power still {state.value} "
            f"{timeout:g}s after power-off"
        )
        LOG.error(
            "host %s: fencing level %d not confirmed: power reads %s", host.name, level, state.value
        )
    # Temporary: a BMC may come back; the step's attempt budget bounds the retries.
    raise TemporaryError(f"host {host.name} not fenced: " + "; ".join(errors))


def force_down(ctx: StepContext, host: Host) -> Done:
    # Forced down before disabled: disabling a compute Nova still believes up makes a
    # synchronous RPC to it that can hang for rpc_response_timeout.
    service = ctx.compute.get_service(host.name)
    if not service.forced_down:
        ctx.compute.set_forced_down(host.name, True)
    if not service.disabled:
        ctx.compute.disable(host.name, f"vigil: host {host.name} failed and was fenced")
    return Done(f"compute service of {host.name} forced down and disabled")


def effective_policy(
    server: Server, override: InstancePolicy | None, segment: Segment
) -> tuple[HaPolicy, int]:
    """Operator override, then the instance's own metadata, then the segment default."""
    if override is not None:
        return override.policy, override.priority
    if server.policy is not None:
        return server.policy, server.priority
    return segment.default_policy, server.priority


def plan_instances(ctx: StepContext, host: Host, segment: Segment) -> Done:
    servers = ctx.compute.list_servers(host.name)
    planned: list[tuple[int, str, NewStep]] = []
    seen: list[dict[str, Any]] = []
    for server in servers:
        policy, priority = effective_policy(server, ctx.policies(server.id), segment)
        seen.append(
            {"id": server.id, "name": server.name, "status": server.status, "policy": policy.value}
        )
        if policy == HaPolicy.OFF:
            continue
        kind = StepKind.EVACUATE if policy == HaPolicy.KEEP_RUNNING else StepKind.NOTIFY
        planned.append((-priority, server.name, NewStep(kind, server.id, server.name, priority)))
    planned.sort(key=lambda p: (p[0], p[1]))
    steps = [p[2] for p in planned]
    evacuations = sum(1 for s in steps if s.kind == StepKind.EVACUATE)
    return Done(
        f"{len(servers)} instances on {host.name}: {evacuations} to evacuate, "
        f"{len(steps) - evacuations} to notify, {len(servers) - len(steps)} unprotected",
        {"instances": seen},
        steps,
    )


def _status_before(recovery: Recovery, instance_id: str) -> str | None:
    listing = recovery.step(StepKind.LIST_INSTANCES)
    if listing is None:
        return None
    for item in listing.result.get("instances", []):
        if item.get("id") == instance_id:
            return str(item.get("status"))
    return None


def _confirm_evacuation(ctx: StepContext, sid: str, label: str, host: Host) -> Server:
    """Poll until the instance landed elsewhere — or Nova gave up (ERROR on the failed host
    with no task: no valid host, a late affinity check), for the step to retry with backoff.

    An instance still REBUILD on the failed host after ``evacuate_stall_timeout`` may be
    an evacuation Nova accepted and lost (its API died before sending the request on):
    Nova is asked then, and every ``evacuate_stall_timeout`` after; once it says it lost
    it, the state is reset and the step fails, so that its next attempt evacuates again.
    Anything else waits out ``evacuate_confirm_timeout``."""

    def landed(s: Server) -> bool:
        return (s.host != host.name and s.status in nova.EVACUABLE) or (
            s.host == host.name and s.status == nova.ERROR and not s.task_state
        )

    settings, began = ctx.settings, ctx.clock.monotonic()
    deadline = began + settings.evacuate_confirm_timeout
    while True:
        # Asked again every evacuate_stall_timeout: right after a conductor comes back,
        # Nova's records cannot tell yet.
        check_at = min(deadline, ctx.clock.monotonic() + settings.evacuate_stall_timeout)
        server = _poll(
            ctx,
            lambda: ctx.compute.poll_server(sid),
            landed,
            max(0.0, check_at - ctx.clock.monotonic()),
        )
        if landed(server) or ctx.clock.monotonic() >= deadline:
            return server
        stuck = server.host == host.name and server.status == nova.REBUILD
        if stuck and ctx.compute.evacuation_started(sid) is False:
            LOG.warning(
                "host %s: %s has been REBUILD for %.1fs and Nova never took the evacuation "
                "up (its API lost the request): resetting it to error to evacuate it again",
                host.name,
                label,
                ctx.clock.monotonic() - began,
            )
            ctx.compute.reset_state(sid)
            raise TemporaryError(f"Nova lost the evacuation of {label}; its state was reset")


def evacuate(
    ctx: StepContext, step: Step, recovery: Recovery, host: Host, segment: Segment | None = None
) -> Done:
    """Move one instance off the fenced host and confirm it runs as it did before."""
    assert step.instance_id is not None
    sid, label = step.instance_id, f"instance {step.instance_name} ({step.instance_id})"
    server = ctx.compute.get_server(sid)
    if server.host == host.name and server.status != nova.REBUILD:
        if server.status not in nova.EVACUABLE or server.task_state:
            task = f" with task {server.task_state}" if server.task_state else ""
            raise TemporaryError(f"{label} is {server.status}{task}: Nova cannot evacuate it yet")
        target = step.target_host  # a consumer's choice wins
        if target is None and segment is not None:
            target = pick_target(ctx.targets(host, segment), step.attempts)
            if target is not None and ctx.compute.get_service(target).disabled:
                # A reserved host is kept disabled in Nova until it is needed.
                ctx.compute.enable(target)
        LOG.info("host %s: evacuating %s%s", host.name, label, f" to {target}" if target else "")
        ctx.compute.evacuate(sid, target)
    else:
        # Already leaving or gone: a previous run of this step asked Nova; never ask twice.
        LOG.info("host %s: %s already evacuating or moved; confirming", host.name, label)

    server = _confirm_evacuation(ctx, sid, label, host)
    if server.host == host.name:
        why = f": {server.fault}" if server.fault else ""
        raise TemporaryError(f"{label} still on {host.name} ({server.status}){why}")
    if server.status == nova.ERROR:
        raise TemporaryError(
            f"{label} is ERROR on {server.host} after evacuation: {server.fault or 'no fault'}"
        )
    before = _status_before(recovery, sid)
    if server.status == nova.SHUTOFF and before == nova.ACTIVE:
        # Nova >= 2.95 leaves evacuated instances stopped; the owner had it running.
        ctx.compute.start(sid)
        server = _poll(
            ctx,
            lambda: ctx.compute.poll_server(sid),
            lambda s: s.status == nova.ACTIVE,
            ctx.settings.evacuate_confirm_timeout,
        )
        if server.status != nova.ACTIVE:
            raise TemporaryError(f"{label} did not start on {server.host}: {server.status}")
    return Done(
        f"{label} {server.status} on {server.host}",
        {"from": host.name, "to": server.host, "status": server.status},
    )
