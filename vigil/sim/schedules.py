"""Seeded randomized fault schedules against a real vigil-server, judged by ground truth.

Three parts:

- ``generate(seed)`` (pure): a world of 3-8 hosts in 1-2 segments, 3-5 instances per host
  (mostly ``keep-running``, some ``notify``/``off``), fencing by BMC (``sim``), by
  self-fencing (``self-fence``) or both, and a timed list of faults: power loss and
  restore, power blips shorter than detection (a reboot), isolation, hangs, agent
  crashes, hosts cut off from vigil-server only, unreachable / lying / flapping BMCs,
  several hosts at once, lost evacuations, packet loss and jitter, and vigil-server
  killed with SIGKILL and restarted. The same seed gives the same schedule.
- ``run_schedule`` (not pure): the ``SimCloud`` in this process, served over RPC to a
  real ``python -m vigil.server`` subprocess on its default SQLite store, real signed UDP
  heartbeats from ``SimAgents``; the faults are applied at their times, healed at
  ``heal_at``, and the world settles (every recovery ended and every keep-running
  instance running, for a quiet while, or ``Timing.settle_bound``).
- ``check`` (pure): the verdict from the simulated cloud's own records (where copies ran,
  every power-off and watchdog reset with the host's condition then, every evacuation
  with its destination's condition then), not from what vigil says -- except the
  recoveries' statuses, read through ``/v1/recoveries``, for "never ends".

Violations (``Violation.kind``):

- ``double-running``: an instance ran on two hosts at once (``SimCloud.double_running``).
- ``healthy-fenced``: an effective BMC power-off or a watchdog reset of a host that was
  healthy then and had never been faulty long enough for vigil to declare it failed
  (a span of at least ``suspect_after - heartbeat_interval``: a suspect host whose BMC
  reads off is declared at once). Not one: a watchdog reset while vigil-server was down
  and at most half of the host's segment could vouch (healthy, or cut from the server
  only) — the peer rule promises survival only with a strict majority, as any quorum
  does (``resets_without_quorum``). A host fenced after it came back from a real failure
  is counted as ``fenced_after_return``, not a violation: once declared, fencing is the
  safe end of it.
- ``stranded``: after the settle, a keep-running instance runs nowhere. If vigil recorded
  a failed recovery of the instance's host it is *stranded-with-reason*, a violation only
  when fencing was possible (the host self-fences, or its BMC was never made unreachable
  nor lying in the schedule) and another host of its segment was up at the end (else
  there is nowhere to run it); else counted in ``stranded_with_reason``.
- ``endless-recovery``: a recovery still pending, running or paused at the end (the
  settle bound is ``Timing.settle_bound`` after the heal, about 120 s of unaccelerated
  time).
- ``fence-confirmed-while-running``: vigil recorded a fence step succeeded (``/v1/recoveries``)
  although the host had not lost power (fault, BMC or watchdog) from 10 s before the
  declaration to the step's end (+0.2 s) (a declaration comes within a few seconds of the
  failure, a killed server's downtime included): a self-fence taken for done
  while the host still ran -- what lets Nova accept evacuations of instances still
  running on it.
- ``evacuation-to-down-host``: an evacuation whose destination's nova-compute had stopped
  working more than ``failed_after + known_down_margin`` before the call (vigil could
  know). One to a host that died just before is counted in ``evacuations_to_fresh_dead``.

Limits: real time drives the server, so a seed reproduces the schedule, not every
interleaving; timings are accelerated (``Timing``) and a loaded machine can delay
heartbeats -- a ``healthy-fenced`` under heavy load should be rerun with ``--seed``
before it is believed. Faults that cannot apply at their time (hanging a host that is
off) are skipped and reported as such.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vigil.drivers.compute import POLICY_KEY
from vigil.model import HaPolicy
from vigil.sim.cloud import EvacuationRecord, PowerOffRecord, SimInstance

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Timing:
    """Accelerated settings (about 2.5x faster than the defaults) and the checker's bounds."""

    heartbeat_interval: float = 0.1
    suspect_after: float = 0.4
    failed_after: float = 0.7
    probe_interval: float = 0.1
    lease_ttl: float = 0.7
    watchdog_timeout: float = 1.2
    margin: float = 0.3
    peer_interval: float = 0.4
    peer_timeout: float = 0.2
    fence_confirm_timeout: float = 3.0
    evacuate_confirm_timeout: float = 20.0
    evacuate_stall_timeout: float = 4.0
    retry_backoff: float = 0.2
    retry_backoff_max: float = 2.0
    poll_interval: float = 0.05
    service_down_time: float = 8.0  # Nova's, scaled from 60 s
    # A host whose power returns boots this long before its agent and nova-compute run
    # (minutes in reality; longer than detection here, as there)
    boot: float = 1.0
    # ... and Nova records its instances SHUTOFF at its next power sync (10 min in Nova)
    power_sync: float = 20.0
    fault_window: float = 10.0  # faults start within [1, fault_window] s
    settle_min: float = 4.0  # after the heal, wait at least this long
    settle_quiet: float = 2.0  # ... and until all is settled for this long
    settle_bound: float = 48.0  # ~120 s of unaccelerated time: a recovery must end by then
    known_down_margin: float = 1.0  # vigil's time to act on a declared failure

    def overrides(self) -> dict[str, dict[str, str]]:
        """The vigil-server options these settings mean, by group."""
        return {
            "detection": {
                "heartbeat_interval": str(self.heartbeat_interval),
                "suspect_after": str(self.suspect_after),
                "failed_after": str(self.failed_after),
                "probe_interval": str(self.probe_interval),
            },
            "self_fencing": {
                "lease_ttl": str(self.lease_ttl),
                "watchdog_timeout": str(self.watchdog_timeout),
                "margin": str(self.margin),
                "peer_interval": str(self.peer_interval),
                "peer_timeout": str(self.peer_timeout),
            },
            "recovery": {
                "fence_confirm_timeout": str(self.fence_confirm_timeout),
                "evacuate_confirm_timeout": str(self.evacuate_confirm_timeout),
                "evacuate_stall_timeout": str(self.evacuate_stall_timeout),
                "retry_backoff": str(self.retry_backoff),
                "retry_backoff_max": str(self.retry_backoff_max),
                "poll_interval": str(self.poll_interval),
            },
        }

    @property
    def declare_min(self) -> float:
        """The shortest fault after which vigil may rightly declare a host failed."""
        return self.suspect_after - self.heartbeat_interval


