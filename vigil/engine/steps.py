"""The recovery steps: each performs one step through the drivers and says how it ended.

Every step is idempotent — it looks before it acts — because a step found RUNNING after
a crash is simply run again: a fence of a host already off reads OFF and succeeds; an
evacuation first reads where the instance is, and does not evacuate an instance that has
already left (or is leaving) the failed host. That is what makes "resume after kill -9
without repeating a completed action" hold.

Destinations: vigil names the host of every evacuation itself (Nova validates a named
host through its scheduler's filters), chosen among the segment's hosts vigil hears
(UP) and Nova reports up and enabled — never a host vigil knows is suspect, failed,
fenced or in maintenance, which Nova's own scheduler would still pick until its
``service_down_time`` passes. Only when no host of the segment is UP are hosts vigil
has no agent on (NEW) taken, as Nova reports them.

An evacuation ends as it began: the instance's state is the one recorded *before* the
fence (``record-instances``), because after a fence, a self-fence reset or power that
came back Nova already shows the instance SHUTOFF; one that ran before runs after.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vigil.clock import Clock
from vigil.config import RecoverySettings
from vigil.drivers import compute as nova
from vigil.drivers.compute import ComputeDriver, ComputeService, Server
from vigil.drivers.errors import DriverError, NotFound, PermanentError, TemporaryError
from vigil.drivers.fencing import FenceDevice, PowerState
from vigil.model import (
    HaPolicy,
    Host,
    HostState,
    InstancePolicy,
    NewStep,
    Recovery,
    Segment,
    Step,
    StepKind,
)

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
    # The policy overrides of the given instances (those that have one), in one read.
    policies: Callable[[Collection[str]], Mapping[str, InstancePolicy]]
    settings: RecoverySettings
    clock: Clock
    wait: Callable[[float], None]
    # The destinations an evacuation from a host of a segment tries, in order, one per
    # attempt (None: Nova's scheduler chooses); e.g. Masakari's reserved hosts.
    targets: Callable[[Host, Segment], Sequence[str | None]] = scheduler_chooses
    # The hosts as the engine last saw them (their states), and whether a host has been
    # fenced (its recovery's fence confirmed): read on the worker, never the store.
    hosts: Callable[[], Mapping[str, Host]] = dict
    fenced: Callable[[str], bool] = lambda _host: False
    # Picks one of the candidate destinations; the engine's spreads the evacuations of a
    # recovery (and retries move on) by choosing the host it aimed at least so far.
    spread: Callable[[Sequence[str]], str] = lambda candidates: candidates[0]
    # instance id -> the host vigil last sent it to (one dict shared by the workers)
    aimed: dict[str, str] = field(default_factory=dict)
    # instance id -> the other members of its in-guest cluster (vigil.engine.clusters):
    # no evacuation puts two members of one cluster on one host
    peers: Callable[[str], Collection[str]] = lambda _sid: ()
    # segment -> (the hosts and the service listing it was ranked from, its ranking):
    # the workers of one rack failure rank a segment once per listing, not once per
    # instance (a pass over every host of the cloud each, at 10,000 hosts)
    ranked: dict[str, tuple[object, object, tuple[list[str], ...]]] = field(default_factory=dict)
    # Whether the host has been heard booted again (a new kernel boot id) since it was
    # declared failed; None when it cannot tell (no boot id known).
    booted_again: Callable[[str], bool | None] = lambda _host: None
    # The kernel boot id a host's heartbeats carry now (None: none heard).
    boot_of: Callable[[str], str | None] = lambda _host: None
    # instance id -> (host, that host's boot id, its status, when (wall)) when vigil saw
    # its evacuation land there
    landed: dict[str, tuple[str, str | None, str, float]] = field(default_factory=dict)
    # Called right before every call that changes the cloud (power off, force down,
    # enable, evacuate, reset, start, reboot): raises (``Cancelled``) when this server may
    # no longer act on the host's segment — its epoch went stale while the step ran, or
    # while the process was stopped between recording the step and calling the cloud.
    may_act: Callable[[], None] = lambda: None
    # Nova's compute services for choosing a destination; the engine's is a
    # ``ServiceListing`` shared by its workers.
    services: Callable[[], Mapping[str, ComputeService]] | None = None


class ServiceListing:
    """Nova's compute services as last listed, by host, shared by the workers that
    choose destinations: listed again once the listing is ``max_age`` seconds old, by one
    worker, while the others go on with the listing they have (only the very first
    listing is waited for). A rack failure's 2,000 evacuations would otherwise each list
    every compute service of the cloud (10,000 at scale), loading nova-api for a choice
    that is checked again anyway: on the chosen host's own service (``get_service``) and
    by Nova itself. (bench/scale.py, 10,000 hosts: with every worker waiting for each new
    listing, most of the 128 workers waited on it and Nova rebuilt a handful at a time.)"""

    def __init__(self, compute: ComputeDriver, clock: Clock, max_age: float = 1.0) -> None:
        self._compute = compute
        self._clock = clock
        self._max_age = max_age
        self._cond = threading.Condition()
        self._listed: tuple[float, Mapping[str, ComputeService]] | None = None
        self._listing = False  # a worker is listing

    def __call__(self) -> Mapping[str, ComputeService]:
        with self._cond:
            while True:
                listed = self._listed
                if listed is not None and (
                    self._listing or self._clock.monotonic() - listed[0] < self._max_age
                ):
                    return listed[1]
                if not self._listing:
                    break
                self._cond.wait()  # nothing listed yet: the first listing, being made
            self._listing = True
        started = self._clock.monotonic()
        services: dict[str, ComputeService] | None = None
        try:
            services = {s.host: s for s in self._compute.list_services()}
            return services
        finally:  # a failed listing leaves the last one, and the next caller lists again
            with self._cond:
                if services is not None:
                    self._listed = (started, services)
                self._listing = False
                self._cond.notify_all()


def pick_target(candidates: Sequence[str | None], attempt: int) -> str | None:
    """The destination of an evacuation's ``attempt`` (1, 2, ...): the candidates in
    order, one attempt each, then the last one for every later attempt."""
    if not candidates:
        return None
    return candidates[min(max(attempt, 1), len(candidates)) - 1]


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
                ctx.may_act()
                device.power_off()
            timeout = device.confirm_within or ctx.settings.fence_confirm_timeout
            state = _poll(ctx, device.power_status, lambda s: s == PowerState.OFF, timeout)
        except DriverError as exc:
            errors.append(f"level {level} ({device.description}): {exc}")
            LOG.warning("host %s: fencing level %d failed: %s", host.name, level, exc)
            continue
        if state == PowerState.OFF:
            # When, and whether the host stays off: what landed on it before then is
            # gone (``plan_instances``).
            return Done(
                f"host {host.name} powered off, confirmed by {device.description}",
                {
                    "level": level,
                    "device": device.description,
                    "confirmed_at": ctx.clock.wall(),
                    "resets": device.resets,
                },
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
        ctx.may_act()
        ctx.compute.set_forced_down(host.name, True)
    if not service.disabled:
        ctx.may_act()
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


def _killed_by_fence(
    landed: tuple[str, str | None, str, float] | None, host: Host, held_off_at: float | None
) -> bool:
    """Whether the fence ended the copy of an instance vigil saw land on ``host``: it
    landed before a fence that holds the host off was confirmed (in whichever boot: the
    boot id vigil knew then may lag one the host had just started, fault schedule seed
    267), or in the boot the host ran when it was declared failed."""
    if landed is None or landed[0] != host.name:
        return False
    if held_off_at is not None and landed[3] <= held_off_at:
        return True
    return host.boot_id is not None and landed[1] == host.boot_id


def plan_instances(
    ctx: StepContext, host: Host, segment: Segment, recovery: Recovery | None = None
) -> Done:
    """One step per protected instance: those that were on the host when its failure was
    declared (``record-instances``, when that read succeeded), and those that arrived
    since — an evacuation to it still in flight then — when the fence ended them: the host
    has not been heard booted again, or vigil saw the instance land in the boot the host
    ran at its declaration or before a power-off fence was confirmed (``_killed_by_fence``).
    A fence proves gone what ran before it, not what
    Nova put on the host after a watchdog reset booted it again: such an instance is
    listed and left where it is (it runs there)."""
    servers = ctx.compute.list_servers(host.name)
    overrides = ctx.policies([s.id for s in servers])
    record = recovery.step(StepKind.RECORD_INSTANCES) if recovery is not None else None
    before: set[str] | None = None
    # Unknown (no boot id) counts as booted again: leaving an instance is loud (a warning,
    # the step's result); evacuating one that runs would start it twice.
    rebooted = ctx.booted_again(host.name) is not False
    if record is not None and record.status == "succeeded" and rebooted:
        before = {str(i.get("id")) for i in record.result.get("instances", [])}
    # Each instance's status before the failure, as read before the fence (when that read
    # succeeded): what its evacuation restores.
    recorded: dict[str, str] = {}
    if record is not None and record.status == "succeeded":
        recorded = {
            str(i.get("id")): str(i.get("status")) for i in record.result.get("instances", [])
        }
    fenced = recovery.step(StepKind.FENCE) if recovery is not None else None
    held_off_at: float | None = None
    if fenced is not None and fenced.status == "succeeded" and not fenced.result.get("resets"):
        held_off_at = fenced.result.get("confirmed_at")
    planned: list[tuple[int, str, NewStep]] = []
    seen: list[dict[str, Any]] = []
    late: list[str] = []
    for server in servers:
        policy, priority = effective_policy(server, overrides.get(server.id), segment)
        seen.append(
            {"id": server.id, "name": server.name, "status": server.status, "policy": policy.value}
        )
        if policy == HaPolicy.OFF:
            continue
        killed = _killed_by_fence(ctx.landed.get(server.id), host, held_off_at)
        landed = ctx.landed.get(server.id)
        if killed and landed is not None:
            # Its state before the failure is the one it landed in, not what Nova shows
            # after the fence (the evacuate step restores it).
            seen[-1] = {**seen[-1], "status": landed[2], "listed": server.status}
        if before is not None and server.id not in before and not killed:
            late.append(server.name)
            LOG.warning(
                "host %s: instance %s (%s) arrived after the failure was declared and the "
                "host has booted again since: not moved (it may run there)",
                host.name,
                server.name,
                server.id,
            )
            continue
        kind = StepKind.EVACUATE if policy == HaPolicy.KEEP_RUNNING else StepKind.NOTIFY
        status_before = recorded.get(server.id, str(seen[-1]["status"]))
        step = NewStep(kind, server.id, server.name, priority, status_before=status_before)
        planned.append((-priority, server.name, step))
    planned.sort(key=lambda p: (p[0], p[1]))
    steps = [p[2] for p in planned]
    evacuations = sum(1 for s in steps if s.kind == StepKind.EVACUATE)
    arrived = f", {len(late)} arrived after the failure (left)" if late else ""
    return Done(
        f"{len(servers)} instances on {host.name}: {evacuations} to evacuate, "
        f"{len(steps) - evacuations} to notify, "
        f"{len(servers) - len(steps) - len(late)} unprotected{arrived}",
        {"instances": seen, **({"arrived_after_failure": late} if late else {})},
        steps,
    )


def record_instances(ctx: StepContext, host: Host) -> Done:
    """The host's instances and their states before anything acts on the host."""
    servers = ctx.compute.list_servers(host.name)
    running = sum(1 for s in servers if s.status == nova.ACTIVE)
    return Done(
        f"{len(servers)} instances on {host.name} before the fence, {running} ACTIVE",
        {"instances": [{"id": s.id, "name": s.name, "status": s.status} for s in servers]},
    )


