"""Benchmark: an in-guest cluster's VIP after its member's hypervisor loses power.

Part A, vigil (``--runs`` times, default 10): a real vigil-server in this process on the
simulated cloud (four hypervisors with simulated BMCs, heartbeats every 0.1 s, vigil's
default detection), a three-member cluster built through vigil's API, each member
stood in for by network, mount, UTS and PID namespaces running Debian's corosync 3 and
pacemaker 2 over the files of the user data vigil booted it with
(``tests/support/incluster.py``). Once the VIP answers, the hypervisor of the member
holding it loses power and the member dies with it (T0). Measured from T0 on this
machine's wall clock: vigil declares the host failed, vigil's fence of it is confirmed
(the recovery's fence step), Pacemaker shows the VIP on another member, and the VIP
answers there (a TCP connection to it is answered). Each run builds everything anew.

corosync runs with the generated configuration: totem ``token: 3000`` (corosync's
default; with three nodes the effective token is 3000 + 650 = 3650 ms, consensus
1.2 x that), knet. Pacemaker notices the member only after the token and consensus
time, so the failover is bounded below by corosync, not by vigil.

Part B, ``fence_openstack`` (``--openstack``, ``--openstack-runs`` times, default 3) on a
real Nova 34 (``tools/minicloud``; fence-agents' ``fence_openstack`` needs Debian's
python3-novaclient): a server ACTIVE on compute1; compute1's nova-compute is killed (its
hypervisor lost power: nothing there answers any more, T0); ``fence_openstack -o off``
is run as Pacemaker's fencer would, with its defaults (``power_timeout`` 60 s), three
times: at once, after Nova has noticed the compute is down (``service_down_time``, 20 s
here), and after the compute service is forced down (what vigil does once it has fenced
the host). Each attempt's exit status, duration and last words are recorded.

    .venv/bin/python bench/cluster_failover.py [--runs 10] [--out FILE]
    .venv/bin/python bench/cluster_failover.py --openstack-only --openstack-runs 2

Needs root (namespaces) and what ``tools/pacemaker/setup`` installs.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.incluster import ClusterWorld, answers, cluster_world  # noqa: E402

COROSYNC = {"token_ms": 3000, "effective_token_ms_3_nodes": 3650, "transport": "knet"}


def _until(condition: Any, timeout: float, every: float = 0.02) -> float | None:
    """Seconds (monotonic) when ``condition()`` first held, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(every)
    return None


def one_run(world: ClusterWorld) -> dict[str, Any]:
    guests, api = world.guests, world.api
    started = time.monotonic()
    guests.wait_for_quorum(timeout=60)
    owner = None
    if _until(lambda: guests.resource_node("vip") is not None, 60, 0.1) is not None:
        owner = guests.resource_node("vip")
    vip = world.cluster["vip"]
    if owner is None or _until(lambda: answers(vip), 30, 0.1) is None:
        return {"error": "the VIP never ran"}
    ready_s = time.monotonic() - started
    host = world.host_of(owner)
    others = {m["name"] for m in world.cluster["members"]} - {owner}

    t0 = time.monotonic()
    world.cloud.power_loss(host)
    guests.power_cut(owner)
    marks: dict[str, float | None] = {"declared": None, "fenced": None, "moved": None}

    def progress() -> bool:
        now = time.monotonic()
        if marks["declared"] is None and api.get(f"/v1/hosts/{host}").json()["state"] in (
            "failed",
            "recovered",
        ):
            marks["declared"] = now
        if marks["fenced"] is None:
            recoveries = api.get("/v1/recoveries").json()
            steps = [s for r in recoveries for s in r["steps"] if s["kind"] == "fence"]
            if steps and steps[0]["status"] == "succeeded":
                marks["fenced"] = now
        if marks["moved"] is None and guests.resource_node("vip") in others:
            marks["moved"] = now
        return marks["moved"] is not None and answers(vip)

    answered = _until(progress, 120, 0.05)
    result: dict[str, Any] = {"ready_s": round(ready_s, 2), "vip_was_on": owner, "host": host}
    for name, at in marks.items():
        result[f"{name}_s"] = None if at is None else round(at - t0, 3)
    result["answered_s"] = None if answered is None else round(answered - t0, 3)
    return result


