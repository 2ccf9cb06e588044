"""Benchmark: vigil against OpenStack Masakari, the same host failure on the same real Nova.

One local real-Nova cloud (the minicloud: Nova 34, three fake computes), N instances
booted on compute1 (metadata ``HA_Enabled=True``, which both understand). The failure:
compute1's nova-compute is SIGKILLed and its "power" is gone (its agent's heartbeats stop
with it). Then, one system at a time:

- ``vigil``: vigil-server in this process with the openstack compute driver and a fence
  device bound to compute1's process (power off = kill, power status = does it run), as
  in tests/nova/test_e2e_nova.py. Default detection and recovery settings.
- ``masakari-default`` / ``masakari-fast``: Masakari 22.0.0 api + engine
  (tools/masakari-server) with its defaults, and with the most favourable settings an
  operator could choose (profile ``fast``: 10 s instead of 180 s after disabling the
  compute, 50 evacuation threads instead of 3, no random 0-5 s pause in the API). It is
  sent the COMPUTE_HOST notification its host monitor would send, at the instant of the
  kill: its monitor's own delay (``HOSTMONITOR`` below) is stated, not measured, and not
  included in its times.

Measured from the kill, by polling Nova's API (the same instrument for both): time to the
first evacuation call (the first evacuation migration record appears), time to all N
instances ACTIVE on another host, instances recovered, and whether the host was fenced
(vigil: by its fence device, confirmed off; Masakari never fences). Between runs compute1
is brought back (nova-compute restarted, un-forced, enabled), every server deleted and N
booted again. Results are rewritten after every run, so an interrupted run keeps what it
measured.

    .venv/bin/python bench/masakari_vs_vigil.py [--sizes 5 20 50] [--runs 3] \\
        [--systems vigil masakari-fast masakari-default] \\
        [--out bench/results/masakari_vs_vigil.json] [--append [--replace]]

Needs: tools/minicloud/minicloud install, tools/masakari-server/masakari-server install
(both started here if needed), MariaDB and RabbitMQ. Takes the minicloud's test lock run by
run, so a test session on the same machine waits rather than collides. Plot:
bench/results/masakari_vs_vigil.png (matplotlib, if installed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' shared support, as pytest has it

from support import wait_until  # noqa: E402

from tests.nova.cloud import (  # noqa: E402
    COMPUTES,
    HOME,
    Minicloud,
    ProcessFence,
    running_vigil,
)
from vigil.drivers.fencing import PowerState  # noqa: E402

MINICLOUD = ROOT / "tools" / "minicloud" / "minicloud"
MASAKARI = ROOT / "tools" / "masakari-server" / "masakari-server"
FAILED_HOST = "compute1"
HA_METADATA = {"HA_Enabled": "True"}
SYSTEMS = ("vigil", "masakari-fast", "masakari-default")
POLL = 0.25  # seconds between two looks at Nova
#: The longest a run may take: Masakari's defaults sleep 180 s before the first evacuation.
TIMEOUT = {"vigil": 180.0, "masakari-fast": 300.0, "masakari-default": 600.0}

#: What masakari-monitors' host monitor adds before Masakari hears of the failure. Not
#: measured (there is no Pacemaker here): the notification is posted at the kill instead.
HOSTMONITOR = {
    "poll_interval_s": 60,  # [host] monitoring_interval: crm_mon/cibadmin read once a minute
    "pacemaker_detection_s": 6.6,  # corosync 3 defaults: token 3 s + consensus 3.6 s
    "added_mean_s": 36.6,  # half a poll interval + Pacemaker's detection
    "added_max_s": 66.6,  # a full poll interval + Pacemaker's detection
    "excluded": "STONITH by Pacemaker, and the monitor's ipmitool power check "
    "(ipmi_timeout 5 s, up to 3 retries 10 s apart when it fails)",
    "source": "masakari-monitors [host] defaults: monitoring_interval=60, "
    "monitoring_samples=1, api_retry_interval=10, stonith_wait=30",
}


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


# --------------------------------------------------------------------------- cloud


@contextmanager
def cloud_lock(timeout: float = 1800) -> Iterator[None]:
    """The lock the nova test tier takes (tests/nova/conftest.py): one user at a time."""
    HOME.mkdir(parents=True, exist_ok=True)
    with open(HOME / "tests.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError("another session held the minicloud too long") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_tool(*argv: str, timeout: float = 400) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-2:])} failed: {out.stderr[-2000:]}")
    return out.stdout


def prepare_cloud(cloud: Minicloud, n: int) -> list[str]:
    """compute1..3 up, enabled, not forced down, no servers; then n servers on compute1."""
    cloud.restore(timeout=180)
    # 50 instances exceed Nova's default quotas (10 instances, 20 cores). The project's
    # own quota set is refused here (Nova checks the project in Keystone, which the
    # minicloud's identity stand-in does not serve): raise the defaults instead.
    cloud.nova(
        "PUT",
        "/os-quota-class-sets/default",
        {"quota_class_set": {"instances": -1, "cores": -1, "ram": -1}},
    )
    names = [f"ha-{i:02d}" for i in range(n)]
    bodies = {name: cloud.server_body(name, FAILED_HOST, HA_METADATA) for name in names}
    booted = cloud.boot_many(FAILED_HOST, bodies, timeout=60 + 6 * n)
    ids = [booted[name] for name in names]
    # The scheduler and the computes settle before the failure (a fresh boot still has
    # its host's resource tracker busy).
    time.sleep(2)
    return ids


class ServerWatch:
    """The benchmark's instrument: the N servers as Nova shows them, kept up to date by
    asking only for the servers changed since the last look (``changes-since``).

    Listing all N servers with their details four times a second cost nova-api most of a
    core at N = 50 — the instrument slowing the evacuations it measures. Nova stamps
    ``updated_at`` in whole seconds, so each look asks from two seconds before the
    previous one: an overlap, never a gap."""

    def __init__(self, cloud: Minicloud, ids: list[str]) -> None:
        self._cloud = cloud
        self._wanted = set(ids)
        self.servers: dict[str, dict[str, Any]] = {}
        self._since: dt.datetime | None = None

    def refresh(self) -> dict[str, dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        query = "all_tenants=1"
        if self._since is not None:
            stamp = (self._since - dt.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
            query += f"&changes-since={stamp}"
        body = self._cloud.nova("GET", f"/servers/detail?{query}")
        for server in body["servers"]:
            if server["id"] in self._wanted:
                self.servers[server["id"]] = server
        self._since = now
        return self.servers


def recovered(server: dict[str, Any]) -> bool:
    return bool(
        server["status"] == "ACTIVE"
        and server["OS-EXT-SRV-ATTR:host"] not in (None, FAILED_HOST)
        and not server["OS-EXT-STS:task_state"]
    )


def evacuation_records(cloud: Minicloud, since: dt.datetime) -> list[dict[str, Any]]:
    stamp = since.strftime("%Y-%m-%dT%H:%M:%S")
    body = cloud.nova(
        "GET",
        f"/os-migrations?migration_type=evacuation&source_compute={FAILED_HOST}"
        f"&changes-since={stamp}",
        mv="2.80",
    )
    return list(body["migrations"])


def watch(
    cloud: Minicloud, ids: list[str], t0: float, wall0: dt.datetime, timeout: float
) -> dict[str, Any]:
    """Poll Nova from the failure until every instance is ACTIVE elsewhere (or timeout)."""
    first_evacuation: float | None = None
    all_active: float | None = None
    instrument = ServerWatch(cloud, ids)
    servers: dict[str, dict[str, Any]] = {}
    while time.monotonic() - t0 < timeout:
        now = time.monotonic() - t0
        if first_evacuation is None and evacuation_records(cloud, wall0):
            first_evacuation = now
        servers = instrument.refresh()
        if first_evacuation is None and any(
            s["OS-EXT-STS:task_state"] or s["OS-EXT-SRV-ATTR:host"] != FAILED_HOST
            for s in servers.values()
        ):
            first_evacuation = now
        if len(servers) == len(ids) and all(recovered(s) for s in servers.values()):
            all_active = time.monotonic() - t0
            break
        time.sleep(POLL)
    records = evacuation_records(cloud, wall0)
    created = [dt.datetime.fromisoformat(m["created_at"]) for m in records]
    first_record = min(created) - wall0.replace(tzinfo=None) if created else None
    return {
        "first_evacuation_s": round(first_evacuation, 2) if first_evacuation else None,
        # Nova's own record, whole seconds (MySQL DATETIME): a cross-check of the above.
        "first_evacuation_record_s": (
            round(first_record.total_seconds(), 2) if first_record is not None else None
        ),
        "all_active_s": round(all_active, 2) if all_active else None,
        "recovered": sum(1 for s in servers.values() if recovered(s)),
        # Left in ERROR when the watch ended (Nova gave up an evacuation, nobody retried).
        "error_state": sum(1 for s in servers.values() if s["status"] == "ERROR"),
        "evacuation_records": len(records),
    }


# --------------------------------------------------------------------------- vigil


def run_vigil(cloud: Minicloud, ids: list[str]) -> dict[str, Any]:
    """vigil-server with default settings watches compute1..3; compute1 dies."""
    with (
        tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp,
        # Default settings: vigil's own max_parallel_evacuations, not the tests' 4.
        running_vigil(cloud, Path(tmp), max_parallel_evacuations=None) as vigil,
    ):
        wall0 = dt.datetime.now(dt.UTC)
        t0 = time.monotonic()
        cloud.kill(FAILED_HOST)  # power cut: nova-compute and the agent die together
        result = watch(cloud, ids, t0, wall0, TIMEOUT["vigil"])
        recovery = vigil.finished_recovery(FAILED_HOST, 60)
        fence = [s for s in recovery["steps"] if s["kind"] == "fence"]
        result["fenced"] = bool(
            fence
            and fence[0]["status"] == "succeeded"
            and ProcessFence(cloud, FAILED_HOST).power_status() is PowerState.OFF
        )
        result["recovery_status"] = recovery["status"]
        result["vigil_steps_s"] = step_timeline(recovery, wall0.timestamp())
        # The recovery's creation is when vigil declared the host failed.
        result["failure_declared_s"] = round(recovery["created_at"] - wall0.timestamp(), 2)
        return result


def step_timeline(recovery: dict[str, Any], start: float) -> dict[str, Any]:
    """When vigil's host steps and its first evacuation started and ended, from the kill."""

    def rel(value: float | None) -> float | None:
        return round(value - start, 2) if value is not None else None

    out: dict[str, Any] = {}
    for kind in ("fence", "force-down", "list-instances", "evacuate"):
        mine = [s for s in recovery["steps"] if s["kind"] == kind and s.get("started_at")]
        if mine:
            first = min(mine, key=lambda s: s["started_at"])
            out[kind] = [rel(first["started_at"]), rel(first.get("finished_at"))]
    return out