def _status_before(recovery: Recovery, instance_id: str) -> str | None:
    """The instance's state before the failure, for an evacuation step that does not
    carry it (planned before steps had inputs, or a consumer's): recorded before the
    fence when that read succeeded, else as the planning listing (after the fence) saw
    it."""
    for kind in (StepKind.RECORD_INSTANCES, StepKind.LIST_INSTANCES):
        listing = recovery.step(kind)
        if listing is None:
            continue
        for item in listing.result.get("instances", []):
            if item.get("id") == instance_id:
                return str(item.get("status"))
    return None


def destinations(
    ctx: StepContext, host: Host, segment: Segment, avoid: Collection[str] = ()
) -> list[str]:
    """Where vigil may send an instance of ``host``: see the module docstring; none of
    ``avoid``."""
    if ctx.services is not None:
        services = ctx.services()
    else:
        services = {s.host: s for s in ctx.compute.list_services()}

    hosts = ctx.hosts()
    memo = ctx.ranked.get(segment.name)
    if memo is not None and memo[0] is hosts and memo[1] is services:
        ranked = memo[2]  # the same hosts (replaced whole when they change), same listing
    else:
        ranked = _rank(hosts, services, segment.name)
        ctx.ranked[segment.name] = (hosts, services, ranked)
    for names in ranked:
        chosen = [n for n in names if n != host.name and n not in avoid]
        if chosen:
            return chosen
    return []