def openstack_runs(runs: int) -> dict[str, Any]:
    """Part B (see the module docstring)."""
    import yaml
    from nova.cloud import CLOUDS_YAML, Minicloud, tool

    # as the nova tier runs it: on the real Keystone (tools/keystone)
    keystone = subprocess.run(
        [str(ROOT / "tools/keystone/keystone"), "start"], capture_output=True, text=True
    )
    if keystone.returncode != 0:
        return {"error": f"keystone start failed: {keystone.stderr[-500:]}"}
    started = tool("start", "--keystone", timeout=400)
    if started.returncode != 0:
        return {"error": f"minicloud start failed: {started.stderr[-500:]}"}
    cloud = Minicloud(started_here=True, startup_seconds=0.0)
    auth = yaml.safe_load(CLOUDS_YAML.read_text())["clouds"]["minicloud"]["auth"]
    credentials = [
        f"--auth-url={auth['auth_url']}",
        f"--username={auth['username']}",
        f"--password={auth['password']}",
        f"--project-name={auth['project_name']}",
        f"--user-domain-name={auth.get('user_domain_name', 'Default')}",
        f"--project-domain-name={auth.get('project_domain_name', 'Default')}",
    ]

    def fence(action: str, server: str) -> dict[str, Any]:
        t = time.monotonic()
        done = subprocess.run(
            ["/usr/sbin/fence_openstack", "-o", action, "-n", server, *credentials],
            capture_output=True,
            text=True,
            timeout=300,
        )
        said = (done.stdout + done.stderr).strip().splitlines()
        return {
            "exit": done.returncode,
            "seconds": round(time.monotonic() - t, 2),
            "said": said[-1][-300:] if said else "",
        }

    results = []
    for _ in range(runs):
        cloud.restore()
        server = cloud.boot("member", "compute1")
        run: dict[str, Any] = {"status_before": fence("status", server)}
        cloud.kill("compute1")  # T0: the hypervisor is gone
        t0 = time.monotonic()
        run["off_at_once"] = fence("off", server)
        while time.monotonic() - t0 < 25:  # Nova's service_down_time here is 20 s
            time.sleep(0.5)
        run["off_nova_knows_down"] = fence("off", server)
        service = next(s for h, s in cloud.services().items() if h == "compute1")
        cloud.nova("PUT", f"/os-services/{service['id']}", {"forced_down": True}, mv="2.53")
        run["off_forced_down"] = fence("off", server)
        run["status_after"] = fence("status", server)
        run["nova_status_after"] = cloud.server(server)["status"]
        run["seconds_since_t0"] = round(time.monotonic() - t0, 1)
        results.append(run)
        print(f"fence_openstack run: {run}", flush=True)
    cloud.restore()
    tool("stop", timeout=120)
    subprocess.run([str(ROOT / "tools/keystone/keystone"), "stop"], capture_output=True)
    return {"runs": results}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cluster_failover.json")
    parser.add_argument("--openstack", action="store_true", help="also part B: fence_openstack")
    parser.add_argument("--openstack-runs", type=int, default=3)
    parser.add_argument(
        "--openstack-only",
        action="store_true",
        help="part B alone, added to the part A already in --out",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.openstack_only:
        kept = json.loads(args.out.read_text())
        kept["fence_openstack"] = openstack_runs(args.openstack_runs)
        kept["fence_openstack_command"] = (
            ".venv/bin/python bench/cluster_failover.py --openstack-only "
            f"--openstack-runs {args.openstack_runs}"
        )
        args.out.write_text(json.dumps(kept, indent=2) + "\n")
        print(json.dumps(kept["fence_openstack"], indent=2))
        return 0 if "runs" in kept["fence_openstack"] else 1

    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp, cluster_world(Path(tmp), prefix="vgb") as w:
            run = one_run(w)
        runs.append(run)
        print(f"run {i + 1}: {run}", flush=True)
    done = [r for r in runs if r.get("answered_s") is not None]
    summary = {
        f"{k}_s": _stats([r[f"{k}_s"] for r in done if r.get(f"{k}_s") is not None])
        for k in ("declared", "fenced", "moved", "answered")
    }
    result = {
        "benchmark": "cluster_failover",
        "command": "sudo .venv/bin/python bench/cluster_failover.py --runs " + str(args.runs),
        "machine": {"cpus": 2, "python": platform.python_version()},
        "failure": "the hypervisor of the member holding the VIP loses power; the member "
        "(its namespaces) dies with it at the same moment",
        "corosync": COROSYNC,
        "vigil": {
            "detection": "defaults (failed_after about 1 s of silence, BMC read)",
            "heartbeat_interval_s": 0.1,
            "fence": "simulated BMC, confirmed off",
        },
        "runs_asked": args.runs,
        "runs_done": len(done),
        "target_answered_s": 10.0,
        "vigil_fence_vigil": summary,
        "runs": runs,
    }
    if args.openstack:
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # part A kept whatever B does
        result["fence_openstack"] = openstack_runs(args.openstack_runs)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if len(done) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