# ------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class HostSpec:
    name: str
    segment: str
    fencing: tuple[str, ...]  # fence drivers, in order: "sim", "self-fence"


@dataclass(frozen=True)
class InstanceSpec:
    name: str
    host: str
    policy: str  # HaPolicy value
    priority: int


# Actions a Fault can take; ``host`` is None for the cloud-wide ones.
HOST_ACTIONS = frozenset(
    {
        "power-loss",
        "power-restore",
        "isolate",
        "reconnect",
        "hang",
        "unhang",
        "agent-crash",
        "agent-restart",
        "cut",
        "mend",
        "bmc-down",
        "bmc-up",
        "bmc-lies",
        "bmc-honest",
    }
)
CLOUD_ACTIONS = frozenset({"lose-evacuations", "network", "server-kill", "server-start", "heal"})
# With several servers, a server fault names its server in ``host`` ("vigil-<i>"):
# killed and started, stopped (SIGSTOP) and continued, or cut off from its etcd member
# (packets dropped, as in a partition) and mended; an etcd fault names a member
# ("etcd-<k>", the member server k talks to), killed and started again.
SERVER_ACTIONS = frozenset(
    {"server-kill", "server-start", "server-stop", "server-cont", "server-cut", "server-mend"}
)
ETCD_ACTIONS = frozenset({"etcd-kill", "etcd-start"})


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the schedule's start
    action: str
    host: str | None = None
    value: float = 0.0  # lose-evacuations: count; network: loss fraction
    value2: float = 0.0  # network: jitter (s)

    def describe(self) -> str:
        text = f"t+{self.at:.2f} {self.action}"
        if self.host:
            text += f" {self.host}"
        if self.action == "lose-evacuations":
            text += f" x{int(self.value)}"
        elif self.action == "network":
            text += f" loss={self.value:.3f} jitter={self.value2:.3f}s"
        return text


@dataclass(frozen=True)
class Schedule:
    seed: int
    fencing_mode: str  # "bmc", "self" or "both"
    hosts: tuple[HostSpec, ...]
    instances: tuple[InstanceSpec, ...]
    faults: tuple[Fault, ...]  # in time order, ending with the "heal"
    servers: int = 1  # vigil-servers; several share PostgreSQL and a coordination backend

    @property
    def heal_at(self) -> float:
        return self.faults[-1].at

    @property
    def segments(self) -> list[str]:
        return sorted({h.segment for h in self.hosts})

    def describe(self) -> list[str]:
        segs = ", ".join(
            f"{s}: {' '.join(h.name for h in self.hosts if h.segment == s)}" for s in self.segments
        )
        servers = f", {self.servers} servers" if self.servers > 1 else ""
        return [
            f"seed {self.seed}: {len(self.hosts)} hosts ({segs}), {len(self.instances)} "
            f"instances, fencing {self.fencing_mode}{servers}",
            *(f.describe() for f in self.faults),
        ]


FENCING = {"bmc": ("sim",), "self": ("self-fence",), "both": ("sim", "self-fence")}


def generate(seed: int, timing: Timing | None = None, *, servers: int = 1) -> Schedule:
    """The schedule of ``seed`` (pure: the same seed, the same schedule).

    With several ``servers``, the hosts, instances and host faults are those of the
    same seed with one server, and server faults are drawn on top (``_server_faults``):
    any server killed and maybe started again (a server leaving and joining), or
    stopped (SIGSTOP) past its lease and continued, at any moment of the recoveries."""
    t = timing or Timing()
    rng = random.Random(seed)
    n = rng.randint(3, 8)
    two = n >= 5 and rng.random() < 0.5
    mode = rng.choices(["bmc", "self", "both"], weights=[4, 2, 4])[0]
    hosts = tuple(
        HostSpec(f"compute-{i + 1}", "seg-b" if two and i % 2 else "seg-a", FENCING[mode])
        for i in range(n)
    )
    instances: list[InstanceSpec] = []
    for h in hosts:
        for _ in range(rng.randint(3, 5)):
            policy = rng.choices(
                [HaPolicy.KEEP_RUNNING, HaPolicy.NOTIFY, HaPolicy.OFF], weights=[16, 2, 2]
            )[0]
            instances.append(
                InstanceSpec(
                    f"vm-{len(instances) + 1:02d}", h.name, policy.value, rng.randint(0, 3)
                )
            )
    names = [h.name for h in hosts]
    faults: list[Fault] = []
    faulted: list[str] = []

    def when() -> float:
        return round(rng.uniform(1.0, t.fault_window), 2)

    def lasting(lo: float = 0.5, hi: float = 6.0) -> float:
        return round(rng.uniform(lo, hi), 2)

    def episode(start: str, end: str, host: str, at: float, heal_p: float = 0.6) -> None:
        faults.append(Fault(at, start, host))
        if rng.random() < heal_p:
            faults.append(Fault(round(at + lasting(), 2), end, host))

    kinds = {
        "power-loss": 5,
        "blip": 2,
        "isolate": 3,
        "hang": 2,
        "agent-crash": 2,
        "cut": 3,
        "several": 2,
        "bmc-down": 2,
        "bmc-flap": 2,
        "bmc-lies": 2,
        "lose-evacuations": 1,
        "network": 1,
        "server-kill": 2,
    }
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        at = when()
        host = rng.choice(names)
        if kind in ("bmc-down", "bmc-flap", "bmc-lies"):
            # A BMC fault matters on a host that fails: usually one already faulted.
            host = rng.choice(faulted) if faulted and rng.random() < 0.7 else host
            at = round(max(0.5, at - 2.0), 2)
        if kind == "power-loss":
            episode("power-loss", "power-restore", host, at)
        elif kind == "blip":
            faults.append(Fault(at, "power-loss", host))
            blip = round(rng.uniform(0.02, 0.5 * t.declare_min), 3)
            faults.append(Fault(round(at + blip, 3), "power-restore", host))
        elif kind == "isolate":
            episode("isolate", "reconnect", host, at)
        elif kind == "hang":
            episode("hang", "unhang", host, at)
        elif kind == "agent-crash":
            episode("agent-crash", "agent-restart", host, at)
        elif kind == "cut":
            episode("cut", "mend", host, at)
        elif kind == "several":
            for victim in rng.sample(names, rng.randint(2, min(3, n - 1))):
                action = rng.choice(["power-loss", "isolate"])
                heal = "power-restore" if action == "power-loss" else "reconnect"
                episode(action, heal, victim, at)
                faulted.append(victim)
            continue
        elif kind == "bmc-down":
            episode("bmc-down", "bmc-up", host, at, heal_p=0.5)
        elif kind == "bmc-flap":
            flip = at
            for i in range(rng.randint(2, 5)):
                faults.append(Fault(round(flip, 2), "bmc-down" if i % 2 == 0 else "bmc-up", host))
                flip += rng.uniform(0.3, 2.0)
            faults.append(Fault(round(flip, 2), "bmc-up", host))
        elif kind == "bmc-lies":
            episode("bmc-lies", "bmc-honest", host, at, heal_p=0.4)
        elif kind == "lose-evacuations":
            faults.append(Fault(at, "lose-evacuations", None, float(rng.randint(1, 3))))
        elif kind == "network":
            loss = round(rng.uniform(0.0, 0.05), 3)
            jitter = round(rng.uniform(0.0, t.heartbeat_interval), 3)
            faults.append(Fault(at, "network", None, loss, jitter))
            faults.append(Fault(round(at + lasting(2.0, 8.0), 2), "network", None))
        elif kind == "server-kill":
            down_for = round(at + lasting(0.3, 3.0), 2)
            if servers == 1:
                faults.append(Fault(at, "server-kill"))
                faults.append(Fault(down_for, "server-start"))
        if kind not in ("lose-evacuations", "network", "server-kill"):
            faulted.append(host)
    if servers > 1:
        faults += _server_faults(random.Random(seed * 1009 + servers), servers, t)
    faults.sort(key=lambda f: f.at)
    heal_at = round(max(f.at for f in faults) + 1.0, 2)
    faults.append(Fault(heal_at, "heal"))
    return Schedule(seed, mode, hosts, tuple(instances), tuple(faults), servers)