def _rank(
    hosts: Mapping[str, Host], services: Mapping[str, ComputeService], segment: str
) -> tuple[list[str], ...]:
    """A segment's possible destinations, up hosts first then new ones, each by name:
    not in maintenance, not reserved, and up and enabled in Nova."""

    def nova_takes(name: str) -> bool:
        s = services.get(name)
        return s is not None and s.up and not s.disabled and not s.forced_down

    members = [
        h
        for h in hosts.values()
        if h.segment == segment and not h.maintenance and not h.reserved and nova_takes(h.name)
    ]
    return tuple(
        sorted(h.name for h in members if h.state == state)
        for state in (HostState.UP, HostState.NEW)
    )


def _peer_hosts(ctx: StepContext, sid: str) -> set[str]:
    """The hosts the other members of the instance's cluster are on or being sent to."""
    hosts: set[str] = set()
    for peer in ctx.peers(sid):
        if peer in ctx.aimed:
            hosts.add(ctx.aimed[peer])
        try:
            server = ctx.compute.get_server(peer)
        except NotFound:
            continue
        if server.host:
            hosts.add(server.host)
    return hosts


def _choose(ctx: StepContext, step: Step, host: Host, segment: Segment, label: str) -> str:
    """This attempt's destination: the segment's recovery method's (Masakari's reserved
    hosts), unless vigil knows it is down; else one of ``destinations``, spread. Never
    a host that runs (or is getting) another member of the instance's cluster."""
    known = ctx.hosts()
    avoid = _peer_hosts(ctx, step.instance_id) if step.instance_id else set()
    named = pick_target(ctx.targets(host, segment), step.attempts)
    if named is not None:
        state = known[named].state if named in known else HostState.NEW
        if state in (HostState.NEW, HostState.UP) and named not in avoid:
            return named
        why = "has another member of its cluster" if named in avoid else f"is {state}"
        LOG.warning("host %s: %s: not evacuating to %s, which %s", host.name, label, named, why)
    candidates = destinations(ctx, host, segment, avoid)
    if not candidates:
        raise TemporaryError(
            f"no destination for {label}: no other host of segment {segment.name} is up "
            "and enabled in Nova"
        )
    return ctx.spread(candidates)