# --------------------------------------------------------------------------- masakari


class Masakari:
    """Masakari's REST API (noauth2: every request is an admin)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.url + path,
            json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={
                "Content-Type": "application/json",
                "X-Auth-Token": "admin:admin",
                "X-User-Id": "admin",
                "X-Project-Id": "admin",
                "OpenStack-API-Version": "instance-ha 1.3",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500]
            raise RuntimeError(f"masakari {method} {path}: {exc.code} {detail!r}") from None
        return json.loads(raw) if raw else None

    def ensure_segment(self) -> str:
        """Segment "minicloud" (recovery method auto) with compute1..3, none in maintenance."""
        segments = self.call("GET", "/segments")["segments"]
        seg = next((s for s in segments if s["name"] == "minicloud"), None)
        if seg is None:
            seg = self.call(
                "POST",
                "/segments",
                {
                    "segment": {
                        "name": "minicloud",
                        "recovery_method": "auto",
                        "service_type": "COMPUTE",
                    }
                },
            )["segment"]
        uuid = str(seg["uuid"])
        hosts = {h["name"]: h for h in self.call("GET", f"/segments/{uuid}/hosts")["hosts"]}
        for name in COMPUTES:
            if name not in hosts:
                self.call(
                    "POST",
                    f"/segments/{uuid}/hosts",
                    {"host": {"name": name, "type": "COMPUTE", "control_attributes": "SSH"}},
                )
            elif hosts[name]["on_maintenance"]:
                # Masakari leaves a recovered host in maintenance: the operator's reset.
                self.call(
                    "PUT",
                    f"/segments/{uuid}/hosts/{hosts[name]['uuid']}",
                    {"host": {"on_maintenance": False}},
                )
        return uuid

    def notify_host_down(self, host: str) -> dict[str, Any]:
        """What masakari-monitors' host monitor posts when Pacemaker loses a node."""
        body = {
            "notification": {
                "type": "COMPUTE_HOST",
                "hostname": host,
                "generated_time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f"),
                "payload": {
                    "event": "STOPPED",
                    "cluster_status": "OFFLINE",
                    "host_status": "NORMAL",
                },
            }
        }
        return dict(self.call("POST", "/notifications", body)["notification"])