def _server_faults(rng: random.Random, servers: int, t: Timing) -> list[Fault]:
    """One to three faults of servers or of their coordination: a server killed (back
    1-8 s later, or only at the heal), stopped 1-8 s (past its 3 s lease, mostly) and
    continued, or cut off from etcd (a partition, mended 1-8 s later or at the heal);
    or the etcd member a server talks to killed and started again -- sometimes two
    members at once, and etcd has lost its majority."""
    faults: list[Fault] = []
    busy: dict[int, float] = {}  # a server's (and its member's) faults do not overlap
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(servers)
        name = f"vigil-{i}"
        at = round(max(rng.uniform(1.0, t.fault_window), busy.get(i, 0.0) + 0.5), 2)
        back = round(at + rng.uniform(1.0, 8.0), 2)
        kind = rng.random()
        if kind < 0.35:
            faults.append(Fault(at, "server-kill", name))
            if rng.random() < 0.75:
                faults.append(Fault(back, "server-start", name))
        elif kind < 0.55:
            faults.append(Fault(at, "server-stop", name))
            faults.append(Fault(back, "server-cont", name))
        elif kind < 0.75:
            faults.append(Fault(at, "server-cut", name))
            if rng.random() < 0.8:
                faults.append(Fault(back, "server-mend", name))
        else:
            faults.append(Fault(at, "etcd-kill", f"etcd-{i}"))
            faults.append(Fault(back, "etcd-start", f"etcd-{i}"))
            if rng.random() < 0.35:  # a second member: the majority lost
                j = rng.choice([k for k in range(servers) if k != i])
                at2 = round(at + rng.uniform(0.0, 2.0), 2)
                back2 = round(max(at2, busy.get(j, 0.0) + 0.5) + rng.uniform(1.0, 8.0), 2)
                faults.append(Fault(at2, "etcd-kill", f"etcd-{j}"))
                faults.append(Fault(back2, "etcd-start", f"etcd-{j}"))
                busy[j] = max(busy.get(j, 0.0), back2)
        busy[i] = back
    return faults


# ---------------------------------------------------------------------------- checker


@dataclass(frozen=True)
class Observation:
    """What a run saw, as plain data; times are the cloud's clock (monotonic) unless said."""

    t0: float  # the schedule's start
    heal_at: float
    instances: Sequence[SimInstance]
    double_running: Sequence[str]
    power_offs: Sequence[PowerOffRecord]
    evacuations: Sequence[EvacuationRecord]
    faulty_spans: Mapping[str, Sequence[tuple[float, float | None]]]
    recoveries: Sequence[Mapping[str, Any]]  # as GET /v1/recoveries shows them
    server_down: Sequence[tuple[float, float | None]] = ()
    skipped: Sequence[str] = ()  # faults that could not apply
    power_losses: Mapping[str, Sequence[float]] = field(default_factory=dict)
    t0_wall: float | None = None  # time.time() at t0: maps the API's wall times


@dataclass(frozen=True)
class Violation:
    kind: str
    host: str | None
    detail: str
    instance: str | None = None


@dataclass
class Verdict:
    violations: list[Violation] = field(default_factory=list)
    stranded_with_reason: list[str] = field(default_factory=list)
    fenced_after_return: list[str] = field(default_factory=list)
    evacuations_to_fresh_dead: list[str] = field(default_factory=list)
    resets_without_quorum: list[str] = field(default_factory=list)


# withdrawn: a paused declaration taken back (heartbeats returned, or an operator)
ENDED = frozenset({"succeeded", "failed", "withdrawn"})


def fencing_possible(schedule: Schedule, host: str) -> bool:
    """Could vigil have fenced ``host`` whenever it failed? Self-fencing always can; a
    BMC only if the schedule never made it unreachable nor lying."""
    spec = next(h for h in schedule.hosts if h.name == host)
    if "self-fence" in spec.fencing:
        return True
    return not any(f.host == host and f.action in ("bmc-down", "bmc-lies") for f in schedule.faults)