def _confirm_evacuation(
    ctx: StepContext, sid: str, label: str, host: Host, target: str | None = None
) -> Server:
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

    def dead_end(s: Server) -> bool:
        # Aimed at a host that failed since and has been fenced: the rebuild it was
        # sent can never run there (and no copy can start there), so it is safe to
        # reset the instance and evacuate it again, elsewhere.
        return (
            s.host == host.name
            and s.status == nova.REBUILD
            and target is not None
            and (ctx.fenced(target))
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
            lambda s: landed(s) or dead_end(s),
            max(0.0, check_at - ctx.clock.monotonic()),
        )
        if dead_end(server):
            LOG.warning(
                "host %s: %s was sent to %s, which failed and was fenced: resetting it to "
                "error to evacuate it again",
                host.name,
                label,
                target,
            )
            ctx.may_act()
            ctx.compute.reset_state(sid)
            raise TemporaryError(f"{label}: its destination {target} failed; its state was reset")
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
            ctx.may_act()
            ctx.compute.reset_state(sid)
            raise TemporaryError(f"Nova lost the evacuation of {label}; its state was reset")


def evacuate(
    ctx: StepContext, step: Step, recovery: Recovery, host: Host, segment: Segment | None = None
) -> Done:
    """Move one instance off the fenced host and confirm it runs as it did before."""
    assert step.instance_id is not None
    sid, label = step.instance_id, f"instance {step.instance_name} ({step.instance_id})"
    server = ctx.compute.get_server(sid)
    # Where this instance was sent: a consumer's choice, else vigil's last one for it
    # (kept in memory: after a restart an evacuation in flight is confirmed without it).
    target = step.target_host or ctx.aimed.get(sid)
    if server.host == host.name and server.status != nova.REBUILD:
        if server.status not in nova.EVACUABLE or server.task_state:
            task = f" with task {server.task_state}" if server.task_state else ""
            raise TemporaryError(f"{label} is {server.status}{task}: Nova cannot evacuate it yet")
        target = step.target_host  # a consumer's choice wins
        if target is None and segment is not None:
            target = _choose(ctx, step, host, segment, label)
            if ctx.compute.get_service(target).disabled:
                # A reserved host is kept disabled in Nova until it is needed.
                ctx.may_act()
                ctx.compute.enable(target)
        ctx.may_act()
        LOG.info("host %s: evacuating %s%s", host.name, label, f" to {target}" if target else "")
        if target is not None:
            ctx.aimed[sid] = target
        try:
            ctx.compute.evacuate(sid, target)
        except PermanentError as exc:
            if step.target_host is not None:
                raise
            # Nova refused vigil's own choice (full, anti-affinity): the next attempt
            # takes the next host.
            raise TemporaryError(f"{label}: Nova refused {target}: {exc}") from exc
    else:
        # Already leaving or gone: a previous run of this step asked Nova; never ask twice.
        LOG.info("host %s: %s already evacuating or moved; confirming", host.name, label)

    server = _confirm_evacuation(ctx, sid, label, host, target)
    if server.host == host.name:
        why = f": {server.fault}" if server.fault else ""
        raise TemporaryError(f"{label} still on {host.name} ({server.status}){why}")
    if server.status == nova.ERROR:
        raise TemporaryError(
            f"{label} is ERROR on {server.host} after evacuation: {server.fault or 'no fault'}"
        )
    # The step's input; steps planned before it was one (migration 0008) read the listings.
    before = step.status_before or _status_before(recovery, sid)
    if server.status == nova.SHUTOFF and before == nova.ACTIVE:
        # Nova >= 2.95 leaves evacuated instances stopped; the owner had it running.
        ctx.may_act()
        ctx.compute.start(sid)
        server = _poll(
            ctx,
            lambda: ctx.compute.poll_server(sid),
            lambda s: s.status == nova.ACTIVE,
            ctx.settings.evacuate_confirm_timeout,
        )
        if server.status != nova.ACTIVE:
            raise TemporaryError(f"{label} did not start on {server.host}: {server.status}")
    if server.host is not None:
        # In which boot of its new host it landed: should that host fail in turn, its
        # fence will have ended this copy too if the boot is the same (``plan_instances``).
        ctx.landed[sid] = (server.host, ctx.boot_of(server.host), server.status, ctx.clock.wall())
    return Done(
        f"{label} {server.status} on {server.host}",
        {"from": host.name, "to": server.host, "status": server.status},
    )