def forget_notifications() -> None:
    """Drop Masakari's past notifications: its 180 s duplicate check compares payloads,
    and every run sends the same one for compute1 (a bench reset, not an operator's)."""
    subprocess.run(
        ["mysql", "-h", "127.0.0.1", "-u", "root", "masakari"],
        input="DELETE FROM vmoves; DELETE FROM notifications;",
        text=True,
        check=True,
    )


def run_masakari(cloud: Minicloud, ids: list[str], profile: str) -> dict[str, Any]:
    url = run_tool(str(MASAKARI), "start", "--profile", profile, timeout=120).strip()
    masakari = Masakari(url)
    forget_notifications()
    masakari.ensure_segment()
    wall0 = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    cloud.kill(FAILED_HOST)
    notification = masakari.notify_host_down(FAILED_HOST)
    posted = time.monotonic() - t0
    result = watch(cloud, ids, t0, wall0, TIMEOUT[f"masakari-{profile}"])
    result["notification_posted_s"] = round(posted, 2)
    result["fenced"] = False  # Masakari has no fencing: the host is off only because we cut it

    def settled() -> dict[str, Any] | None:
        n = masakari.call("GET", f"/notifications/{notification['notification_uuid']}")
        n = n["notification"]
        return n if n["status"] in ("finished", "error", "failed", "ignored") else None

    try:
        final = wait_until(settled, "Masakari's notification to finish", 120, every=1)
        result["notification_status"] = final["status"]
    except AssertionError:
        result["notification_status"] = "unfinished"
    return result