def _segment(schedule: Schedule, host: str) -> str:
    return next(h.segment for h in schedule.hosts if h.name == host)


def _cut_spans(schedule: Schedule, host: str, t0: float) -> list[tuple[float, float | None]]:
    """When the schedule had ``host`` cut from vigil-server only (it still reaches its
    peers): until "mend" or the final "heal"."""
    spans: list[tuple[float, float | None]] = []
    for f in schedule.faults:
        if f.action == "cut" and f.host == host:
            spans.append((t0 + f.at, None))
        elif (
            spans
            and spans[-1][1] is None
            and ((f.action == "mend" and f.host == host) or f.action == "heal")
        ):
            spans[-1] = (spans[-1][0], t0 + f.at)
    return spans


def _vouchers(schedule: Schedule, obs: Observation, host: str, at: float) -> set[str]:
    """The hosts of ``host``'s segment (itself included) that could answer its peers at
    ``at``: healthy, or faulty only because cut from vigil-server."""
    segment = _segment(schedule, host)
    alive = set()
    for h in schedule.hosts:
        if h.segment != segment:
            continue
        spans = obs.faulty_spans.get(h.name, ())
        if not _during(spans, at):
            alive.add(h.name)
            continue
        # Faulty only because cut from the server: it still answers its peers, unless it
        # lost power (a fence, a reset, a fault) since the cut began.
        cut = [(s, e) for s, e in _cut_spans(schedule, h.name, obs.t0) if _during([(s, e)], at)]
        losses = obs.power_losses.get(h.name, ())
        if cut and not any(cut[0][0] <= lost <= at for lost in losses):
            alive.add(h.name)
    return alive


def _up_at_end(schedule: Schedule, obs: Observation, host: str) -> list[str]:
    """The other hosts of ``host``'s segment that could run an instance at the end of the
    run: healthy, and never fenced by vigil (a fenced host is out of service until an
    operator restores it, as documented, even if its power came back)."""
    segment = _segment(schedule, host)
    fenced = {
        str(r.get("host"))
        for r in obs.recoveries
        if any(
            st.get("kind") == "fence" and st.get("status") == "succeeded"
            for st in r.get("steps", [])
        )
    }
    return [
        h.name
        for h in schedule.hosts
        if h.segment == segment
        and h.name != host
        and h.name not in fenced
        and not any(end is None for _start, end in obs.faulty_spans.get(h.name, ()))
    ]


def _during(spans: Sequence[tuple[float, float | None]], at: float) -> bool:
    return any(start <= at and (end is None or at < end) for start, end in spans)


def check(schedule: Schedule, timing: Timing, obs: Observation) -> Verdict:
    """Judge one run from the cloud's ground truth (pure)."""
    v = Verdict()
    rel = obs.t0
    names = {i.id: i.name for i in obs.instances}
    for iid in obs.double_running:
        inst = next((i for i in obs.instances if i.id == iid), None)
        v.violations.append(
            Violation(
                "double-running",
                inst.host if inst else None,
                f"{names.get(iid, iid)} ran on two hosts at once",
                names.get(iid, iid),
            )
        )
    for r in obs.power_offs:
        if not r.effective or not r.condition.healthy:
            continue
        spans = obs.faulty_spans.get(r.host, ())
        real = [(s, e) for s, e in spans if s < r.at and (e or r.at) - s >= timing.declare_min]
        what = "BMC power-off" if r.cause == "bmc" else "watchdog reset"
        if real:
            v.fenced_after_return.append(
                f"{r.host}: {what} at t+{r.at - rel:.2f}, healthy again since "
                f"t+{(r.condition.healthy_since or 0) - rel:.2f}"
            )
            continue
        server_down = _during(obs.server_down, r.at)
        if r.cause != "bmc" and server_down:
            alive = _vouchers(schedule, obs, r.host, r.at - 0.05)
            members = [h.name for h in schedule.hosts if h.segment == _segment(schedule, r.host)]
            if len(alive) * 2 <= len(members):
                # The peer rule's promise holds only while a strict majority of the
                # segment can vouch that vigil is gone for them too: with vigil down and
                # half of it down as well, a host cannot tell that from being the one cut
                # off (its reset is what lets the server confirm it, if it is).
                v.resets_without_quorum.append(
                    f"{r.host}: watchdog reset at t+{r.at - rel:.2f} with vigil-server down "
                    f"and only {len(alive)} of {len(members)} hosts of its segment able to "
                    f"vouch ({', '.join(sorted(alive)) or 'none'})"
                )
                continue
        note = " (vigil-server was down)" if server_down else ""
        short = ", ".join(f"t+{s - rel:.2f}..t+{(e or r.at) - rel:.2f}" for s, e in spans)
        v.violations.append(
            Violation(
                "healthy-fenced",
                r.host,
                f"{what} of {r.host} at t+{r.at - rel:.2f}{note}: healthy since "
                f"t+{(r.condition.healthy_since or 0) - rel:.2f}, never faulty for "
                f"{timing.declare_min:.2f}s (faulty spans: {short or 'none'})",
            )
        )
    origin = {i.name: i.host for i in schedule.instances}
    failed_hosts = {str(r["host"]) for r in obs.recoveries if r.get("status") == "failed"}
    for inst in obs.instances:
        if inst.metadata.get(POLICY_KEY) != HaPolicy.KEEP_RUNNING.value:
            continue
        if inst.running_on:
            continue
        state = (
            f"{inst.name} (placed on {origin.get(inst.name, '?')} at the start) is "
            f"{inst.status} on {inst.host} (task {inst.task_state}), running nowhere"
        )
        if inst.host in failed_hosts:
            reasons = "; ".join(
                str(r.get("reason"))
                for r in obs.recoveries
                if r.get("host") == inst.host and r.get("status") == "failed"
            )
            if not fencing_possible(schedule, inst.host):
                v.stranded_with_reason.append(f"{state}: {reasons}")
                continue
            if not _up_at_end(schedule, obs, inst.host):
                # Every other host of its segment was down at the end (fenced, off,
                # isolated): nowhere to run it, whoever recovers. Whether those hosts
                # were rightly fenced is judged above (``healthy-fenced``).
                v.stranded_with_reason.append(
                    f"{state}: {reasons} (no other host of segment "
                    f"{_segment(schedule, inst.host)} up at the end)"
                )
                continue
            state += f"; vigil's failed recovery says: {reasons} (fencing was possible)"
        v.violations.append(Violation("stranded", inst.host, state, inst.name))
    for rec in obs.recoveries:
        if rec.get("status") in ENDED:
            continue
        open_steps = ", ".join(
            f"{st.get('kind')} {st.get('instance_name') or ''}".strip() + f"={st.get('status')}"
            for st in rec.get("steps", [])
            if st.get("status") not in ENDED
        )
        v.violations.append(
            Violation(
                "endless-recovery",
                str(rec.get("host")),
                f"recovery {rec.get('id')} of {rec.get('host')} still {rec.get('status')} "
                f"{timing.settle_bound:.0f}s after the heal: {rec.get('reason')}; open steps: "
                f"{open_steps or 'none'}",
            )
        )
    if obs.t0_wall is not None:
        for rec in obs.recoveries:
            for st in rec.get("steps", []):
                if st.get("kind") != "fence" or st.get("status") != "succeeded":
                    continue
                done = st.get("finished_at")
                if done is None:
                    continue
                host = str(rec.get("host"))
                end = obs.t0 + (float(done) - obs.t0_wall)
                start = obs.t0 + (float(rec.get("created_at", done)) - obs.t0_wall) - 10.0
                losses = obs.power_losses.get(host, ())
                if any(start <= at <= end + 0.2 for at in losses):
                    continue
                v.violations.append(
                    Violation(
                        "fence-confirmed-while-running",
                        host,
                        f"recovery {rec.get('id')}: fence of {host} succeeded at "
                        f"t+{end - rel:.2f} ({st.get('detail')}) but the host had not lost "
                        f"power since t+{start - rel:.2f} (power losses: "
                        + (", ".join(f"t+{a - rel:.2f}" for a in losses) or "none")
                        + ")",
                    )
                )
    for e in obs.evacuations:
        c = e.dest_condition
        if e.dest is None or c is None or c.compute_works:
            continue
        down_for = e.at - (c.compute_down_since or e.at)
        text = (
            f"evacuation of {names.get(e.instance, e.instance)} from {e.source} at "
            f"t+{e.at - rel:.2f} aimed at {e.dest} ({'named' if e.named else 'Nova chose'}), "
            f"{c.describe()} for {down_for:.2f}s"
        )
        if down_for >= timing.failed_after + timing.known_down_margin:
            v.violations.append(
                Violation("evacuation-to-down-host", e.dest, text, names.get(e.instance))
            )
        else:
            v.evacuations_to_fresh_dead.append(text)
    _done_twice(schedule, obs, v)
    return v


