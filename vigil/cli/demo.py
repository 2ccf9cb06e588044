"""``vigil demo``: a host fails in a simulated cloud and vigil brings its VMs back.

Everything real but the cloud: vigil-server (SQLite store, engine, REST API) runs
in-process, every simulated host's agent sends signed UDP heartbeats to it, and the demo
watches the recovery through the REST API like an operator would. The simulated cloud
(``vigil.sim``) plays Nova and the BMCs and keeps the books on where each VM's copies
run, so "never twice" is checked, not assumed.

``run_scenario`` is also the harness of the end-to-end tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from vigil import config
from vigil.clock import SystemClock
from vigil.model import HaPolicy
from vigil.server import VigilServer
from vigil.sim.agents import SimAgents
from vigil.sim.cloud import SimCloud
from vigil.sim.senders import CloudFollower, SenderProcesses

SCENARIOS = {
    "power-loss": "power cut",
    "isolation": "network cut off (host and its VMs keep running)",
    "hung": "host hung (frozen, still powered)",
    "agent-crash": "vigil agent crashed (host and VMs keep running)",
}

# Beyond this many hosts the demo's heartbeats come from processes of their own.
SENDER_PROCESSES_ABOVE = 1000


@dataclass
class DemoOptions:
    scenario: str = "power-loss"
    hosts: int = 4
    instances: int = 20
    seed: int = 0
    timeout: float = 30.0
    overrides: Sequence[str] = ()
    state_dir: str | None = None
    # Optional changes to the world before the fault (tests: BMC unreachable, ...).
    prepare: Callable[[SimCloud, str], None] | None = None
    # Hosts also self-fence: a lease and a watchdog, tried after their BMC.
    self_fencing: bool = False


@dataclass
class Timeline:
    t0: float
    out: TextIO | None
    seen: set[str] = field(default_factory=set)

    def mark(self, key: str, at: float, text: str) -> None:
        if key in self.seen:
            return
        self.seen.add(key)
        if self.out is not None:
            self.out.write(f"  +{at - self.t0:7.3f}s  {text}\n")
            self.out.flush()


def build_cloud(opts: DemoOptions) -> SimCloud:
    cloud = SimCloud(SystemClock(), seed=opts.seed)
    for i in range(1, opts.hosts + 1):
        cloud.add_host(f"compute-{i}", capacity=max(20, opts.instances))
    for i in range(opts.instances):
        host = f"compute-{i % opts.hosts + 1}"
        cloud.add_instance(
            f"vm-{i + 1:02d}", host, policy=HaPolicy.KEEP_RUNNING, priority=10 if i % 4 == 0 else 0
        )
    return cloud


def _settings(opts: DemoOptions, state_dir: Path) -> config.Settings:
    conf = config.load([], config_files=[])
    defaults = [
        f"database.connection=sqlite:///{state_dir / 'vigil.db'}",
        "api.port=0",
        "agent.listen_port=0",
        f"api.auth_token={config.random_secret()}",
        f"agent.key={config.random_secret()}",
        # The demo's simulated agents sign every host's heartbeats with the one key.
        "agent.accept_master_key=true",
        "notifier.drivers=memory",
    ]
    config.apply_overrides(conf, [*defaults, *opts.overrides])
    return config.settings_from_conf(conf)


def _wait(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


class Harness:
    """A running vigil-server, a simulated cloud and its agents, driven through the API.

    Used as a context manager by the demo and the end-to-end tests.
    """

    def __init__(self, opts: DemoOptions, *, segment: dict[str, Any] | None = None) -> None:
        self.opts = opts
        self._tmp = tempfile.TemporaryDirectory(prefix="vigil-demo-")
        self.settings = _settings(opts, Path(opts.state_dir or self._tmp.name))
        self.cloud = build_cloud(opts)
        self.server = VigilServer(self.settings, cloud=self.cloud)
        # Up to SENDER_PROCESSES_ABOVE hosts, one thread of this process sends every
        # host's heartbeats (and runs the self-fencing hosts' watchdogs); beyond, the
        # signing alone would starve the in-process server: processes of their own send
        # them, following the cloud.
        self.agents: SimAgents | None = None
        self.senders: SenderProcesses | None = None
        self._follower: CloudFollower | None = None
        if opts.hosts > SENDER_PROCESSES_ABOVE and not opts.self_fencing:
            loss, jitter = self.cloud.network()
            self.senders = SenderProcesses(
                self.cloud.hosts(),
                {h: self.cloud.boot_id(h) for h in self.cloud.hosts()},
                addresses=[self.server.heartbeat_address],
                key=self.settings.agent_key.encode(),
                interval=self.settings.detection.heartbeat_interval,
                loss=loss,
                jitter=jitter,
                seed=opts.seed,
            )
            self._follower = CloudFollower(self.cloud, self.senders)
        else:
            self.agents = SimAgents(
                self.cloud,
                server=self.server.heartbeat_address,
                key=self.settings.agent_key.encode(),
                interval=self.settings.detection.heartbeat_interval,
                seed=opts.seed,
                self_fencing=self.cloud.hosts() if opts.self_fencing else (),
                watchdog_timeout=self.settings.self_fencing.watchdog_timeout,
                # Every host is in the one segment "demo": the others are its peers.
                peers={h: self.cloud.hosts() for h in self.cloud.hosts()},
                peer_interval=self.settings.self_fencing.peer_interval,
                peer_timeout=self.settings.self_fencing.peer_timeout,
            )
        self._segment = {"name": "demo", "max_parallel_evacuations": 8, **(segment or {})}
        self.api: httpx.Client | None = None

    def __enter__(self) -> Harness:
        self.server.start()
        api = self.api = httpx.Client(
            base_url=self.server.api_url,
            headers={"Authorization": f"Bearer {self.settings.api_token}"},
            timeout=30.0,  # listing 10,000 hosts while they first beat takes a while
        )
        api.post("/v1/segments", json=self._segment).raise_for_status()
        fencing: list[dict[str, Any]] = [{"driver": "sim"}]
        if self.opts.self_fencing:
            fencing.append({"driver": "self-fence"})
        names = self.cloud.hosts()
        for start in range(0, len(names), 1000):  # registered a thousand at a time
            api.post(
                "/v1/host-batches",
                json={
                    "hosts": [
                        {"name": name, "segment": "demo", "fencing": fencing}
                        for name in names[start : start + 1000]
                    ]
                },
            ).raise_for_status()
        if self.agents is not None:
            self.agents.start()
        if self.senders is not None and self._follower is not None:
            self.senders.start()
            self._follower.start()
        # Listing every host costs the server more the more there are: asked less often
        # at scale, with time for the first heartbeats of every host to be recorded.
        count = len(self.cloud.hosts())
        _wait(
            lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
            10 + count / 200,
            "every host's first heartbeat",
            every=min(1.0, 0.02 + count / 10_000),
        )
        if self.opts.self_fencing:  # granted by the segment's owner once it took it
            hosts = set(self.cloud.hosts())
            agents = self.agents
            assert agents is not None
            _wait(lambda: agents.leased() >= hosts, 10, "every host's first lease")
            # ... and its next heartbeats acknowledge it: until the server has heard that,
            # it cannot count on the host's watchdog (``LeaseKeeper.armed``)
            time.sleep(2 * self.settings.detection.heartbeat_interval)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._follower is not None:
            self._follower.stop()
        if self.senders is not None:
            self.senders.close()
        if self.agents is not None:
            self.agents.stop()
        if self.api is not None:
            self.api.close()
        self.server.stop()
        self._tmp.cleanup()

    @property
    def client(self) -> httpx.Client:
        assert self.api is not None, "use the harness as a context manager"
        return self.api

    def inject(self, scenario: str, host: str) -> float:
        """Inject a fault; returns its wall-clock time."""
        fault = {
            "power-loss": self.cloud.power_loss,
            "isolation": self.cloud.isolate,
            "hung": self.cloud.hang,
            "agent-crash": self.cloud.agent_crash,
        }[scenario]
        t0 = time.time()
        fault(host)
        return t0

    def watch(
        self,
        host: str,
        t0: float,
        *,
        out: TextIO | None = None,
        timeout: float = 30.0,
        until: tuple[str, ...] = ("succeeded", "failed"),
    ) -> dict[str, Any] | None:
        """Follow the host's latest recovery through the API, printing a timeline, until
        its status is one of ``until`` (or the timeout); return it as the API shows it."""
        tl = Timeline(t0, out)
        api = self.client
        recovery: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = api.get(f"/v1/hosts/{host}").json()
            if view["state"] == "suspect":
                tl.mark(
                    "suspect", view["state_changed_at"], f"{host} suspect: {view['state_reason']}"
                )
            # Only a recovery of this failure: one the host had before does not count.
            recs = [
                r
                for r in api.get("/v1/recoveries", params={"host": host}).json()
                if r["created_at"] >= t0
            ]
            if recs:
                recovery = recs[0]
                tl.mark("declared", recovery["created_at"], f"{host} failed: {recovery['reason']}")
                for step in sorted(recovery["steps"], key=lambda s: s["finished_at"] or 1e20):
                    if step["status"] in ("succeeded", "failed") and step["finished_at"]:
                        what = step["kind"] + (
                            f" {step['instance_name']}" if step["instance_name"] else ""
                        )
                        tl.mark(
                            f"step{step['id']}",
                            step["finished_at"],
                            f"{what} {step['status']}: {step['detail']}",
                        )
                if recovery["status"] in until:
                    tl.mark(
                        "end",
                        recovery["finished_at"] or time.time(),
                        f"recovery {recovery['status']}: {recovery['reason']}",
                    )
                    return recovery
            time.sleep(0.02)
        return recovery


def run_scenario(opts: DemoOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Run one failure scenario end to end and return its summary."""
    if opts.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {opts.scenario}; choose from {', '.join(SCENARIOS)}")
    victim = "compute-1"
    with Harness(opts) as h:
        if opts.prepare is not None:
            opts.prepare(h.cloud, victim)
        protected = [i for i in h.cloud.instances() if i.host == victim]
        if out is not None:
            out.write(
                f"vigil demo: {opts.hosts} hosts, {opts.instances} HA instances; "
                f"{victim} ({len(protected)} instances): {SCENARIOS[opts.scenario]}\n"
            )
        t0 = h.inject(opts.scenario, victim)
        Timeline(t0, out).mark("fault", t0, f"{victim}: {SCENARIOS[opts.scenario]}")
        recovery = h.watch(victim, t0, out=out, timeout=opts.timeout)
        return summarize(opts.scenario, h.cloud, victim, protected, recovery, t0)


