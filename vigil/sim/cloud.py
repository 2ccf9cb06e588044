"""SimCloud: a simulated OpenStack cloud in which vigil's recoveries can be run and broken.

It holds hypervisor hosts (each with a BMC, a vigil agent and a nova-compute service),
instances, server groups, and a Nova API that enforces the rules vigil depends on
(design brief, section 4):

- a compute service is *up* while its nova-compute reported within ``service_down_time``
  and it is not forced down, so a host that just lost power still reads "up" for a minute;
- evacuate is refused with ``Conflict("ComputeServiceInUse ...")`` while the source service
  is up, and for instances not ACTIVE/SHUTOFF/ERROR or with a task in progress;
- evacuate is asynchronous: REBUILD at once, ACTIVE on the destination later (SHUTOFF with
  ``evacuate_leaves_stopped``, like microversion >= 2.95); without a valid destination the
  request is still accepted and the instance ends ERROR on its source host;
- anti-affinity is checked by the scheduler against members already placed and again on
  arrival (Nova's late check), so members evacuated in parallel can race and end ERROR;
- ``lose_evacuations`` makes the next evacuations accepted and lost (REBUILD for ever, as
  when Nova's API dies before sending the request on) until ``reset_state``;
- with ``dead_destination_hangs``, an evacuation whose destination has no power when the
  rebuild is due (Nova's scheduler picked a host whose service still read "up") stays
  REBUILD with task ``rebuilding``, as in Nova: the conductor casts the rebuild to the
  dead compute's queue, where it waits. When that host is back its nova-compute carries
  the rebuild out (the instance lands there) — unless the instance was reset meanwhile
  (Nova's expected task state refuses a stale rebuild). Without it (the default, older
  tests) such an evacuation ends ERROR on the source host.
- ``SimLatency.boot``: a host whose power comes back boots for that long before its
  agent and nova-compute run (then nova-compute finds its instances off).

Errors raised by the Nova and BMC methods, chosen where Nova's HTTP status would not tell
vigil whether to retry:

- ``NotFound``: unknown instance, host or target host (Nova: 404); also ``list_servers`` of
  an unknown host, where Nova would return an empty list -- a typo must not read as "no
  instances to evacuate".
- ``Conflict``: source service in use (Nova: 400 ComputeServiceInUse), wrong vm/task state
  (409), action on an instance whose compute service is down (409 ServiceUnavailable).
- ``PermanentError``: evacuate to the source host (400), or to a named target that is down,
  disabled, forced down, full or would break anti-affinity (Nova would accept and fail
  asynchronously with "No valid host"; the sim refuses at once so tests see why).
- ``TemporaryError``: an unreachable BMC, after ``SimLatency.bmc_timeout``.

Time: every change that takes time (a BMC power-off taking effect, an evacuation landing, a
stop completing, Nova noticing a silent compute) is a pending operation with a due time on
``clock.monotonic()``, applied lazily, in due order, at the start of every call. Nothing runs
in the background, and with a ``FakeClock`` every outcome is deterministic. Only
``SimLatency.api_call``, ``bmc_timeout`` and ``rpc_timeout`` block the caller (through the
injected ``sleep``, outside the lock).

Safety accounting: for each instance the set of hosts on which a copy runs (ACTIVE there
on a powered host; isolated and hung hosts still run theirs). Evacuation never stops the
source copy, power loss ends every copy on the host, and any instance that ever ran on two
hosts at once is recorded in ``double_running()``: the tests of "never run a VM twice".
Nova's ``power_state`` of an instance (1 running, 4 shutdown) is what its host's
nova-compute last reported: the truth while that compute works, frozen while it is
isolated or hung -- so an instance of a host reset while cut off reads ACTIVE and running
until the host reconnects, then ACTIVE with power_state shutdown (Nova's periodic sync,
which would stop it, is not simulated).
When power returns, nothing is restarted: instances still placed on the host read SHUTOFF
(after ``SimLatency.power_sync``; ACTIVE with power_state shutdown until then, as in Nova),
and those evacuated away stay away (a restarted nova-compute destroys its copies of them).
A host that reconnects or unfreezes, on the other hand, keeps running what it ran -- Nova
cleans up only when nova-compute restarts -- which is why vigil must fence, not hope.

Ground-truth records, for checkers that must not trust vigil's own account
(``vigil.sim.schedules``): every accepted ``evacuate`` (``evacuations()``: time, source,
destination and the destination's condition then) and every power-off request through a
BMC or watchdog reset (``power_offs()``: time, cause and the host's condition then). A
host's condition says whether it was *healthy* -- powered, not hung, not isolated, its
agent running, not cut from vigil-server -- and since when without a break, so a checker
can tell "fenced while it was plainly working" from "fenced just after it came back".
``power_losses()`` lists when each host lost power, whatever the cause.
``host_can_heartbeat`` is false for a host cut off from vigil-server: its datagrams are
lost on the way.

Nova's concurrency limit (``max_concurrent_evacuations``; 0, the default: none): Nova
accepts every evacuate at once (HTTP 202; the instance reads REBUILD, task
``rebuilding``, its destination claimed), but only that many rebuilds run at a time --
nova-compute's ``max_concurrent_builds`` and the conductor, summed over the cloud here
(one cloud-wide limit). Those beyond wait in arrival order, and an evacuation's
``SimLatency.evacuate`` starts only when it gets a slot; a slot is held from then until
the rebuild ends (landed, ERROR, or refused as stale), waiting for a hung or dead
destination included. An evacuation with no valid host, or lost (``lose_evacuations``),
takes no slot; one still waiting when its instance is reset (``reset_state``) is
dropped (Nova's expected task state would refuse it). ``evacuations_in_progress()``
says how many run and how many wait.

Limits: capacity is a count of instances (placement claims an in-flight evacuation's
destination at once); the only server group policies are ``anti-affinity`` (enforced) and
``soft-anti-affinity`` (not enforced); an instance stays on its source host until its
evacuation lands (Nova moves ``host`` a little earlier); an operation whose host is hung or
isolated waits for it, one whose host loses power fails (evacuation: ERROR; start/stop/
reboot: task cleared, status unchanged). Not simulated: live migration, resize, boot and
delete through the API, cells, projects, quotas.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from vigil.clock import Clock
from vigil.drivers.compute import (
    ACTIVE,
    CLUSTER_KEY,
    ERROR,
    EVACUABLE,
    POLICY_KEY,
    POWER_RUNNING,
    PRIORITY_KEY,
    REBUILD,
    SHUTOFF,
    ComputeService,
    Server,
    app_keys_of,
    ha_policy_from_metadata,
)
from vigil.drivers.errors import Conflict, NotFound, PermanentError, TemporaryError
from vigil.drivers.fencing import PowerState
from vigil.model import HaPolicy

if TYPE_CHECKING:
    from vigil.sim.api import CloudApi

POWER_SHUTDOWN = 4  # Nova's power_state of a guest that is not running

HARD_REBOOT = "HARD_REBOOT"
REBOOT = "REBOOT"

# The project of an instance placed without one: Nova's instances always have a project.
DEFAULT_PROJECT = "demo"
ANTI_AFFINITY = "anti-affinity"
SOFT_ANTI_AFFINITY = "soft-anti-affinity"


@dataclass(frozen=True)
class SimLatency:
    """How long simulated things take, in seconds.

    ``api_call``, ``bmc_timeout`` and ``rpc_timeout`` block the caller (real sleeps); the
    others are due times on the cloud's clock. ``jitter`` is the +/- fraction applied to
    the clock-based delays.
    """

    api_call: float = 0.01  # every Nova and BMC call
    evacuate: float = 0.4  # accepted evacuate -> instance landed on its destination
    power_off: float = 0.2  # BMC power-off (or power-on) request -> power reads changed
    action: float = 0.05  # start, stop, reboot; also a scheduling failure turning ERROR
    bmc_timeout: float = 0.5  # an unreachable BMC fails after this
    # Disabling/enabling a compute that Nova believes up but that does not answer waits
    # for the RPC to time out (rpc_response_timeout, 60 s in Nova): force down first.
    rpc_timeout: float = 1.0
    # Power back on -> the host has booted: its agent and nova-compute run again (then
    # nova-compute finds its instances off). 0: at once.
    boot: float = 0.0
    # After a host booted, how long Nova keeps its instances ACTIVE (power_state shutdown)
    # before its power sync records them SHUTOFF (10 min in Nova). 0: at once.
    power_sync: float = 0.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        for name in (
            "api_call",
            "evacuate",
            "power_off",
            "action",
            "bmc_timeout",
            "rpc_timeout",
            "boot",
            "power_sync",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"SimLatency.{name} must not be negative")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("SimLatency.jitter must be in [0, 1)")

    @classmethod
    def zero(cls) -> SimLatency:
        """Everything immediate and nothing sleeps: for unit tests on a FakeClock."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, boot=0.0, power_sync=0.0, jitter=0.0)