def _done_twice(schedule: Schedule, obs: Observation, v: Verdict) -> None:
    """``fenced-twice``: a BMC power-off of a host that an earlier BMC power-off had really
    turned off, with no power restored in between (by the schedule's clock, as applied)
    and a BMC that never lied (then a second try is right) -- a server that lost its
    segment, or one that resumed another's recovery, fencing again what was fenced (a
    fence reads the power first). An instance evacuated twice needs no check of its own
    here: the cloud, as Nova, accepts an evacuation only from the host the instance is
    on and not while one is under way, and two copies are ``double-running``."""
    rel = obs.t0
    for host in {r.host for r in obs.power_offs}:
        if any(f.host == host and f.action == "bmc-lies" for f in schedule.faults):
            continue
        restores = [
            rel + f.at
            for f in schedule.faults
            if (f.action == "power-restore" and f.host == host) or f.action == "heal"
        ]
        offs = sorted(
            (r for r in obs.power_offs if r.host == host and r.cause == "bmc"), key=lambda r: r.at
        )
        for off, again in itertools.pairwise(offs):
            if off.effective and not any(off.at < t <= again.at for t in restores):
                v.violations.append(
                    Violation(
                        "fenced-twice",
                        host,
                        f"{host} powered off by its BMC at t+{off.at - rel:.2f} and asked "
                        f"again at t+{again.at - rel:.2f} with no power restored between",
                    )
                )


# ----------------------------------------------------------------------------- runner


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = pred()
            if value:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class RunResult:
    schedule: Schedule
    verdict: Verdict
    duration: float
    state_dir: str
    log_excerpts: dict[str, list[str]]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.schedule.seed,
            "schedule": self.schedule.describe(),
            "duration_s": round(self.duration, 1),
            "violations": [asdict(x) for x in self.verdict.violations],
            "stranded_with_reason": self.verdict.stranded_with_reason,
            "fenced_after_return": self.verdict.fenced_after_return,
            "evacuations_to_fresh_dead": self.verdict.evacuations_to_fresh_dead,
            "resets_without_quorum": self.verdict.resets_without_quorum,
            "state_dir": self.state_dir,
            "log_excerpts": self.log_excerpts,
            "error": self.error,
        }


def _log_excerpts(logs: Sequence[Path], verdict: Verdict, limit: int = 25) -> dict[str, list[str]]:
    """Per violating host, the servers' warnings and recovery lines that name it (each
    line prefixed with its server when there are several)."""
    lines: list[str] = []
    for log in logs:
        prefix = f"{log.stem}: " if len(logs) > 1 else ""
        with contextlib.suppress(OSError):
            lines += [prefix + ln for ln in log.read_text(errors="replace").splitlines()]
    out: dict[str, list[str]] = {}
    for viol in verdict.violations:
        key = viol.host or "-"
        if key in out:
            continue
        words = [w for w in (viol.host, viol.instance) if w]
        hits = [
            ln
            for ln in lines
            if any(w in ln for w in words)
            and any(m in ln for m in ("WARNING", "ERROR", "INFO vigil.engine", "recover", "fenc"))
        ]
        out[key] = hits[-limit:]
    return out


@dataclass(frozen=True)
class Cluster:
    """Where several servers run: an empty database of the schedule's own on a database
    server, and each server's coordination URL (its own etcd member, as on three
    controllers); ``namespace`` keeps schedules sharing a backend apart."""

    database_url: str
    backend_urls: tuple[str, ...]
    namespace: str
    # What breaks the coordination (etcd members killed, servers cut off from them);
    # without it, schedules with such faults skip them.
    faults: ClusterFaults | None = None


