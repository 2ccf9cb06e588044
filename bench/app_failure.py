"""Benchmark: application failures on real QEMU guests — detection and first action with
the default check settings, and how punctually one agent runs the checks of many guests
while some of them hang.

vigil's server side runs in this process (``tests/libvirt/appstack.py``: a SQLite store,
``AppHealth`` over the simulated Nova in real time, its loop ticking every 0.2 s, the
agents' route on a real uvicorn) with a real agent (``AppChecks``) that reaches tiny
guests (``tests/libvirt/tinyguest.py``: Debian's qemu-ga, busybox httpd on
127.0.0.1:8080) through this machine's libvirtd (software emulation).

Part A, one guest, the default check settings (``type=http port=8080``: interval 10 s,
timeout 2 s, threshold 3, grace 60 s, waited out once before the first run) and the
restart command ``/bin/httpd -p 127.0.0.1:8080 -h /www``. ``--runs`` times: wait a
random part of an interval (so that the kill lands at a uniformly random point of the
check schedule), kill httpd in the guest (T0: just before the kill is sent), wait until
the failure is resolved. Measured on this machine's wall clock: declared (the
``vigil.app.check.failing`` event) - T0, first action (``vigil.app.recovery.start``) -
declared, and for context the restart's end and the resolution. Targets: declared within
interval x threshold + 1 s (31 s), first action <= 200 ms after declared. A kill is
seen by the first run after it, which comes 0..interval later; threshold - 1 more runs
make the check fail: declared - T0 is (threshold - 1) x interval + U(0, interval) + a
run's duration. ``phase_s`` says, per run, how long after the previous run the kill
landed.

Part B, ``--guests`` guests (default 50) with an ``http`` check every ``--interval`` s
(default 5; timeout 2, threshold 3, grace 0, policy notify: vigil acts on nothing);
``--hung`` of them (default 5) hang: their qemu-ga is stopped with SIGSTOP from inside
(``/bin/busybox killall -STOP qemu-ga`` through guest-exec), so that every call to it
times out. For ``--duration`` seconds, each check run's start is compared with when it
was due (``next_run_at``; the agent's ``on_run`` hook): lateness of the healthy guests'
runs (max, p99); target: none later than its interval. The same is measured for
``--baseline`` seconds before the hang, every guest healthy, to tell what the hung
guests cost from what the load of the machine does; each guest-agent call's duration
is kept too (a run holds a worker that long). The guests boot concurrently; what ran
(and, if fewer than asked booted, why) is in the results.

    .venv/bin/python bench/app_failure.py [--runs 10] [--guests 50] [--hung 5]
        [--interval 5] [--duration 120] [--baseline 60] [--part both|a|b] [--out FILE]

Needs what ``tools/libvirt/setup`` installs; ~12 GB of memory for 50 guests (each
QEMU ~240 MB resident).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "libvirt"))

import tinyguest  # noqa: E402
from appstack import AppStack  # noqa: E402
from bmc.emulators import DOMAIN_PREFIX, Libvirt  # noqa: E402

from vigil.agent.guest_agent import GuestAgent, GuestAgentError  # noqa: E402
from vigil.model import HaPolicy, Health  # noqa: E402
from vigil.wire.app_checks import CheckSpec, parse_check  # noqa: E402

BUSYBOX = "/bin/busybox"
START_HTTPD = "/bin/httpd -p 127.0.0.1:8080 -h /www"
DEFAULT_CHECK = "type=http port=8080 path=/"  # interval 10, timeout 2, threshold 3, grace 60
RESTART = f"restart-command='{START_HTTPD}'"
BOOT_TIMEOUT = 900.0  # 50 guests booting at once under software emulation: ~190-260 s here
BOOT_RETRIES = 2  # per guest whose kernel panicked while booting
RSS_PER_GUEST = 260 * 2**20  # measured: a tiny guest's QEMU, 192 MiB of RAM, ~240 MB resident

LOG = logging.getLogger("bench.app_failure")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank (with 10 values, p99 is the largest)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float], *, scale: float = 1000.0, unit: str = "ms") -> dict[str, Any]:
    scaled = [v * scale for v in values]
    if not scaled:
        return {"n": 0}
    return {
        "n": len(scaled),
        f"p50_{unit}": round(statistics.median(scaled), 3),
        f"p99_{unit}": round(percentile(scaled, 99), 3),
        f"max_{unit}": round(max(scaled), 3),
        f"min_{unit}": round(min(scaled), 3),
    }


class RunLog:
    """The agent's ``on_run`` hook: (instance, due, started) of every check run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: list[tuple[str, float, float]] = []

    def __call__(self, iid: str, spec: CheckSpec, due: float, started: float) -> None:
        with self._lock:
            self.rows.append((iid, due, started))

    def between(self, start: float, end: float) -> list[tuple[str, float, float]]:
        with self._lock:
            return [r for r in self.rows if start <= r[2] < end]

    def last_start(self, iid: str, before: float) -> float | None:
        with self._lock:
            starts = [r[2] for r in self.rows if r[0] == iid and r[2] <= before]
        return max(starts) if starts else None