# --------------------------------------------------------------------------- report


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None, "stdev": None, "runs": 0}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "stdev": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "runs": len(values),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sorted({r["n"] for r in runs}):
        per: dict[str, Any] = {}
        for system in SYSTEMS:
            # A run marked superseded (made with other settings) stays on record, uncounted.
            mine = [
                r for r in runs if r["n"] == n and r["system"] == system and not r.get("superseded")
            ]
            if not mine:
                continue
            per[system] = {
                "first_evacuation_s": spread(
                    [r["first_evacuation_s"] for r in mine if r["first_evacuation_s"]]
                ),
                "all_active_s": spread([r["all_active_s"] for r in mine if r["all_active_s"]]),
                "recovered": [r["recovered"] for r in mine],
                "fenced": [r["fenced"] for r in mine],
                "runs": len(mine),
            }
        vigil = per.get("vigil", {}).get("all_active_s", {}).get("median")
        vigil_first = per.get("vigil", {}).get("first_evacuation_s", {}).get("median")
        for system in ("masakari-default", "masakari-fast"):
            theirs = per.get(system, {}).get("all_active_s", {}).get("median")
            first = per.get(system, {}).get("first_evacuation_s", {}).get("median")
            key = system.replace("-", "_")
            if vigil and theirs:
                per[f"all_active_ratio_{key}_vs_vigil"] = round(theirs / vigil, 1)
            if vigil_first and first:
                per[f"first_evacuation_ratio_{key}_vs_vigil"] = round(first / vigil_first, 1)
        out[str(n)] = per
    return out