class ClusterFaults(Protocol):
    """The coordination faults of a cluster: its etcd members (member ``k`` is the one
    server ``k``'s ``backend_urls`` entry reaches) and the path from each server to it."""

    def member(self, k: int, up: bool) -> None:
        """Kill member ``k`` (SIGKILL, its data kept), or start it again (not waiting)."""

    def cut(self, i: int, cut: bool) -> None:
        """Drop (or forward again) every packet between server ``i`` and its member."""


# Ownership timing of the servers (not accelerated: etcd counts leases in whole
# seconds): a killed or stopped owner's segments move after about lease_ttl.
COORDINATION = {"lease_ttl": "3", "renew_interval": "0.5", "call_timeout": "1", "margin": "0.5"}


class _Api:
    """The operator API through whichever server answers: the first that does, in turn
    (a killed one refuses at once; a stopped one times out after ``timeout``)."""

    def __init__(self, clients: Sequence[Any]) -> None:
        self._clients = list(clients)

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        import httpx

        last: Exception | None = None
        for client in list(self._clients):
            try:
                answer = client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                last = exc
                continue
            if answer.status_code >= 500:
                last = httpx.HTTPStatusError(
                    f"{answer.status_code}", request=answer.request, response=answer
                )
                continue
            self._clients.remove(client)  # asked first next time
            self._clients.insert(0, client)
            return answer
        raise last or RuntimeError("no vigil-server")

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._call("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self._call("POST", url, **kwargs)

    def close(self) -> None:
        for client in self._clients:
            client.close()


class _Servers:
    """The vigil-server processes of a run: one on SQLite, or several on a ``Cluster``.

    ``down`` holds the spans when vigil could not act on the hosts: with one server, from
    its kill until it answers again; with several, from a kill or stop of one of them
    until its segments can have moved (lease_ttl + 2 s) or it is back -- whichever the
    checker's excuse ("a reset with vigil down") needs."""

    def __init__(
        self,
        schedule: Schedule,
        t: Timing,
        state_dir: Path,
        *,
        token: str,
        key: str,
        cloud_url: str,
        cluster: Cluster | None,
        env: dict[str, str],
        cwd: str | None,
    ) -> None:
        import httpx

        self._env, self._cwd = env, cwd
        self._cluster = cluster
        self.names = [f"vigil-{i}" for i in range(schedule.servers)]
        self.cut: set[str] = set()  # servers cut off from their etcd member
        self.etcd_down: set[int] = set()  # etcd members killed
        self._no_majority: int | None = None  # the open span of ``down`` while etcd has none
        self.confs: dict[str, Path] = {}
        self.logs: list[Path] = []
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {n: [] for n in self.names}
        self.stopped: set[str] = set()
        self.down: list[tuple[float, float | None]] = []
        self._takeover = float(COORDINATION["lease_ttl"]) + 2.0
        self.heartbeat_addresses: list[tuple[str, int]] = []
        clients = []
        for i, name in enumerate(self.names):
            api_port, hb_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
            self.heartbeat_addresses.append(("127.0.0.1", hb_port))
            groups: dict[str, dict[str, str]] = {
                "database": {"connection": f"sqlite:///{state_dir / 'vigil.db'}"},
                "api": {"port": str(api_port), "auth_token": token},
                "agent": {"key": key, "listen_port": str(hb_port), "accept_master_key": "true"},
                "compute": {"sim_url": cloud_url},
                "notifier": {"drivers": "memory"},
                **t.overrides(),
            }
            if cluster is not None:
                groups["database"] = {"connection": cluster.database_url}
                groups["coordination"] = {
                    "backend_url": cluster.backend_urls[i % len(cluster.backend_urls)],
                    "namespace": cluster.namespace,
                    "member_id": name,
                    **COORDINATION,
                }
            conf = state_dir / f"{name}.conf" if cluster else state_dir / "vigil.conf"
            conf.write_text(
                "".join(
                    f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
                    for g, opts in groups.items()
                )
            )
            self.confs[name] = conf
            self.logs.append(state_dir / (f"{name}.log" if cluster else "server.log"))
            clients.append(
                httpx.Client(
                    base_url=f"http://127.0.0.1:{api_port}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=2.0 if cluster else 10.0,
                )
            )
        self._clients = clients
        self.api = _Api(clients)

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    def _running(self, name: str) -> bool:
        procs = self.procs[name]
        return bool(procs) and procs[-1].poll() is None

    def healthy(self) -> bool:
        """Some server answers (and is not stopped)."""
        return any(
            self._running(n) and n not in self.stopped and _answers(c)
            for n, c in zip(self.names, self._clients, strict=True)
        )

    def ready(self) -> bool:
        """Every server answers; with several, each knows them all."""
        if not all(_answers(c) for c in self._clients):
            return False
        if not self.several:
            return True
        members = self._clients[0].get("/v1/servers").json()["members"]
        return set(members) == set(self.names)

    def start_all(self) -> None:
        for name in self.names:
            self._start(name)

    def _start(self, name: str) -> None:
        log = self.logs[self.names.index(name)]
        with open(log, "ab") as out:
            self.procs[name].append(
                subprocess.Popen(
                    [sys.executable, "-m", "vigil.server", "--config-file", str(self.confs[name])],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    cwd=self._cwd or None,
                )
            )
        if not self.several and self.down and self.down[-1][1] is None:
            threading.Thread(target=self._mark_up, daemon=True).start()

    def _mark_up(self) -> None:
        # The server is down until it answers again, not merely until it is started
        # (its start-up takes seconds on a loaded machine).
        with contextlib.suppress(TimeoutError):
            _wait(self.healthy, 30, "vigil-server to answer")
        if self.down and self.down[-1][1] is None:
            self.down[-1] = (self.down[-1][0], time.monotonic())

    def apply(self, action: str, name: str) -> str:
        """A server fault; the reason it could not apply, or ""."""
        if name not in self.procs:
            return f"no server {name}"
        proc = self.procs[name][-1] if self.procs[name] else None
        now = time.monotonic()
        if action == "server-kill":
            if proc is None or proc.poll() is not None:
                return "not running"
            proc.kill()
            proc.wait(10)
            self.stopped.discard(name)
            self.down.append((now, now + self._takeover) if self.several else (now, None))
        elif action == "server-start":
            if proc is not None and proc.poll() is None:
                return "already running"
            self._start(name)
        elif action == "server-stop":
            if proc is None or proc.poll() is not None or name in self.stopped:
                return "not running"
            proc.send_signal(signal.SIGSTOP)
            self.stopped.add(name)
            self.down.append((now, now + self._takeover))
        elif action == "server-cont":
            if name not in self.stopped or proc is None:
                return "not stopped"
            proc.send_signal(signal.SIGCONT)
            self.stopped.discard(name)
        elif action in ("server-cut", "server-mend"):
            faults = self._cluster.faults if self._cluster else None
            if faults is None:
                return "no coordination to cut"
            if (name in self.cut) == (action == "server-cut"):
                return "already cut" if name in self.cut else "not cut"
            faults.cut(self.names.index(name), action == "server-cut")
            if action == "server-cut":
                self.cut.add(name)
                self.down.append((now, now + self._takeover))  # its segments move
            else:
                self.cut.discard(name)
        return ""

    def apply_etcd(self, action: str, member: str) -> str:
        """An etcd fault (member "etcd-<k>"); the reason it could not apply, or ""."""
        faults = self._cluster.faults if self._cluster else None
        if faults is None or self._cluster is None:
            return "no etcd cluster"
        size = len(self._cluster.backend_urls)
        k = int(member.rsplit("-", 1)[1])
        if not 0 <= k < size:
            return f"no member {member}"
        now = time.monotonic()
        if (k in self.etcd_down) == (action == "etcd-kill"):
            return "not running" if k in self.etcd_down else "running"
        faults.member(k, action == "etcd-start")
        if action == "etcd-kill":
            self.etcd_down.add(k)
            self.down.append((now, now + self._takeover))  # server k's segments move
        else:
            self.etcd_down.discard(k)
        lost = size - len(self.etcd_down) < size // 2 + 1
        if lost and self._no_majority is None:
            # No server can renew a lease: none acts until the majority is back.
            self.down.append((now, None))
            self._no_majority = len(self.down) - 1
        elif not lost and self._no_majority is not None:
            start = self.down[self._no_majority][0]
            self.down[self._no_majority] = (start, now + self._takeover)
            self._no_majority = None
        return ""

    def heal(self) -> None:
        """Every server running again."""
        for k in sorted(self.etcd_down):
            self.apply_etcd("etcd-start", f"etcd-{k}")
        for name in self.names:
            if name in self.stopped:
                self.apply("server-cont", name)
            if name in self.cut:
                self.apply("server-mend", name)
            if not self._running(name):
                self._start(name)

    def stop_all(self) -> None:
        for name in self.names:
            for proc in self.procs[name]:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        self.api.close()


def _answers(client: Any) -> bool:
    try:
        return bool(client.get("/healthz").status_code == 200)
    except Exception:
        return False


def run_schedule(
    schedule: Schedule,
    timing: Timing | None = None,
    *,
    state_dir: Path,
    keep: bool = False,
    server_src: str | None = None,
    cluster: Cluster | None = None,
) -> RunResult:
    """Run ``schedule`` against a real vigil-server subprocess (or ``schedule.servers``
    of them, on ``cluster``'s database and coordination backend) and judge it.

    ``state_dir`` holds the server's config, SQLite file and ``server.log``; it is removed
    when the run has no violation, unless ``keep``. ``server_src``: a directory whose
    ``vigil`` package the server runs (e.g. a ``git archive`` of one commit, so that a
    working tree in the middle of an edit does not break the runs); default: this one.
    """
    import os
    import shutil

    from vigil.clock import SystemClock
    from vigil.sim.agents import SimAgents
    from vigil.sim.cloud import SimCloud, SimLatency
    from vigil.sim.rpc import serve_cloud

    t = timing or Timing()
    started = time.monotonic()
    shutil.rmtree(state_dir, ignore_errors=True)  # a fresh database: a rerun starts clean
    state_dir.mkdir(parents=True)
    cloud = SimCloud(
        SystemClock(),
        latency=SimLatency(
            api_call=0.005,
            evacuate=0.3,
            power_off=0.15,
            bmc_timeout=0.3,
            boot=t.boot,
            power_sync=t.power_sync,
        ),
        service_down_time=t.service_down_time,
        dead_destination_hangs=True,
        seed=schedule.seed,
    )
    for h in schedule.hosts:
        cloud.add_host(h.name, capacity=40)
    for i in schedule.instances:
        cloud.add_instance(i.name, i.host, policy=HaPolicy(i.policy), priority=i.priority)
    token, key = f"tok-{schedule.seed}", f"key-{schedule.seed}"
    cloud_server, cloud_url = serve_cloud(cloud)
    env = dict(os.environ)
    if server_src:
        env["PYTHONPATH"] = os.pathsep.join([server_src, env.get("PYTHONPATH", "")])
    if schedule.servers > 1 and cluster is None:
        raise ValueError("several servers need a cluster (a database and a backend)")
    servers = _Servers(
        schedule,
        t,
        state_dir,
        token=token,
        key=key,
        cloud_url=cloud_url,
        cluster=cluster,
        env=env,
        cwd=server_src,
    )
    api = servers.api
    down = servers.down
    healthy = servers.healthy
    self_fencing = [h.name for h in schedule.hosts if "self-fence" in h.fencing]
    # Each self-fencing agent's peers are the other hosts of its segment, as configured
    # on a real host.
    members = {s: [h.name for h in schedule.hosts if h.segment == s] for s in schedule.segments}
    agents = SimAgents(
        cloud,
        servers=servers.heartbeat_addresses,
        key=key.encode(),
        interval=t.heartbeat_interval,
        seed=schedule.seed,
        self_fencing=self_fencing,
        watchdog_timeout=t.watchdog_timeout,
        peers={h.name: members[h.segment] for h in schedule.hosts},
        peer_interval=t.peer_interval,
        peer_timeout=t.peer_timeout,
    )
    skipped: list[str] = []
    error: str | None = None
    recoveries: list[dict[str, Any]] = []
    t0 = heal_at = time.monotonic()
    t0_wall = time.time()
    try:
        servers.start_all()
        _wait(servers.ready, 60, "every vigil-server to answer (and own its segments)")
        for seg in schedule.segments:
            api.post(
                "/v1/segments", json={"name": seg, "max_parallel_evacuations": 4}
            ).raise_for_status()
        for h in schedule.hosts:
            api.post(
                "/v1/hosts",
                json={
                    "name": h.name,
                    "segment": h.segment,
                    "fencing": [{"driver": d} for d in h.fencing],
                },
            ).raise_for_status()
        agents.start()
        _wait(
            lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
            20,
            "every host's first heartbeat",
        )
        time.sleep(2 * t.lease_ttl)  # self-fencing hosts hold a lease before anything fails
        t0, t0_wall = time.monotonic(), time.time()
        cut_power: set[str] = set()
        for f in schedule.faults:
            delay = t0 + f.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                _apply(cloud, f, cut_power, servers, skipped)
            except ValueError as exc:
                skipped.append(f"{f.describe()}: {exc}")
            if f.action == "heal":
                heal_at = time.monotonic()
        _wait(healthy, 30, "vigil-server to answer after the heal")
        recoveries = _settle(api, cloud, t, heal_at)
    except Exception as exc:  # the run itself broke: reported, never a silent pass
        error = f"{type(exc).__name__}: {exc}"
    finally:
        # The ground truth as it stands at the end of the run, before anything is
        # stopped: what the teardown does (agents losing their servers, servers their
        # agents, one by one) is not part of the schedule.
        obs = Observation(
            t0=t0,
            heal_at=heal_at,
            instances=cloud.instances(),
            double_running=cloud.double_running(),
            power_offs=cloud.power_offs(),
            evacuations=cloud.evacuations(),
            faulty_spans=cloud.faulty_spans(),
            recoveries=recoveries,
            server_down=down,
            skipped=skipped,
            power_losses=cloud.power_losses(),
            t0_wall=t0_wall,
        )
        servers.stop_all()
        agents.stop()
        cloud_server.close()
    verdict = check(schedule, t, obs)
    if error is not None:
        verdict.violations.append(Violation("run-error", None, error))
    excerpts = _log_excerpts(servers.logs, verdict)
    if verdict.violations or keep:
        (state_dir / "ground-truth.json").write_text(
            json.dumps(
                {
                    "schedule": schedule.describe(),
                    "skipped": skipped,
                    "t0": t0,
                    "power_offs": [asdict(r) for r in obs.power_offs],
                    "evacuations": [asdict(r) for r in obs.evacuations],
                    "faulty_spans": obs.faulty_spans,
                    "power_losses": obs.power_losses,
                    "t0_wall": t0_wall,
                    "instances": [
                        {**asdict(i), "running_on": sorted(i.running_on)} for i in obs.instances
                    ],
                    "recoveries": recoveries,
                },
                indent=1,
                default=str,
            )
        )
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
    return RunResult(schedule, verdict, time.monotonic() - started, str(state_dir), excerpts, error)


def _apply(
    cloud: Any,
    f: Fault,
    cut_power: set[str],
    servers: _Servers,
    skipped: list[str],
) -> None:
    """Apply one fault to the cloud (or to a server process)."""
    h = f.host or ""
    a = f.action
    if a == "power-loss":
        cut_power.add(h)
        cloud.power_loss(h)
    elif a == "power-restore":
        cut_power.discard(h)
        cloud.power_restore(h)
    elif a in ("isolate", "reconnect"):
        (cloud.isolate if a == "isolate" else cloud.reconnect)(h)
    elif a == "hang":
        cloud.hang(h)
    elif a == "unhang":
        cloud.unhang(h)
    elif a == "agent-crash":
        cloud.agent_crash(h)
    elif a == "agent-restart":
        cloud.agent_restart(h)
    elif a in ("cut", "mend"):
        cloud.cut_from_server(h, a == "cut")
    elif a in ("bmc-down", "bmc-up"):
        cloud.bmc_unreachable(h, a == "bmc-down")
    elif a in ("bmc-lies", "bmc-honest"):
        cloud.bmc_lies(h, a == "bmc-lies")
    elif a == "lose-evacuations":
        cloud.lose_evacuations(int(f.value))
    elif a == "network":
        cloud.set_network(f.value, f.value2)
    elif a in SERVER_ACTIONS or a in ETCD_ACTIONS:
        apply = servers.apply if a in SERVER_ACTIONS else servers.apply_etcd
        problem = apply(a, f.host or "vigil-0")
        if problem:
            skipped.append(f"{f.describe()}: {problem}")
    elif a == "heal":
        servers.heal()
        cloud.set_network(0.0, 0.0)
        cloud.lose_evacuations(0)
        for host in cloud.hosts():
            cloud.bmc_unreachable(host, False)
            cloud.bmc_lies(host, False)
            cloud.cut_from_server(host, False)
            cloud.reconnect(host)
            cloud.unhang(host)
            if host in cut_power and not cloud.is_powered(host):
                cloud.power_restore(host)
            if cloud.is_powered(host):
                cloud.agent_restart(host)
    else:
        raise ValueError(f"unknown fault action {a}")


def _settle(api: Any, cloud: Any, t: Timing, heal_at: float) -> list[dict[str, Any]]:
    """Wait until every recovery has ended and every keep-running instance runs, for
    ``settle_quiet`` s (at least ``settle_min`` s after the heal), or ``settle_bound``;
    return the recoveries as the API shows them then."""
    quiet_since: float | None = None
    recoveries: list[dict[str, Any]] = []
    while True:
        now = time.monotonic()
        try:
            recoveries = api.get("/v1/recoveries", params={"limit": 1000}).json()
        except Exception:  # a server restarting answers a moment later
            recoveries = recoveries or []
            settled = False
        else:
            settled = all(r["status"] in ENDED for r in recoveries) and all(
                i.running_on
                for i in cloud.instances()
                if i.metadata.get(POLICY_KEY) == HaPolicy.KEEP_RUNNING.value
            )
        if not settled:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        if now - heal_at >= t.settle_min and quiet_since and now - quiet_since >= t.settle_quiet:
            return recoveries
        if now - heal_at >= t.settle_bound:
            return recoveries
        time.sleep(0.25)