@dataclass(frozen=True)
class SimInstance:
    """A test's view of one instance, including what Nova cannot see (where copies run)."""

    id: str
    name: str
    host: str
    status: str
    task_state: str | None
    metadata: Mapping[str, str]
    server_group: str | None
    fault: str | None
    running_on: frozenset[str]


@dataclass(frozen=True)
class HostCondition:
    """A host's faults at one moment (ground truth, not what vigil or Nova believe)."""

    powered: bool
    hung: bool
    isolated: bool
    agent_running: bool
    cut_from_server: bool
    healthy_since: float | None  # continuously healthy since then; None: faulty now
    compute_down_since: float | None  # nova-compute stopped working then; None: works

    @property
    def healthy(self) -> bool:
        """Nothing wrong with it: powered, running, reaching vigil-server and Nova."""
        return self.healthy_since is not None

    @property
    def compute_works(self) -> bool:
        return self.compute_down_since is None

    def describe(self) -> str:
        if self.healthy:
            return "healthy"
        if not self.powered:
            return "powered off"
        faults = [
            name
            for name, on in (
                ("hung", self.hung),
                ("isolated", self.isolated),
                ("agent down", not self.agent_running),
                ("cut from server", self.cut_from_server),
            )
            if on
        ]
        return ", ".join(faults)


@dataclass(frozen=True)
class PowerOffRecord:
    """A BMC power-off request (``cause`` "bmc"; ``effective`` unless the BMC lied or
    the host was already off) or a watchdog reset (``cause`` "watchdog")."""

    at: float
    host: str
    cause: Literal["bmc", "watchdog"]
    effective: bool
    condition: HostCondition


@dataclass(frozen=True)
class EvacuationRecord:
    """An evacuate call Nova accepted; ``dest`` None when no valid host was found."""

    at: float
    instance: str
    source: str
    dest: str | None
    named: bool  # the caller named the destination; else Nova's scheduler chose it
    lost: bool  # lose_evacuations swallowed it
    dest_condition: HostCondition | None


@dataclass(eq=False)
class _Host:
    name: str
    capacity: int
    powered: bool = True
    hung: bool = False
    isolated: bool = False
    agent_running: bool = True
    bmc_unreachable: bool = False
    bmc_lies: bool = False
    forced_down: bool = False
    disabled: bool = False
    disabled_reason: str = ""
    stopped_reporting_at: float | None = None  # None: nova-compute is reporting
    pending_power: _Op | None = None
    boots: int = 1  # how many times the host has booted: its kernel boot id changes each time
    booting: bool = False  # powered on, its agent and nova-compute not running yet
    cut_from_server: bool = False  # the control network to vigil-server is cut; peers reachable
    healthy_since: float | None = 0.0  # see HostCondition

    @property
    def compute_works(self) -> bool:
        """nova-compute runs and reaches Nova: it reports and carries out requests."""
        return self.powered and not self.booting and not self.hung and not self.isolated

    @property
    def healthy(self) -> bool:
        return self.compute_works and self.agent_running and not self.cut_from_server

    def condition(self) -> HostCondition:
        return HostCondition(
            powered=self.powered,
            hung=self.hung,
            isolated=self.isolated,
            agent_running=self.agent_running,
            cut_from_server=self.cut_from_server,
            healthy_since=self.healthy_since,
            compute_down_since=self.stopped_reporting_at,
        )


@dataclass(eq=False)
class _Instance:
    id: str
    name: str
    host: str
    status: str
    metadata: dict[str, str]
    group: str | None
    task_state: str | None = None
    fault: str | None = None
    running_on: set[str] = field(default_factory=set)
    power_state: int = POWER_SHUTDOWN  # Nova's, as its host's nova-compute last reported
    project_id: str = DEFAULT_PROJECT


_OpKind = Literal[
    "evacuate",
    "start",
    "stop",
    "reboot",
    "rebuild",
    "power_off",
    "power_on",
    "boot",
    "power_sync",
]