def invocation(args: argparse.Namespace) -> str:
    return (
        "python bench/masakari_vs_vigil.py --sizes "
        + " ".join(map(str, args.sizes))
        + f" --runs {args.runs} --systems "
        + " ".join(args.systems)
        + (" --append" if args.append else "")
        + (" --replace" if args.append and args.replace else "")
    )


def write_report(
    args: argparse.Namespace, runs: list[dict[str, Any]], invocations: list[str]
) -> dict[str, Any]:
    report = {
        "benchmark": "masakari_vs_vigil",
        # The whole matrix (N = 5, 20, 50; 3 runs of each system) with the defaults:
        "command": "python bench/masakari_vs_vigil.py",
        "invocations": invocations,  # what made these runs (--append adds to a file)
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "note": "shared with other work: timings include its noise",
        },
        "cloud": "minicloud: Nova 34 + Placement 16, fake virt driver, computes compute1..3; "
        "report_interval 5 s, service_down_time 20 s, rpc_response_timeout 10 s",
        "failure": "compute1's nova-compute SIGKILLed (its 'power' cut); "
        f"N instances with {HA_METADATA} on it",
        "settings": {
            "vigil": "defaults: heartbeat 0.25 s, suspect 1.0 s, failed 1.75 s, "
            "8 parallel evacuations, each confirmed from one shared changes-since listing "
            "of the servers (at most every 0.5 s; polled 0.1 s after the call, then 1.5x "
            "longer up to 1 s); fence = the compute's process",
            "masakari-default": "Masakari 22.0.0 defaults: wait_period_after_service_update "
            "180, host_failure_recovery_threads 3, verify_interval 1, "
            "notification_delay_max 5 (a random 0-5 s pause in the API)",
            "masakari-fast": "wait_period_after_service_update 10, "
            "host_failure_recovery_threads 50, notification_delay_max 0, "
            "rpc_response_timeout 10 "
            "(tools/masakari-server PROFILES['fast'])",
        },
        "masakari_notification": "posted at the kill; the host monitor's own delay is "
        "not in the times (see hostmonitor_not_measured)",
        "hostmonitor_not_measured": HOSTMONITOR,
        "measures": {
            "first_evacuation_s": "kill -> first evacuation migration record seen in Nova "
            f"(polled every {POLL} s; the servers too, only those changed since the "
            "previous look, so that the instrument does not load nova-api)",
            "first_evacuation_record_s": "kill -> Nova's created_at of that record (whole seconds)",
            "all_active_s": "kill -> every instance ACTIVE on another host, no task",
            "ratio": "Masakari median / vigil median, per N",
        },
        "summary": summarise(runs),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no plot")
        return
    summary = report["summary"]
    sizes = sorted(summary, key=int)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.27
    colours = {"vigil": "#2a9d8f", "masakari-fast": "#e9c46a", "masakari-default": "#e76f51"}
    for i, system in enumerate(SYSTEMS):
        xs, med, low, high = [], [], [], []
        for j, n in enumerate(sizes):
            measured = summary[n].get(system)
            s = (measured or {}).get("all_active_s", {})
            if s.get("median") is None:
                if measured:  # ran, but not every instance came back ACTIVE elsewhere
                    x = j + (i - 1) * width
                    ax.text(x, 2, "not all\nACTIVE", ha="center", va="bottom", fontsize=8)
                continue
            xs.append(j + (i - 1) * width)
            med.append(s["median"])
            low.append(s["median"] - s["min"])
            high.append(s["max"] - s["median"])
        if xs:
            ax.bar(xs, med, width, label=system, color=colours[system], yerr=[low, high])
            for x, m in zip(xs, med, strict=True):
                ax.text(x, m, f"{m:.0f}" if m >= 10 else f"{m:.1f}", ha="center", va="bottom")
    ax.set_xticks(range(len(sizes)), [f"N = {n}" for n in sizes])
    ax.set_xlim(-0.6, len(sizes) - 0.4)
    ax.set_ylabel("seconds from host death to all instances ACTIVE")
    ax.set_title("Host failure on a real Nova: vigil vs Masakari 22 (median, min-max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    say(f"plot written to {path}")


# --------------------------------------------------------------------------- main


def one_run(cloud: Minicloud, system: str, n: int) -> dict[str, Any]:
    with cloud_lock():
        ids = prepare_cloud(cloud, n)
        runner: Callable[[], dict[str, Any]]
        if system == "vigil":
            runner = lambda: run_vigil(cloud, ids)  # noqa: E731
        else:
            runner = lambda: run_masakari(cloud, ids, system.split("-", 1)[1])  # noqa: E731
        result = runner()
        try:
            cloud.restore(timeout=180)
        except Exception as exc:  # the measurement stands; the next run restores again
            result["restore_error"] = str(exc)[:500]
    return {"system": system, "n": n, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--out", default=str(ROOT / "bench/results/masakari_vs_vigil.json"))
    parser.add_argument(
        "--append", action="store_true", help="keep the runs already in --out and add to them"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="with --append: drop the runs in --out of the systems and sizes measured now "
        "(re-measure them after a change)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="summarise the runs already in --out again, redraw the plot, and stop",
    )
    args = parser.parse_args()
    if args.report_only:
        previous = json.loads(Path(args.out).read_text())
        invocations = previous.get("invocations") or [previous["command"]]
        report = write_report(args, previous["runs"], invocations)
        plot(report, Path(args.out).with_suffix(".png"))
        print(json.dumps(report["summary"], indent=2))
        return 0
    run_tool(str(MINICLOUD), "start")
    run_tool(str(MASAKARI), "install")
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(HOME / "clouds.yaml")
    cloud = Minicloud(started_here=False, startup_seconds=0.0)
    runs: list[dict[str, Any]] = []
    invocations = [invocation(args)]
    if args.append and Path(args.out).exists():
        previous = json.loads(Path(args.out).read_text())
        runs = previous["runs"]
        if args.replace:
            again = {(system, n) for system in args.systems for n in args.sizes}
            runs = [r for r in runs if (r["system"], r["n"]) not in again]
        invocations = [*(previous.get("invocations") or [previous["command"]]), *invocations]
    for n in args.sizes:
        for k in range(args.runs):
            for system in args.systems:
                t = time.monotonic()
                try:
                    result = one_run(cloud, system, n)
                except Exception as exc:  # a failed run is a result too
                    result = {"system": system, "n": n, "error": str(exc)[:1000]}
                    result.update(
                        {"first_evacuation_s": None, "all_active_s": None, "recovered": 0}
                    )
                    result["fenced"] = False
                    cloud.restore(timeout=180)
                result["run"] = k + 1
                runs.append(result)
                say(
                    f"N={n} run {k + 1}/{args.runs} {system}: "
                    f"{json.dumps({k: v for k, v in result.items() if k not in ('n', 'run')})}"
                    f" ({time.monotonic() - t:.0f}s with set-up)"
                )
                report = write_report(args, runs, invocations)
                plot(report, Path(args.out).with_suffix(".png"))
    report = write_report(args, runs, invocations)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