@dataclass
class Guests:
    """Tiny guests with the real guest agent on this machine's libvirtd; ``close``
    destroys and undefines every one defined."""

    conn: Any
    workdir: Path
    kernel: Path = field(init=False)
    initrd: Path = field(init=False)
    doms: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kernel, self.initrd = tinyguest.build_guest(self.workdir, guest_agent=True)
        self.agent = GuestAgent(self.conn)
        self._read: dict[str, int] = {}  # console bytes read before a guest's restart

    def boot(self, count: int) -> tuple[list[Any], dict[str, Any]]:
        """Define and start ``count`` guests at once; those whose agent answered within
        ``BOOT_TIMEOUT``, and what the boot took (and why any did not come up). A guest
        whose kernel panicked while booting is started again (``BOOT_RETRIES``)."""
        new, refused = [], []
        started = time.monotonic()
        for _ in range(count):
            name = f"{DOMAIN_PREFIX}{os.getpid()}-appbench-{len(self.doms)}"
            xml = tinyguest.domain_xml(
                name=name,
                uuid=str(uuid.uuid4()),
                kernel=self.kernel,
                initrd=self.initrd,
                console=self.console(name),
                mode="idle",
                guest_agent=True,
            )
            # Under emulation on a loaded machine the kernel's check of the IO-APIC timer
            # can time out ("Kernel panic - not syncing: IO-APIC + timer doesn't work!",
            # seen with 50 guests booting at once); the guest then spins on a core.
            assert " quiet " in xml
            dom = self.conn.defineXML(xml.replace(" quiet ", " quiet no_timer_check "))
            self.doms.append(dom)
            try:
                dom.create()
            except Exception as exc:  # out of memory, most likely
                refused.append(f"{name}: {exc}")
                continue
            new.append(dom)
        created = time.monotonic() - started
        pending, up = list(new), {}
        restarted: dict[str, int] = {}
        while pending and time.monotonic() - started < BOOT_TIMEOUT:
            for dom in list(pending):
                with contextlib.suppress(GuestAgentError):
                    self.agent.ping(dom, timeout=1)
                    up[dom.name()] = time.monotonic() - started
                    pending.remove(dom)
                    continue
                name = dom.name()
                if self.panicked(name) and restarted.get(name, 0) < BOOT_RETRIES:
                    restarted[name] = restarted.get(name, 0) + 1
                    with contextlib.suppress(Exception):
                        dom.destroy()
                    with contextlib.suppress(OSError):
                        self._read[name] = self.console(name).stat().st_size
                    dom.create()
            time.sleep(1.0)
        booted = [d for d in new if d.name() in up]
        return booted, {
            "asked": count,
            "booted": len(booted),
            "not_started": refused,
            "no_agent_within_s": {"timeout": BOOT_TIMEOUT, "guests": [d.name() for d in pending]},
            "restarted_after_a_kernel_panic": restarted,
            "all_created_after_s": round(created, 1),
            "agent_answering_after_s": {
                "p50": round(statistics.median(up.values()), 1) if up else None,
                "max": round(max(up.values()), 1) if up else None,
            },
        }

    def console(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def panicked(self, name: str) -> bool:
        """The guest's console says its kernel panicked (since its last restart)."""
        try:
            text = self.console(name).read_bytes()
        except OSError:
            return False
        since = self._read.get(name, 0)
        return b"Kernel panic" in text[since if since <= len(text) else 0 :]

    def close(self) -> None:
        for dom in self.doms:
            with contextlib.suppress(Exception):
                dom.destroy()
            with contextlib.suppress(Exception):
                dom.undefine()
        shutil.rmtree(self.workdir, ignore_errors=True)


def server_health(stack: AppStack, iid: str) -> Health | None:
    inst = stack.store.get_app_instance(iid)
    state = None if inst is None else inst.checks.get("web")
    return None if state is None else state.health


def wait_for(condition: Any, what: str, timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


# --- part A: detection and first action, default settings ------------------------------


def part_a(tmp: Path, guests: Guests, dom: Any, runs: int, seed: int) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    iid = dom.UUIDString()
    spec = parse_check("vigil:check:web", DEFAULT_CHECK)
    metadata = {"vigil:check:web": DEFAULT_CHECK, "vigil:app_recovery": RESTART}
    log = RunLog()
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    with AppStack(tmp, {iid: metadata}, on_run=log) as stack:
        agent_started = time.time()
        wait_for(lambda: server_health(stack, iid) == Health.HEALTHY, "a healthy check", 60)
        # Failures within grace of the agent first seeing the domain do not count.
        time.sleep(max(0.0, agent_started + spec.grace + 1.0 - time.time()))
        for n in range(runs):
            time.sleep(rng.uniform(0.0, spec.interval))
            mark = stack.store.last_event_seq()
            t0 = time.time()
            killed = guests.agent.exec(dom, [BUSYBOX, "killall", "httpd"], timeout=10)
            kill_sent = time.time() - t0
            if not killed.ok:
                errors.append(f"run {n}: the kill failed: {killed.stderr.strip()}")
                continue
            try:
                wait_for(
                    lambda m=mark: "vigil.app.resolved" in stack.event_types(iid, m),
                    "the failure resolved",
                    spec.interval * (spec.threshold + 3) + 60,
                    every=0.05,
                )
            except TimeoutError as exc:
                errors.append(f"run {n}: {exc}: {stack.event_types(iid, mark)}")
                guests.agent.exec(dom, START_HTTPD.split(), timeout=10)
                time.sleep(spec.interval * 2)
                continue
            at: dict[str, float] = {}
            for event in stack.events(iid, mark):
                at.setdefault(event.event_type, event.timestamp)
            previous = log.last_start(iid, t0)
            declared = at["vigil.app.check.failing"]
            action = at["vigil.app.recovery.start"]
            rows.append(
                {
                    "phase_s": round(t0 - previous, 3) if previous is not None else None,
                    "kill_exec_s": round(kill_sent, 3),
                    "declared_s": round(declared - t0, 3),
                    "first_action_ms": round((action - declared) * 1000, 3),
                    "restart_done_s": round(at["vigil.app.recovery.end"] - action, 3),
                    "resolved_s": round(at["vigil.app.resolved"] - t0, 3),
                    "events": [e.event_type for e in stack.events(iid, mark)],
                }
            )
            LOG.warning("part A run %d: %s", n, rows[-1])
    declared_s = [r["declared_s"] for r in rows]
    first_ms = [r["first_action_ms"] for r in rows]
    bound = spec.interval * spec.threshold + 1.0
    result = {
        "settings": {
            "check": f"vigil:check:web = {DEFAULT_CHECK}",
            "interval_s": spec.interval,
            "timeout_s": spec.timeout,
            "threshold": spec.threshold,
            "grace_s": spec.grace,
            "recovery": f"vigil:app_recovery = {RESTART} (restarts 2, settle 60 s)",
            "server_loop_tick_s": 0.2,
            "agent": "AppChecks defaults (busy_interval 1 s, report_interval 30 s)",
        },
        "what_t0_is": (
            "T0: just before the kill of httpd is sent through guest-exec (kill_exec_s: "
            "how long that call took). The kill lands at a random point of the check "
            "schedule (a random wait of 0..interval before it; phase_s: how long after "
            "the previous run it came): the first run after it fails 0..interval later, "
            f"and {spec.threshold - 1} more runs an interval apart make the check fail; "
            "so declared - T0 is ~(threshold - 1) x interval + U(0, interval) + a run."
        ),
        "resolution": (
            "resolved_s - declared_s is ~1 interval: the restart ends ~1 s after the "
            "action, then the check passes at its next scheduled run (an interval after "
            "the failing run) and the failure resolves on that report"
        ),
        "runs_asked": runs,
        "runs": rows,
        "errors": errors,
        "declared_after_kill": summary(declared_s, scale=1.0, unit="s"),
        "first_action_after_declared": summary([v / 1000 for v in first_ms]),
        "restart_command_done_after_first_action": summary(
            [r["restart_done_s"] for r in rows], scale=1.0, unit="s"
        ),
        "resolved_after_kill": summary([r["resolved_s"] for r in rows], scale=1.0, unit="s"),
        "targets": {"declared_s": bound, "first_action_ms": 200.0},
    }
    result["target_met"] = bool(
        rows
        and not errors
        and percentile(declared_s, 99) <= bound
        and percentile(first_ms, 99) <= 200.0
    )
    return result


# --- part B: many guests, some hung: how late the checks run ---------------------------


def hang(guests: Guests, dom: Any) -> bool:
    """Stop the guest's qemu-ga from inside; True once it no longer answers."""
    with contextlib.suppress(GuestAgentError):  # its status is never read: it stopped
        guests.agent.exec(dom, [BUSYBOX, "killall", "-STOP", "qemu-ga"], timeout=3)
    try:
        guests.agent.ping(dom, timeout=2)
    except GuestAgentError:
        return True
    return False


def qemu_rss() -> int:
    total = 0
    for proc in psutil.process_iter(["name", "memory_info"]):
        if (proc.info["name"] or "").startswith("qemu-system"):
            total += proc.info["memory_info"].rss
    return total


def libvirtd() -> psutil.Process | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "libvirtd":
            return proc
    return None


class TimedAgent:
    """The guest agent, each call's duration kept per instance (what a worker waits)."""

    def __init__(self, agent: GuestAgent) -> None:
        self._agent = agent
        self._lock = threading.Lock()
        self.calls: list[tuple[str, float, float]] = []  # (instance, started, seconds)

    def _timed(self, domain: Any, call: Any) -> Any:
        started = time.time()
        try:
            return call()
        finally:
            with self._lock:
                self.calls.append((domain.UUIDString(), started, time.time() - started))

    def ping(self, domain: Any, timeout: float = 2.0) -> None:
        self._timed(domain, lambda: self._agent.ping(domain, timeout))

    def exec(self, domain: Any, argv: Any, timeout: float = 5.0) -> Any:
        return self._timed(domain, lambda: self._agent.exec(domain, argv, timeout))

    def between(self, start: float, end: float) -> list[tuple[str, float, float]]:
        with self._lock:
            return [c for c in self.calls if start <= c[1] < end]


class Window:
    """What the machine did between ``open`` and ``close``: CPU of the machine, of this
    process (vigil's server side and agent) and of libvirtd."""

    def __init__(self) -> None:
        self.me, self.daemon = psutil.Process(), libvirtd()

    def open(self) -> None:
        self.start = time.time()
        psutil.cpu_percent()
        self.my_cpu = sum(self.me.cpu_times()[:2])
        self.lv_cpu = sum(self.daemon.cpu_times()[:2]) if self.daemon is not None else 0.0

    def close(self) -> dict[str, Any]:
        self.end = time.time()
        seconds = self.end - self.start
        busy = psutil.cpu_percent()
        load: dict[str, Any] = {
            "machine_cpu_busy_pct": busy,
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "vigil_server_and_agent_cpu_pct": round(
                100 * (sum(self.me.cpu_times()[:2]) - self.my_cpu) / seconds, 1
            ),
        }
        if self.daemon is not None:
            used = sum(self.daemon.cpu_times()[:2]) - self.lv_cpu
            load["libvirtd_cpu_pct"] = round(100 * used / seconds, 1)
        return load


def lateness(
    log: RunLog,
    calls: TimedAgent,
    window: Window,
    ids: list[str],
    hung_ids: set[str],
    interval: float,
) -> dict[str, Any]:
    """How late the checks of the healthy guests (and of the hung) started in ``window``."""
    rows = log.between(window.start, window.end)
    healthy_rows = [r for r in rows if r[0] not in hung_ids]
    late = [started - due for _, due, started in healthy_rows]
    gaps: list[float] = []
    for iid in set(ids) - hung_ids:
        starts = sorted(s for i, _, s in healthy_rows if i == iid)
        gaps += [b - a for a, b in itertools.pairwise(starts)]
    took = calls.between(window.start, window.end)
    healthy_count = len(ids) - len(hung_ids)
    return {
        "seconds": round(window.end - window.start, 1),
        "healthy_runs": len(healthy_rows),
        "healthy_runs_at_exact_interval": round(
            healthy_count * (window.end - window.start) / interval
        ),
        "lateness_healthy": summary(late),
        "healthy_runs_later_than_1s": sum(1 for v in late if v > 1.0),
        "healthy_runs_later_than_interval": sum(1 for v in late if v > interval),
        "gap_between_runs_healthy": summary(gaps, scale=1.0, unit="s"),
        "guest_agent_call_healthy": summary([t for i, _, t in took if i not in hung_ids]),
        "hung_runs": sum(1 for r in rows if r[0] in hung_ids),
        "lateness_hung": summary([s - d for i, d, s in rows if i in hung_ids]),
        "guest_agent_call_hung": summary([t for i, _, t in took if i in hung_ids]),
    }


def part_b(
    tmp: Path,
    guests: Guests,
    doms: list[Any],
    hung: int,
    interval: float,
    duration: float,
    baseline: float,
) -> dict[str, Any]:
    check = f"type=http port=8080 path=/ interval={interval:g} timeout=2 threshold=3 grace=0"
    tmp.mkdir(parents=True, exist_ok=True)
    spec = parse_check("vigil:check:web", check)
    ids = [d.UUIDString() for d in doms]
    to_hang = doms[:hung]
    hung_ids = {d.UUIDString() for d in to_hang}
    log = RunLog()
    calls = TimedAgent(guests.agent)
    with AppStack(
        tmp,
        {i: {"vigil:check:web": check} for i in ids},
        policy=HaPolicy.NOTIFY,
        on_run=log,
        guest_agent=calls,
    ) as stack:
        wait_for(
            lambda: all(server_health(stack, i) == Health.HEALTHY for i in ids),
            "every guest's check healthy",
            max(120.0, 4 * interval),
            every=0.5,
        )
        mark = stack.store.last_event_seq()
        windows: dict[str, dict[str, Any]] = {}
        if baseline > 0:  # every guest healthy: the same agent, nothing hung
            window = Window()
            window.open()
            time.sleep(baseline)
            load = window.close()
            windows["none_hung"] = lateness(log, calls, window, ids, set(), spec.interval)
            windows["none_hung"]["load"] = load
        hung_confirmed = sum(hang(guests, d) for d in to_hang)
        time.sleep(2 * interval)  # the hung guests' checks in flight
        window = Window()
        window.open()
        time.sleep(duration)
        load = window.close()
        windows["hung"] = lateness(log, calls, window, ids, hung_ids, spec.interval)
        windows["hung"]["load"] = load
        memory = {
            "qemu_rss_mb": round(qemu_rss() / 2**20),
            "this_process_rss_mb": round(psutil.Process().memory_info().rss / 2**20),
            "machine_used_mb": round(
                (psutil.virtual_memory().total - psutil.virtual_memory().available) / 2**20
            ),
        }
        healths = {i: server_health(stack, i) for i in ids}
        events = stack.store.list_events(after=mark, limit=100_000)
    false_failures = {
        e.instance_id or ""
        for e in events
        if e.event_type == "vigil.app.check.failing" and e.instance_id not in hung_ids
    }

    def count(which: set[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for iid in which:
            out[str(healths[iid])] = out.get(str(healths[iid]), 0) + 1
        return out

    result = {
        "settings": {
            "check": f"vigil:check:web = {check}",
            "policy": "notify (vigil records, does not act)",
            "agent": "AppChecks defaults: 16 workers, one libvirt connection",
            "libvirtd": libvirtd_limits(),
            "hang": "busybox killall -STOP qemu-ga inside the guest (guest-exec)",
            "baseline_s": baseline,
            "duration_s": duration,
        },
        "guests": len(ids),
        "hung": len(hung_ids),
        "hung_confirmed_unanswering": hung_confirmed,
        "healthy_guests": len(ids) - len(hung_ids),
        "windows": windows,
        "healthy_checks_failing_during_run": sorted(false_failures),
        "health_at_end": {
            "healthy_guests": count(set(ids) - hung_ids),
            "hung_guests": count(hung_ids),
        },
        "memory": memory,
        "target": {"healthy_runs_later_than_interval": 0},
    }
    measured = windows["hung"]
    result["target_met"] = bool(
        measured["healthy_runs"] and measured["healthy_runs_later_than_interval"] == 0
    )
    return result


def libvirtd_limits() -> dict[str, Any]:
    """libvirtd's limits on concurrent calls (a hung guest's call holds one)."""
    limits: dict[str, Any] = {"max_workers": 20, "max_client_requests": 5}  # its defaults
    with contextlib.suppress(OSError):
        for line in Path("/etc/libvirt/libvirtd.conf").read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() in limits:
                limits[name.strip()] = int(value.strip())
    return limits


# --- the run ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import libvirt  # type: ignore[import-untyped]

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    major, rest = divmod(libvirt.getVersion(), 1_000_000)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libvirt": f"{major}.{rest // 1000}.{rest % 1000}",
        "guests": "tests/libvirt/tinyguest.py: QEMU software emulation (TCG), 1 vCPU, 192 MiB",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="part A: kills")
    parser.add_argument("--guests", type=int, default=50, help="part B: guests")
    parser.add_argument("--hung", type=int, default=5, help="part B: of them hung")
    parser.add_argument("--interval", type=float, default=5.0, help="part B: check interval")
    parser.add_argument("--duration", type=float, default=120.0, help="part B: seconds measured")
    parser.add_argument(
        "--baseline", type=float, default=60.0, help="part B: seconds measured before the hang"
    )
    parser.add_argument("--part", choices=("both", "a", "b"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "app_failure.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("vigil").setLevel(logging.ERROR)  # the hung guests' checks, each run
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr per error

    Libvirt.check()
    daemons = Libvirt()
    daemons.start()
    result: dict[str, Any] = {
        "benchmark": "app_failure",
        "what": "application check failure -> declared -> first recovery action (part A); "
        "check lateness of one agent over many guests, some hung (part B)",
        "command": f".venv/bin/python bench/app_failure.py --runs {args.runs} "
        f"--guests {args.guests} --hung {args.hung} --interval {args.interval:g} "
        f"--duration {args.duration:g} --baseline {args.baseline:g} --part {args.part}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    guests = Guests(daemons.conn(), Path(f"/var/tmp/vigil-app-bench-{os.getpid()}"))
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            first, boot = guests.boot(1)
            if not first:
                raise RuntimeError(f"the first guest did not boot: {boot}")
            if args.part in ("both", "a"):
                t = time.monotonic()
                result["part_a"] = part_a(Path(tmp) / "a", guests, first[0], args.runs, args.seed)
                result["part_a"]["seconds"] = round(time.monotonic() - t)
                LOG.warning("part A: %s", json.dumps(result["part_a"], indent=2))
            if args.part in ("both", "b"):
                t = time.monotonic()
                result["part_b"] = run_part_b(Path(tmp) / "b", guests, first, args)
                result["part_b"]["seconds"] = round(time.monotonic() - t)
    finally:
        guests.close()
        daemons.stop()
    result["seconds"] = round(time.monotonic() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def run_part_b(
    tmp: Path, guests: Guests, first: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Boot what fits in memory of ``--guests`` (the first guest is one), then part B."""
    wanted = max(args.guests, args.hung + 1)
    fits = int((psutil.virtual_memory().available - 2 * 2**30) // RSS_PER_GUEST) + len(first)
    count = min(wanted, fits)
    why = "" if count == wanted else f"memory for {fits} guests (~260 MB each, 2 GB kept)"
    more, boot = guests.boot(count - len(first))
    boot["asked"] += len(first)
    boot["booted"] += len(first)
    doms = first + more
    if len(doms) < wanted and not why:
        why = f"{wanted - len(doms)} guests did not come up: see boot"
    result = part_b(tmp, guests, doms, args.hung, args.interval, args.duration, args.baseline)
    result["guests_asked"] = args.guests
    result["why_fewer"] = why
    result["boot"] = boot
    return result


if __name__ == "__main__":
    sys.exit(main())