@dataclass(eq=False)
class _Op:
    due: float
    seq: int
    kind: _OpKind
    subject: str  # instance id, or host name for power operations
    actor: str | None  # host whose nova-compute must carry it out; None: BMC or conductor
    dest: str | None = None  # evacuate: chosen destination; None means no valid host
    status_before: str = ""
    done: bool = False
    slot: bool = False  # evacuate: holds one of Nova's concurrent rebuild slots


class SimCloud:
    """A simulated cloud; thread-safe (one lock). See the module docstring for the rules."""

    def __init__(
        self,
        clock: Clock,
        *,
        latency: SimLatency | None = None,
        service_down_time: float = 60.0,
        evacuate_leaves_stopped: bool = False,
        dead_destination_hangs: bool = False,
        max_concurrent_evacuations: int = 0,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_concurrent_evacuations < 0:
            raise ValueError("max_concurrent_evacuations must not be negative (0: no limit)")
        self._clock = clock
        self._latency = latency if latency is not None else SimLatency()
        self._service_down_time = service_down_time
        self._leaves_stopped = evacuate_leaves_stopped
        self._dead_dest_hangs = dead_destination_hangs
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}
        self._instances: dict[str, _Instance] = {}
        self._groups: dict[str, str] = {}  # name -> policy
        self._group_members: dict[str, set[str]] = {}
        self._on_host: dict[str, set[str]] = {}  # host -> ids Nova places there
        self._copies: dict[str, set[str]] = {}  # host -> ids with a copy running there
        self._claims: Counter[str] = Counter()  # host -> evacuations heading there
        # Nova's scheduler in brief: every host's (load, name), a heap from which
        # _schedule takes the least loaded fitting host. An entry is current when its load
        # is the host's load now; every change of a load pushes the new one (_loaded) and
        # stale entries are skipped. At 10,000 hosts a scan of every host per evacuation
        # held the cloud's lock 13 ms, which slowed a rack failure's every call.
        self._by_load: list[tuple[int, str]] = []
        # Pending operations by due time; those whose host is hung or isolated wait
        # aside until it works again, so that a frozen host costs nothing per call.
        self._heap: list[tuple[float, int, _Op]] = []
        self._waiting: dict[str, list[_Op]] = {}
        self._seq = 0
        # Nova's rebuild slots: how many run, and the accepted evacuations waiting for
        # one, in arrival order (by instance too, so that a reset drops its own in O(1)).
        self._max_evacuations = max_concurrent_evacuations
        self._evacuating = 0
        self._evac_queue: deque[_Op] = deque()
        self._queued_evac: dict[str, _Op] = {}
        self._double: dict[str, None] = {}  # insertion-ordered set
        self._calls: Counter[tuple[str, str]] = Counter()
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._network = (0.0, 0.0)
        self._lose_evacuations = 0
        self._lost: set[str] = set()  # instances whose evacuation Nova accepted and lost
        self._evacuations: list[EvacuationRecord] = []
        self._power_offs: list[PowerOffRecord] = []
        self._faulty_spans: dict[str, list[tuple[float, float | None]]] = {}
        self._power_losses: dict[str, list[float]] = {}

    # ----------------------------------------------------------------- building the world

    def add_host(self, name: str, *, capacity: int = 20) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        with self._lock:
            if name in self._hosts:
                raise ValueError(f"host {name} already exists")
            self._hosts[name] = _Host(name, capacity, healthy_since=self._clock.monotonic())
            self._on_host[name] = set()
            self._copies[name] = set()
            self._loaded(name)

    def add_server_group(self, name: str, policy: str = ANTI_AFFINITY) -> None:
        if policy not in (ANTI_AFFINITY, SOFT_ANTI_AFFINITY):
            raise ValueError(f"unsupported server group policy {policy!r}")
        with self._lock:
            if name in self._groups:
                raise ValueError(f"server group {name} already exists")
            self._groups[name] = policy
            self._group_members[name] = set()

    def add_instance(
        self,
        name: str,
        host: str,
        *,
        policy: HaPolicy | None = None,
        priority: int = 0,
        server_group: str | None = None,
        anti_affinity: bool = False,
        status: str = ACTIVE,
        id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        project_id: str = DEFAULT_PROJECT,
    ) -> str:
        """Place an instance directly (no scheduling); returns its id.

        ``server_group`` is created on first use, anti-affinity if ``anti_affinity``.
        ``policy``/``priority`` are written into the metadata under ``POLICY_KEY`` and
        ``PRIORITY_KEY``; pass ``metadata`` for anything else (e.g. ``HA_Enabled``).
        """
        if status not in EVACUABLE:
            raise ValueError(f"an instance starts ACTIVE, SHUTOFF or ERROR, not {status}")
        md = dict(metadata or {})
        if policy is not None:
            md[POLICY_KEY] = policy.value
        if priority:
            md[PRIORITY_KEY] = str(priority)
        iid = id if id is not None else str(uuid.uuid4())
        with self._lock:
            self._advance()
            h = self._hosts.get(host)
            if h is None:
                raise ValueError(f"no host {host}")
            if iid in self._instances:
                raise ValueError(f"instance {iid} already exists")
            if self._load(host) >= h.capacity:
                raise ValueError(f"host {host} is full ({h.capacity} instances)")
            if server_group is not None:
                wanted = ANTI_AFFINITY if anti_affinity else SOFT_ANTI_AFFINITY
                if server_group not in self._groups:
                    self._groups[server_group] = wanted
                    self._group_members[server_group] = set()
                elif anti_affinity and self._groups[server_group] != ANTI_AFFINITY:
                    raise ValueError(f"server group {server_group} is not anti-affinity")
            inst = _Instance(iid, name, host, status, md, server_group, project_id=project_id)
            if self._breaks_affinity(inst, host):
                raise ValueError(f"{name} on {host} would break anti-affinity of {server_group}")
            self._instances[iid] = inst
            self._on_host[host].add(iid)
            self._loaded(host)
            if server_group is not None:
                self._group_members[server_group].add(iid)
            if status == ACTIVE and h.powered:
                self._add_copy(inst, host)
                inst.power_state = POWER_RUNNING
        return iid

    def boot(
        self,
        name: str,
        *,
        metadata: Mapping[str, str] | None = None,
        server_group: str | None = None,
        project_id: str = DEFAULT_PROJECT,
    ) -> str:
        """Nova's create, scheduled: the least loaded fitting host (an anti-affinity
        group's members each on their own); PermanentError "No valid host" when none."""
        iid = str(uuid.uuid4())
        anti = server_group is not None and self._groups.get(server_group) == ANTI_AFFINITY
        with self._lock:
            self._advance()
            probe = _Instance(iid, name, "", ACTIVE, dict(metadata or {}), server_group)
            dest = self._schedule(probe, self._clock.monotonic())
        if dest is None:
            raise PermanentError(f"create {name}: No valid host was found")
        return self.add_instance(
            name,
            dest,
            server_group=server_group,
            anti_affinity=anti,
            id=iid,
            metadata=metadata,
            project_id=project_id,
        )

    def delete_instance(self, server_id: str) -> None:
        """Nova's delete: gone from its host (its copies stop) and its group."""
        with self._lock:
            self._advance()
            inst = self._instance_or_not_found(server_id)
            for host in list(inst.running_on):
                self._drop_copy(inst, host)
            self._on_host[inst.host].discard(server_id)
            if inst.group is not None:
                self._group_members[inst.group].discard(server_id)
            del self._instances[server_id]
            self._loaded(inst.host)

    def server_group_members(self, name: str) -> list[str]:
        with self._lock:
            if name not in self._groups:
                raise NotFound(f"server group {name} does not exist")
            return sorted(self._group_members[name])

    def delete_server_group(self, name: str) -> None:
        with self._lock:
            if name not in self._groups:
                raise NotFound(f"server group {name} does not exist")
            del self._groups[name]
            del self._group_members[name]

    # ------------------------------------------------------------------------ host faults

    def power_loss(self, host: str) -> None:
        """The host goes off: its instances, agent and nova-compute stop."""
        with self._lock:
            self._advance()
            h = self._host_or_value_error(host)
            self._cancel_power_op(h)
            if h.powered:
                self._lose_power(h, self._clock.monotonic())

    def power_restore(self, host: str) -> None:
        """The host comes back; nothing it ran before is started again."""
        with self._lock:
            self._advance()
            h = self._host_or_value_error(host)
            self._cancel_power_op(h)
            if not h.powered:
                self._restore_power(h, self._clock.monotonic())

    def agent_crash(self, host: str) -> None:
        self._set_flag(host, "agent_running", False)

    def agent_restart(self, host: str) -> None:
        self._set_flag(host, "agent_running", True)

    def isolate(self, host: str) -> None:
        """Cut the host off the control network; its BMC stays reachable."""
        self._set_flag(host, "isolated", True)

    def reconnect(self, host: str) -> None:
        self._set_flag(host, "isolated", False)

    def cut_from_server(self, host: str, flag: bool) -> None:
        """Cut (or mend) only the path between the host and vigil-server: its heartbeats
        are lost, but it still reaches its peer hosts and Nova."""
        self._set_flag(host, "cut_from_server", flag)

    def hang(self, host: str) -> None:
        """Freeze a powered host: no agent, no nova-compute; its instances still count."""
        with self._lock:
            if not self._host_or_value_error(host).powered:
                raise ValueError(f"host {host} is off: it cannot hang")
        self._set_flag(host, "hung", True)

    def unhang(self, host: str) -> None:
        self._set_flag(host, "hung", False)

    def bmc_unreachable(self, host: str, flag: bool) -> None:
        self._set_flag(host, "bmc_unreachable", flag)

    def bmc_lies(self, host: str, flag: bool) -> None:
        """The BMC acknowledges power-off but the power stays on (status still reads ON)."""
        self._set_flag(host, "bmc_lies", flag)

    def lose_evacuations(self, count: int = 1) -> None:
        """Nova's API dies mid-request, ``count`` times: the next evacuations are accepted
        (the instance reads REBUILD) but never carried out, until ``reset_state``."""
        with self._lock:
            self._lose_evacuations = count

    def set_network(self, loss: float = 0.0, jitter: float = 0.0) -> None:
        """Conditions for agent heartbeats (applied by the agent harness, not here)."""
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss is a fraction in [0, 1]")
        if jitter < 0:
            raise ValueError("jitter must not be negative")
        with self._lock:
            self._network = (loss, jitter)

    def network(self) -> tuple[float, float]:
        with self._lock:
            return self._network

    # ---------------------------------------------------------------------------- queries

    @property
    def service_down_time(self) -> float:
        return self._service_down_time

    def hosts(self) -> list[str]:
        with self._lock:
            return list(self._hosts)

    def is_powered(self, host: str) -> bool:
        with self._lock:
            self._advance()
            return self._host_or_value_error(host).powered

    def host_can_heartbeat(self, host: str) -> bool:
        with self._lock:
            self._advance()
            h = self._host_or_value_error(host)
            return h.healthy

    def boot_id(self, host: str) -> str:
        """The host's kernel boot id (``/proc/sys/kernel/random/boot_id``): new at every boot."""
        with self._lock:
            self._advance()
            h = self._host_or_value_error(host)
            return f"{h.name}-boot-{h.boots}"

    def peer_reachable(self, host: str, peer: str) -> bool:
        """Whether ``host``'s agent can exchange datagrams with ``peer``'s agent now: both
        powered, not hung, their agents running, neither isolated (a host cut off only from
        vigil-server still reaches its peers)."""
        with self._lock:
            self._advance()
            a, b = self._host_or_value_error(host), self._host_or_value_error(peer)
            return all(
                h.powered and not h.hung and h.agent_running and not h.isolated for h in (a, b)
            )

    def can_pet_watchdog(self, host: str) -> bool:
        """Whether the host's agent runs and can reach its watchdog device (isolation does
        not stop it; a hung host or a dead agent cannot)."""
        with self._lock:
            self._advance()
            h = self._host_or_value_error(host)
            return h.powered and not h.hung and h.agent_running

    def watchdog_reset(self, host: str) -> bool:
        """The host's hardware watchdog fired: a hard reset. Like a power cycle, nothing it
        ran keeps running; it comes back up (still isolated or hung if it was). False,
        and nothing happens, if the host has no power (its BMC got there first: the
        watchdog of a host that is off runs no more). A BMC power-off already on its way
        still lands after the reset: the host ends off, as the BMC was told."""
        with self._lock:
            self._advance()
            h = self._host_or_value_error(host)
            if not h.powered:
                return False
            now = self._clock.monotonic()
            self._power_offs.append(PowerOffRecord(now, host, "watchdog", True, h.condition()))
            if h.powered:
                self._lose_power(h, now)
            h.hung = False
            if h.isolated:
                # Back up but still cut off: nova-compute cannot tell Nova its instances
                # are off, so Nova keeps believing what it believed.
                h.powered, h.agent_running = True, True
                h.boots += 1
                self._update_reporting(h, now)
                self._note_health(h, now)
            else:
                self._restore_power(h, now)
            return True

    def instances(self) -> list[SimInstance]:
        with self._lock:
            self._advance()
            return [self._snapshot(i) for i in self._instances.values()]

    def instance(self, server_id: str) -> SimInstance:
        with self._lock:
            self._advance()
            inst = self._instances.get(server_id)
            if inst is None:
                raise ValueError(f"no instance {server_id}")
            return self._snapshot(inst)

    def double_running(self) -> list[str]:
        """Ids of every instance that has ever had running copies on two hosts at once."""
        with self._lock:
            self._advance()
            return list(self._double)

    def evacuations(self) -> list[EvacuationRecord]:
        """Every evacuate call Nova accepted, in order, with its destination's condition."""
        with self._lock:
            self._advance()
            return list(self._evacuations)

    def power_offs(self) -> list[PowerOffRecord]:
        """Every BMC power-off request and watchdog reset, with the host's condition."""
        with self._lock:
            self._advance()
            return list(self._power_offs)

    def faulty_spans(self) -> dict[str, list[tuple[float, float | None]]]:
        """Per host, every span of time it was not healthy: (start, end or None if it
        still is not). Hosts never faulty are absent."""
        with self._lock:
            self._advance()
            return {h: list(spans) for h, spans in self._faulty_spans.items() if spans}

    def power_losses(self) -> dict[str, list[float]]:
        """Per host, every time it lost power, whatever the cause (a fault, a BMC power-off
        taking effect, a watchdog reset): what a fence must have caused before vigil
        trusts it."""
        with self._lock:
            self._advance()
            return {h: list(times) for h, times in self._power_losses.items()}

    def host_condition(self, host: str) -> HostCondition:
        with self._lock:
            self._advance()
            return self._host_or_value_error(host).condition()

    def evacuations_in_progress(self) -> tuple[int, int]:
        """(rebuilds running, accepted evacuations waiting for a slot) now."""
        with self._lock:
            self._advance()
            return self._evacuating, len(self._queued_evac)

    def calls(self, method: str, target: str | None = None) -> int:
        """Accepted calls of a mutating method (``evacuate``, ``start``, ``stop``, ``reboot``,
        ``set_forced_down``, ``disable``, ``enable``, ``bmc_power_off``, ``bmc_power_on``,
        ``reset_state``),
        per target (server id or host name) or in all. A call that raised is not counted.
        ``disable_rpc_timeout`` counts disable/enable calls that waited for a silent compute.
        """
        with self._lock:
            return self._count(self._calls, method, target)

    def attempts(self, method: str, target: str | None = None) -> int:
        """Like ``calls``, counting refused and failed calls too."""
        with self._lock:
            return self._count(self._attempts, method, target)

    # ------------------------------------------------------------------------ Nova: hosts

    def list_services(self) -> list[ComputeService]:
        self._api_latency()
        with self._lock:
            self._advance()
            return [self._service(h) for h in self._hosts.values()]

    def get_service(self, host: str) -> ComputeService:
        self._api_latency()
        with self._lock:
            self._advance()
            return self._service(self._host_or_not_found(host))

    def set_forced_down(self, host: str, forced_down: bool) -> None:
        self._api_latency()
        with self._lock:
            self._advance()
            self._attempts["set_forced_down", host] += 1
            self._host_or_not_found(host).forced_down = forced_down
            self._calls["set_forced_down", host] += 1

    def disable(self, host: str, reason: str) -> None:
        self._set_disabled("disable", host, True, reason)

    def enable(self, host: str) -> None:
        self._set_disabled("enable", host, False, "")

    # ---------------------------------------------------------------------- Nova: servers

    def list_servers(self, host: str) -> list[Server]:
        self._api_latency()
        with self._lock:
            self._advance()
            self._host_or_not_found(host)
            found = [self._instances[i] for i in self._on_host[host]]
            return [self._server(i) for i in sorted(found, key=lambda i: (i.name, i.id))]

    def get_server(self, server_id: str) -> Server:
        self._api_latency()
        with self._lock:
            self._advance()
            return self._server(self._instance_or_not_found(server_id))

    def evacuate(self, server_id: str, target_host: str | None = None) -> None:
        self._api_latency()
        with self._lock:
            self._advance()
            now = self._clock.monotonic()
            self._attempts["evacuate", server_id] += 1
            inst = self._instance_or_not_found(server_id)
            source = self._hosts[inst.host]
            if target_host is not None:
                self._host_or_not_found(target_host)
                if target_host == source.name:
                    raise PermanentError(
                        f"evacuate {server_id}: the target host can't be the same one"
                    )
            self._check_state(inst, "evacuate", EVACUABLE)
            if self._service_up(source, now):
                raise Conflict(
                    f"ComputeServiceInUse: compute service of {source.name} is still in use"
                )
            if target_host is not None:
                refusal = self._unfit(inst, self._hosts[target_host], now)
                if refusal:
                    raise PermanentError(
                        f"evacuate {server_id}: no valid host: {target_host} {refusal}"
                    )
                dest: str | None = target_host
            else:
                dest = self._schedule(inst, now)
            lost = self._lose_evacuations > 0
            self._evacuations.append(
                EvacuationRecord(
                    now,
                    inst.id,
                    source.name,
                    dest,
                    target_host is not None,
                    lost,
                    self._hosts[dest].condition() if dest is not None else None,
                )
            )
            if lost:
                self._lose_evacuations -= 1
                self._lost.add(inst.id)
                inst.status, inst.task_state, inst.fault = REBUILD, "rebuilding", None
                self._calls["evacuate", server_id] += 1
                return
            op = self._new_op("evacuate", inst.id, actor=dest, dest=dest, status=inst.status)
            inst.status, inst.task_state, inst.fault = REBUILD, "rebuilding", None
            self._calls["evacuate", server_id] += 1
            if dest is None:
                # A scheduling failure surfaces about as fast as a start or stop would,
                # and takes no rebuild slot.
                op.due = now + self._delay(self._latency.action)
                self._queue(op)
                return
            self._claim(dest, 1)
            if self._max_evacuations and self._evacuating >= self._max_evacuations:
                self._evac_queue.append(op)  # accepted; the rebuild waits for a slot
                self._queued_evac[inst.id] = op
            else:
                self._start_rebuild(op, now)

    def evacuation_started(self, server_id: str) -> bool | None:
        self._api_latency()
        with self._lock:
            self._advance()
            return server_id not in self._lost

    def reset_state(self, server_id: str) -> None:
        """Nova's os-resetState to error: the task is cleared whatever it was."""
        self._api_latency()
        with self._lock:
            self._advance()
            inst = self._instance_or_not_found(server_id)
            self._lost.discard(server_id)
            waiting = self._queued_evac.pop(server_id, None)
            if waiting is not None:  # its rebuild never started: dropped, its claim freed
                waiting.done = True
                self._claim(waiting.dest or "", -1)
            inst.status, inst.task_state = ERROR, None
            self._calls["reset_state", server_id] += 1

    def start(self, server_id: str) -> None:
        self._action("start", server_id)

    def stop(self, server_id: str) -> None:
        self._action("stop", server_id)

    def reboot(self, server_id: str, hard: bool = True) -> None:
        self._action("reboot", server_id, hard=hard)

    def rebuild(self, server_id: str) -> None:
        """Rebuild in place from its image (as Nova: REBUILD, task ``rebuilding``, then
        ACTIVE on the same host)."""
        self._action("rebuild", server_id)

    # ------------------------------------------------------------------------------- BMCs

    def bmc_power_off(self, host: str) -> None:
        self._bmc_gate("bmc_power_off", host)
        with self._lock:
            self._advance()
            h = self._host_or_not_found(host)
            self._calls["bmc_power_off", host] += 1
            self._power_offs.append(
                PowerOffRecord(
                    self._clock.monotonic(),
                    host,
                    "bmc",
                    h.powered and not h.bmc_lies,
                    h.condition(),
                )
            )
            if h.bmc_lies:
                return
            self._request_power(h, "power_off")

    def bmc_power_on(self, host: str) -> None:
        self._bmc_gate("bmc_power_on", host)
        with self._lock:
            self._advance()
            h = self._host_or_not_found(host)
            self._calls["bmc_power_on", host] += 1
            self._request_power(h, "power_on")

    def bmc_power_status(self, host: str) -> PowerState:
        self._bmc_gate("bmc_power_status", host)
        with self._lock:
            self._advance()
            return PowerState.ON if self._host_or_not_found(host).powered else PowerState.OFF

    # -------------------------------------------------------------------------- internals
    # Everything below runs with self._lock held, unless it says otherwise.

    def _api_latency(self) -> None:
        """Called without the lock: a slow API must not serialise the callers."""
        if self._latency.api_call > 0:
            self._sleep(self._latency.api_call)

    def _bmc_gate(self, method: str, host: str) -> None:
        """Called without the lock: the API latency, or an unreachable BMC's timeout."""
        self._api_latency()
        with self._lock:
            self._advance()
            self._attempts[method, host] += 1
            unreachable = self._host_or_not_found(host).bmc_unreachable
        if unreachable:
            if self._latency.bmc_timeout > 0:
                self._sleep(self._latency.bmc_timeout)
            raise TemporaryError(f"sim BMC of {host}: connection timed out")

    def _set_disabled(self, method: str, host: str, disabled: bool, reason: str) -> None:
        self._api_latency()
        with self._lock:
            self._advance()
            self._attempts[method, host] += 1
            h = self._host_or_not_found(host)
            silent = self._service_up(h, self._clock.monotonic()) and not h.compute_works
        if silent and self._latency.rpc_timeout > 0:
            # Nova updates the compute's disabled trait by a synchronous RPC; a compute it
            # still believes up but that does not answer makes the call wait it out.
            self._sleep(self._latency.rpc_timeout)
        with self._lock:
            self._advance()
            h.disabled, h.disabled_reason = disabled, reason
            self._calls[method, host] += 1
            if silent:
                self._calls["disable_rpc_timeout", host] += 1

    def _action(
        self, method: Literal["start", "stop", "reboot", "rebuild"], sid: str, hard: bool = True
    ) -> None:
        self._api_latency()
        with self._lock:
            self._advance()
            self._attempts[method, sid] += 1
            inst = self._instance_or_not_found(sid)
            if method == "start":
                self._check_state(inst, method, {SHUTOFF})
            elif method == "stop":
                self._check_state(inst, method, {ACTIVE, ERROR})
            elif method == "rebuild" or hard:
                self._check_state(inst, method, {ACTIVE, SHUTOFF, ERROR})
            else:
                self._check_state(inst, method, {ACTIVE})
            host = self._hosts[inst.host]
            if not self._service_up(host, self._clock.monotonic()):
                raise Conflict(f"ServiceUnavailable: compute service of {host.name} is unavailable")
            op = self._new_op(method, sid, actor=host.name, status=inst.status)
            op.due = self._clock.monotonic() + self._delay(self._latency.action)
            if method == "start":
                inst.task_state = "powering-on"
            elif method == "stop":
                inst.task_state = "powering-off"
            elif method == "rebuild":
                inst.status, inst.task_state = REBUILD, "rebuilding"
            elif hard:
                inst.status, inst.task_state = HARD_REBOOT, "reboot_started_hard"
            else:
                inst.status, inst.task_state = REBOOT, "reboot_started"
            self._queue(op)
            self._calls[method, sid] += 1

    def _check_state(
        self, inst: _Instance, action: str, allowed: set[str] | frozenset[str]
    ) -> None:
        if inst.task_state is not None or inst.status not in allowed:
            raise Conflict(
                f"InstanceInvalidState: cannot {action} instance {inst.id} while it is "
                f"{inst.status} (task {inst.task_state or 'none'})"
            )

    def _request_power(self, h: _Host, kind: Literal["power_off", "power_on"]) -> None:
        pending = h.pending_power
        if pending is not None and pending.kind == kind:
            return  # already on its way
        self._cancel_power_op(h)
        if h.powered == (kind == "power_on"):
            return
        op = self._new_op(kind, h.name, actor=None)
        op.due = self._clock.monotonic() + self._delay(self._latency.power_off)
        h.pending_power = op
        self._queue(op)

    def _cancel_power_op(self, h: _Host) -> None:
        if h.pending_power is not None:
            h.pending_power.done = True
            h.pending_power = None

    def _set_flag(self, host: str, flag: str, value: bool) -> None:
        with self._lock:
            self._advance()
            h = self._host_or_value_error(host)
            setattr(h, flag, value)
            self._update_reporting(h, self._clock.monotonic())
            self._note_health(h, self._clock.monotonic())

    def _note_health(self, h: _Host, at: float) -> None:
        spans = self._faulty_spans.setdefault(h.name, [])
        if not h.healthy:
            if h.healthy_since is not None:
                spans.append((at, None))
            h.healthy_since = None
        elif h.healthy_since is None:
            h.healthy_since = at
            if spans and spans[-1][1] is None:
                spans[-1] = (spans[-1][0], at)

    def _update_reporting(self, h: _Host, at: float) -> None:
        if h.compute_works:
            h.stopped_reporting_at = None
            for op in self._waiting.pop(h.name, []):
                op.due = at
                self._queue(op)
        elif h.stopped_reporting_at is None:
            h.stopped_reporting_at = at

    def _service_up(self, h: _Host, now: float) -> bool:
        if h.forced_down:
            return False
        stopped = h.stopped_reporting_at
        return stopped is None or now - stopped <= self._service_down_time

    def _service(self, h: _Host) -> ComputeService:
        return ComputeService(
            host=h.name,
            up=self._service_up(h, self._clock.monotonic()),
            forced_down=h.forced_down,
            disabled=h.disabled,
            disabled_reason=h.disabled_reason,
        )

    def _server(self, inst: _Instance) -> Server:
        policy, priority = ha_policy_from_metadata(inst.metadata)
        if self._hosts[inst.host].compute_works:  # its nova-compute reports what runs
            inst.power_state = POWER_RUNNING if inst.host in inst.running_on else POWER_SHUTDOWN
        return Server(
            id=inst.id,
            name=inst.name,
            host=inst.host,
            status=inst.status,
            policy=policy,
            priority=priority,
            task_state=inst.task_state,
            server_group=inst.group,
            fault=inst.fault,
            power_state=inst.power_state,
            app_keys=app_keys_of(inst.metadata),
            project_id=inst.project_id,
            cluster=inst.metadata.get(CLUSTER_KEY) or None,
        )

    def _snapshot(self, inst: _Instance) -> SimInstance:
        return SimInstance(
            id=inst.id,
            name=inst.name,
            host=inst.host,
            status=inst.status,
            task_state=inst.task_state,
            metadata=dict(inst.metadata),
            server_group=inst.group,
            fault=inst.fault,
            running_on=frozenset(inst.running_on),
        )

    def _host_or_not_found(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            raise NotFound(f"compute host {host} not found")
        return h

    def _host_or_value_error(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            raise ValueError(f"no host {host}")
        return h

    def _instance_or_not_found(self, sid: str) -> _Instance:
        inst = self._instances.get(sid)
        if inst is None:
            raise NotFound(f"instance {sid} could not be found")
        return inst

    @staticmethod
    def _count(counter: Counter[tuple[str, str]], method: str, target: str | None) -> int:
        if target is not None:
            return counter[method, target]
        return sum(n for (m, _), n in counter.items() if m == method)

    # scheduling

    def _load(self, host: str) -> int:
        return len(self._on_host[host]) + self._claims[host]

    def _breaks_affinity(self, inst: _Instance, host: str) -> bool:
        # Only members already placed count: Nova's scheduler does not see evacuations in
        # flight either, which is why parallel evacuations of a group can collide.
        if inst.group is None or self._groups[inst.group] != ANTI_AFFINITY:
            return False
        members = self._group_members[inst.group]
        return any(m != inst.id and self._instances[m].host == host for m in members)

    def _unfit(self, inst: _Instance, h: _Host, now: float) -> str:
        """Why ``h`` cannot take ``inst`` ("" if it can)."""
        if h.forced_down:
            return "is forced down"
        if not self._service_up(h, now):
            return "is down"
        if h.disabled:
            return "is disabled"
        if self._load(h.name) >= h.capacity:
            return "is full"
        if self._breaks_affinity(inst, h.name):
            return f"already runs a member of anti-affinity group {inst.group}"
        return ""

    def _claim(self, host: str, delta: int) -> None:
        self._claims[host] += delta
        self._loaded(host)

    def _loaded(self, host: str) -> None:
        """``host``'s load has changed: its current entry for _schedule."""
        heapq.heappush(self._by_load, (self._load(host), host))
        if len(self._by_load) > 4 * len(self._hosts) + 1024:  # mostly stale: rebuilt
            self._by_load = [(self._load(h), h) for h in self._hosts]
            heapq.heapify(self._by_load)

    def _schedule(self, inst: _Instance, now: float) -> str | None:
        """The least loaded fitting host other than the instance's own (spread), ties
        by name: hosts taken from ``_by_load`` in that order until one fits, the current
        entries taken put back."""
        taken: list[tuple[int, str]] = []
        seen: set[str] = set()
        chosen = None
        while self._by_load:
            load, name = heapq.heappop(self._by_load)
            if name in seen or load != self._load(name):
                continue  # stale (its load has changed since) or a duplicate
            seen.add(name)
            taken.append((load, name))
            if name != inst.host and not self._unfit(inst, self._hosts[name], now):
                chosen = name
                break
        for entry in taken:
            heapq.heappush(self._by_load, entry)
        return chosen

    # pending operations

    def _new_op(
        self,
        kind: _OpKind,
        subject: str,
        *,
        actor: str | None,
        dest: str | None = None,
        status: str = "",
    ) -> _Op:
        self._seq += 1
        return _Op(0.0, self._seq, kind, subject, actor, dest, status)

    def _queue(self, op: _Op) -> None:
        heapq.heappush(self._heap, (op.due, op.seq, op))

    def _delay(self, base: float) -> float:
        if base <= 0:
            return 0.0
        j = self._latency.jitter
        return base * (1.0 + self._rng.uniform(-j, j)) if j else base

    def _advance(self) -> None:
        """Apply, in due order, every pending operation whose time has come."""
        now = self._clock.monotonic()
        while self._heap and self._heap[0][0] <= now:
            op = heapq.heappop(self._heap)[2]
            if op.done:
                continue
            if self._apply(op):
                self._done(op, op.due)
            else:
                self._waiting.setdefault(op.actor or "", []).append(op)

    def _done(self, op: _Op, at: float) -> None:
        """``op`` is over (carried out or failed) at ``at``: a rebuild slot it held goes
        to the evacuation waiting longest, whose rebuild starts then."""
        op.done = True
        if not op.slot:
            return
        op.slot = False
        self._evacuating -= 1
        while self._evac_queue and self._evacuating < self._max_evacuations:
            nxt = self._evac_queue.popleft()
            if nxt.done:  # reset while it waited
                continue
            del self._queued_evac[nxt.subject]
            self._start_rebuild(nxt, at)

    def _start_rebuild(self, op: _Op, at: float) -> None:
        op.slot = True
        self._evacuating += 1
        op.due = at + self._delay(self._latency.evacuate)
        self._queue(op)

    def _apply(self, op: _Op) -> bool:
        """Carry out a due operation; False if its host cannot act yet (hung or isolated)."""
        if op.kind == "boot":
            h = self._hosts[op.subject]
            if h.powered and h.booting:
                self._booted(h, op.due)
            return True
        if op.kind == "power_sync":
            self._sync_power(self._hosts[op.subject])
            return True
        if op.kind in ("power_off", "power_on"):
            h = self._hosts[op.subject]
            h.pending_power = None
            if op.kind == "power_off" and h.powered:
                self._lose_power(h, op.due)
            elif op.kind == "power_on" and not h.powered:
                self._restore_power(h, op.due)
            return True
        if op.actor is not None:
            actor = self._hosts[op.actor]
            if not actor.powered:
                # Possible when Nova still believed the host up when it accepted the request.
                if op.kind == "evacuate" and self._dead_dest_hangs:
                    return False  # the cast waits in the dead compute's queue
                self._fail_op(op)
                return True
            if not actor.compute_works:
                return False
        inst = self._instances[op.subject]
        if op.kind == "evacuate":
            if self._dead_dest_hangs and (
                inst.status != REBUILD or inst.task_state != "rebuilding"
            ):
                # A rebuild cast that waited for a dead compute, for an instance reset
                # (or landed) meanwhile: Nova's expected task state refuses it.
                self._claim(op.actor or "", -1)
                return True
            self._land(op, inst)
        elif op.kind == "stop":
            inst.status, inst.task_state = SHUTOFF, None
            self._drop_copy(inst, inst.host)
        else:  # start, reboot, rebuild
            inst.status, inst.task_state = ACTIVE, None
            self._add_copy(inst, inst.host)
        return True

    def _land(self, op: _Op, inst: _Instance) -> None:
        dest = op.dest
        inst.task_state = None
        if dest is None:
            inst.status = ERROR
            inst.fault = "No valid host was found. There are not enough hosts available."
            return
        self._claim(dest, -1)
        if self._breaks_affinity(inst, dest):
            inst.status = ERROR
            inst.fault = "Anti-affinity instance group policy was violated."
            return
        self._on_host[inst.host].discard(inst.id)
        self._on_host[dest].add(inst.id)
        self._loaded(inst.host)
        self._loaded(dest)
        inst.host, inst.fault = dest, None
        if self._leaves_stopped or op.status_before == SHUTOFF:
            inst.status = SHUTOFF
        else:
            inst.status = ACTIVE
            self._add_copy(inst, dest)

    def _fail_ops_of(self, host: str, at: float) -> None:
        """The host lost power: what its nova-compute was doing will never finish."""
        queued = [entry[2] for entry in self._heap]
        waiting = self._waiting.pop(host, [])
        for op in sorted([*queued, *waiting], key=lambda o: o.seq):
            if not op.done and op.actor == host:
                if op.kind == "evacuate" and self._dead_dest_hangs:
                    # The cast stays in the compute's queue: its nova-compute carries it
                    # out when the host is back, unless the instance was reset meanwhile.
                    # (One still on the heap gets here when it falls due.)
                    if any(op is w for w in waiting):
                        self._waiting.setdefault(host, []).append(op)
                    continue
                self._fail_op(op)
                self._done(op, at)

    def _fail_op(self, op: _Op) -> None:
        inst = self._instances[op.subject]
        inst.task_state = None
        if op.kind == "evacuate":
            self._claim(op.actor or "", -1)
            inst.status = ERROR
            inst.fault = f"Rebuild on {op.actor} failed: the host went down."
        else:
            inst.status = op.status_before

    def _lose_power(self, h: _Host, at: float) -> None:
        h.powered, h.hung, h.agent_running, h.booting = False, False, False, False
        self._power_losses.setdefault(h.name, []).append(at)
        self._update_reporting(h, at)
        self._note_health(h, at)
        for iid in list(self._copies[h.name]):
            self._drop_copy(self._instances[iid], h.name)
        self._fail_ops_of(h.name, at)

    def _restore_power(self, h: _Host, at: float) -> None:
        h.powered = True
        h.boots += 1
        if self._latency.boot > 0:
            h.booting = True
            self._update_reporting(h, at)
            self._note_health(h, at)
            op = self._new_op("boot", h.name, actor=None)
            op.due = at + self._latency.boot
            self._queue(op)
            return
        self._booted(h, at)

    def _booted(self, h: _Host, at: float) -> None:
        h.booting, h.agent_running = False, True
        self._update_reporting(h, at)
        self._note_health(h, at)
        # Like a restarted nova-compute: the copies of instances evacuated away are gone
        # (power loss ended them and nothing restarts them), and the instances still
        # placed here that Nova believed ACTIVE are found off: power_state shutdown at
        # once, SHUTOFF at its power sync.
        if self._latency.power_sync > 0:
            op = self._new_op("power_sync", h.name, actor=None)
            op.due = at + self._latency.power_sync
            self._queue(op)
        else:
            self._sync_power(h)

    def _sync_power(self, h: _Host) -> None:
        if not h.compute_works:
            return
        for iid in self._on_host[h.name]:
            inst = self._instances[iid]
            if inst.status == ACTIVE and inst.task_state is None and h.name not in inst.running_on:
                inst.status = SHUTOFF

    def _add_copy(self, inst: _Instance, host: str) -> None:
        if not self._hosts[host].powered:
            return
        inst.running_on.add(host)
        self._copies[host].add(inst.id)
        if len(inst.running_on) > 1:
            self._double[inst.id] = None

    def _drop_copy(self, inst: _Instance, host: str) -> None:
        inst.running_on.discard(host)
        self._copies[host].discard(inst.id)


if TYPE_CHECKING:
    _conforms: type[CloudApi] = SimCloud  # mypy checks SimCloud against the protocol