def summarize(
    scenario: str,
    cloud: SimCloud,
    victim: str,
    protected: list[Any],
    recovery: dict[str, Any] | None,
    t0: float,
) -> dict[str, Any]:
    def after(at: float | None) -> float | None:
        return None if at is None else round(at - t0, 3)

    steps = recovery["steps"] if recovery else []
    by_kind = {s["kind"]: s for s in steps if s["kind"] in ("fence", "force-down")}
    evacs = [s for s in steps if s["kind"] == "evacuate"]
    recovered = []
    for inst in protected:
        now = cloud.instance(inst.id)
        if now.host != victim and now.status == "ACTIVE":
            recovered.append(inst.id)
    fence = by_kind.get("fence")
    fenced = bool(fence and fence["status"] == "succeeded") and not cloud.is_powered(victim)
    done = [s["finished_at"] for s in evacs if s["status"] == "succeeded"]
    starts = [s["started_at"] for s in evacs if s["started_at"]]
    all_active = max(done) if done and len(recovered) == len(protected) else None
    summary = {
        "scenario": scenario,
        "host": victim,
        "hosts": len(cloud.hosts()),
        "instances_total": len(protected),
        "instances_recovered": len(recovered),
        "detected_after_s": after(recovery["created_at"]) if recovery else None,
        "fenced_after_s": after(fence["finished_at"]) if fenced and fence else None,
        "forced_down_after_s": after(by_kind["force-down"]["finished_at"])
        if "force-down" in by_kind
        else None,
        "first_evacuation_after_s": after(min(starts)) if starts else None,
        "all_active_after_s": after(all_active) if all_active else None,
        "host_fenced": fenced,
        "recovery_status": recovery["status"] if recovery else None,
        "recovery_reason": recovery["reason"] if recovery else "no failure detected",
        "double_running": len(cloud.double_running()),
        "evacuate_calls": cloud.calls("evacuate"),
    }
    summary["ok"] = (
        summary["recovery_status"] == "succeeded"
        and summary["instances_recovered"] == summary["instances_total"]
        and summary["double_running"] == 0
        and fenced
    )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="power-loss",
        help="the failure to inject into compute-1 (default: power-loss)",
    )
    parser.add_argument("--hosts", type=int, default=4, help="simulated hypervisors (default 4)")
    parser.add_argument(
        "--instances", type=int, default=20, help="HA instances spread over the hosts (default 20)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the recovery (default 30)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="GROUP.OPTION=VALUE",
        help="set any vigil-server option, e.g. detection.failed_after=2.5",
    )
    parser.add_argument("--log-file", help="server log file (default: a file in a temp dir)")


def run(args: argparse.Namespace) -> int:
    log_file = args.log_file or str(Path(tempfile.gettempdir()) / "vigil-demo.log")
    handler = logging.FileHandler(log_file, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    as_json = bool(getattr(args, "json", False))
    opts = DemoOptions(
        scenario=args.scenario,
        hosts=args.hosts,
        instances=args.instances,
        seed=args.seed,
        timeout=args.timeout,
        overrides=args.overrides,
    )
    if opts.hosts < 2 or opts.instances < 1:
        print("error: the demo needs at least 2 hosts and 1 instance", file=sys.stderr)
        return 2
    try:
        summary = run_scenario(opts, None if as_json else sys.stdout)
    except (config.ConfigError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print()
        for key in (
            "instances_total",
            "instances_recovered",
            "detected_after_s",
            "fenced_after_s",
            "first_evacuation_after_s",
            "all_active_after_s",
            "double_running",
            "recovery_status",
        ):
            print(f"  {key:26} {summary[key]}")
        print(f"\n{'OK' if summary['ok'] else 'FAILED'}: server log in {log_file}")
    return 0 if summary["ok"] else 1