def plan_restarts(ctx: StepContext, host: Host, segment: Segment) -> Done:
    """A host that rebooted: one ``start`` per stopped keep-running instance on it, one
    ``notify`` per stopped notify one; running or unprotected ones are left alone."""
    servers = ctx.compute.list_servers(host.name)
    overrides = ctx.policies([s.id for s in servers])
    steps: list[NewStep] = []
    seen: list[dict[str, Any]] = []
    for server in servers:
        policy, priority = effective_policy(server, overrides.get(server.id), segment)
        seen.append(
            {"id": server.id, "name": server.name, "status": server.status, "policy": policy.value}
        )
        if policy == HaPolicy.OFF or not _stopped(server):
            continue
        kind = StepKind.START if policy == HaPolicy.KEEP_RUNNING else StepKind.NOTIFY
        steps.append(NewStep(kind, server.id, server.name, priority))
    steps.sort(key=lambda n: (-n.priority, n.instance_name or ""))
    starts = sum(1 for n in steps if n.kind == StepKind.START)
    return Done(
        f"{len(servers)} instances on {host.name} after its reboot: {starts} to start, "
        f"{len(steps) - starts} to notify",
        {"instances": seen},
        steps,
    )


def _stopped(server: Server) -> bool:
    """Off: SHUTOFF, or still ACTIVE in Nova while its guest is not running (Nova has not
    synchronised its power state since the host rebooted)."""
    if server.status == nova.SHUTOFF:
        return True
    return (
        server.status == nova.ACTIVE
        and server.power_state is not None
        and server.power_state != nova.POWER_RUNNING
    )


def start_again(ctx: StepContext, step: Step, host: Host) -> Done:
    """Start an instance its host's reboot stopped, and confirm it ACTIVE and running
    (a SHUTOFF one is started; one Nova still calls ACTIVE is hard-rebooted, which starts
    its guest)."""
    assert step.instance_id is not None
    sid, label = step.instance_id, f"instance {step.instance_name} ({step.instance_id})"
    server = ctx.compute.get_server(sid)
    if server.host != host.name:
        return Done(f"{label} is on {server.host} now: left as it is", {"status": server.status})
    if server.task_state:
        raise TemporaryError(f"{label} has task {server.task_state}: not starting it yet")
    if server.status == nova.SHUTOFF:
        LOG.info("host %s: starting %s after the host's reboot", host.name, label)
        ctx.may_act()
        ctx.compute.start(sid)
    elif _stopped(server):
        LOG.info(
            "host %s: hard-rebooting %s: Nova shows it ACTIVE, its guest is off", host.name, label
        )
        ctx.may_act()
        ctx.compute.reboot(sid, hard=True)
    elif server.status != nova.ACTIVE:
        raise TemporaryError(f"{label} is {server.status}: cannot start it yet")
    server = _poll(
        ctx,
        lambda: ctx.compute.poll_server(sid),
        lambda s: s.status == nova.ACTIVE and not s.task_state and not _stopped(s),
        ctx.settings.evacuate_confirm_timeout,
    )
    if server.status != nova.ACTIVE or _stopped(server):
        raise TemporaryError(f"{label} did not start on {host.name}: {server.status}")
    return Done(f"{label} ACTIVE again on {host.name}", {"status": server.status})
