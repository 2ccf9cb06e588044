"""Randomized, seeded fault schedules against a real vigil-server, judged by ground truth.

Each schedule (``vigil.sim.schedules.generate(seed)``) builds a simulated cloud of 3-8
hosts, starts a real ``python -m vigil.server`` on SQLite with accelerated settings,
applies a random list of faults at random times (power, isolation, hangs, agent crashes,
BMC faults, lost evacuations, packet loss, SIGKILL of the server...), heals them, lets
the world settle and checks the simulated cloud's own records: never two copies, no
healthy host fenced, every keep-running instance running again, every recovery ended,
no evacuation aimed at a host known down. See ``vigil/sim/schedules.py``.

    .venv/bin/python bench/fault_schedules.py --schedules 300 --jobs 3 \\
        --out bench/results/fault_schedules.json
    .venv/bin/python bench/fault_schedules.py --seed 17      # rerun one, keep its logs

With ``--servers 3`` each schedule runs three vigil-servers on PostgreSQL and a
three-member etcd cluster of its own (issue 15), on top of the same seed's host faults:
any server killed and started again, stopped (SIGSTOP) past its lease and continued, or
cut off from etcd (a partition: its proxy to its member drops every byte) and mended; an
etcd member killed and started again, or two (etcd's majority lost). The checker also
looks for a host fenced again with no power restored between (``fenced-twice``):

    .venv/bin/python bench/fault_schedules.py --servers 3 --schedules 200 --jobs 2 \\
        --out bench/results/schedules.json

``--rev REV`` runs everything -- this runner, the simulated cloud and agents, and the
server -- from ``git archive REV`` (a tree being edited by others can neither break the
runs half-way nor mix two versions of agent and server); the default runs this working
tree.
``--findings FILE`` appends the first schedule of each violation kind, with the server's
log lines, for whoever fixes them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vigil.sim.schedules import Cluster, Timing, generate, run_schedule  # noqa: E402


def run_seed(seed: int, state_root: str, keep: bool, servers: int = 1) -> dict[str, Any]:
    """One schedule in a worker process; its result as JSON-ready data. Several servers
    run on an empty PostgreSQL database of the schedule's own (dropped after it) and an
    etcd cluster of its own (its faults kill members), each server reaching its member
    through a proxy that a partition stalls."""
    schedule = generate(seed, servers=servers)
    state_dir = Path(state_root) / f"seed-{seed}"
    if servers == 1:
        return run_schedule(schedule, Timing(), state_dir=state_dir, keep=keep).to_json()
    sys.path.insert(0, str(ROOT / "tests"))
    from services import POSTGRES_ADMIN_URL, scratch_database

    from vigil.store.sql import upgrade

    etcd_dir = Path(state_root) / f"etcd-{seed}"
    with scratch_database(POSTGRES_ADMIN_URL) as db_url, EtcdFaults(etcd_dir, seed) as faults:
        upgrade(db_url)
        cluster = Cluster(db_url, faults.urls, namespace=f"sched-{seed}", faults=faults)
        result = run_schedule(schedule, Timing(), state_dir=state_dir, keep=keep, cluster=cluster)
    return result.to_json()


class EtcdFaults:
    """A three-member etcd cluster on 127.0.0.1 (``tests/support/etcd.py``) and a
    ``TcpProxy`` from each server to its member: the ``ClusterFaults`` of a schedule."""

    def __init__(self, base: Path, seed: int) -> None:
        from support.etcd import EtcdCluster, free_base_port
        from support.proxy import TcpProxy

        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self._base = base
        # Ports of the seed's own: two schedules running side by side never race for one.
        self.etcd = EtcdCluster(base, size=3, base_port=free_base_port(3, 24000 + seed % 400 * 8))
        self.etcd.start()
        self.proxies = [TcpProxy("127.0.0.1", self.etcd.client_port(k)) for k in range(3)]
        self.urls = tuple(f"etcd3+http://127.0.0.1:{p.port}" for p in self.proxies)

    def member(self, k: int, up: bool) -> None:
        if up:
            self.etcd.restart(k, wait=False)
        else:
            self.etcd.kill(k)

    def cut(self, i: int, cut: bool) -> None:
        (self.proxies[i].stall if cut else self.proxies[i].mend)()

    def __enter__(self) -> EtcdFaults:
        return self

    def __exit__(self, *exc: object) -> None:
        for proxy in self.proxies:
            proxy.close()
        self.etcd.stop()
        shutil.rmtree(self._base, ignore_errors=True)


def rerun_from(rev: str, argv: list[str]) -> int:
    """Run this command again from ``git archive rev`` (runner, agents and server alike)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dest = tempfile.mkdtemp(prefix=f"vigil-{commit}-")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": dest, "VIGIL_SCHEDULES_REV": commit}
    script = str(Path(dest) / "bench" / "fault_schedules.py")
    return subprocess.run([sys.executable, script, *argv], env=env, cwd=dest).returncode


def report(res: dict[str, Any], out: Any = sys.stdout) -> None:
    viol = res["violations"]
    status = "ok" if not viol else f"{len(viol)} VIOLATION(S)"
    out.write(f"seed {res['seed']}: {status} ({res['duration_s']}s)\n")
    if not viol:
        out.write(f"    {res['schedule'][0].split(': ', 1)[1]}; {'; '.join(res['schedule'][1:])}\n")
    else:
        for line in res["schedule"]:
            out.write(f"    {line}\n")
        for v in viol:
            out.write(f"  ! {v['kind']}: {v['detail']}\n")
        out.write(f"    state: {res['state_dir']}\n")
    out.flush()


def append_findings(path: Path, res: dict[str, Any], kinds: set[str], rev: str) -> None:
    """Append the violations of a kind not yet reported by this run."""
    new = [v for v in res["violations"] if v["kind"] not in kinds]
    if not new:
        return
    kinds.update(v["kind"] for v in new)
    lines = [
        f"\n## {', '.join(sorted({v['kind'] for v in new}))}: seed {res['seed']} "
        f"(fault-schedule runner, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"server {rev})\n",
        "Schedule:\n",
        *(f"    {line}\n" for line in res["schedule"]),
        "Ground truth (SimCloud):\n",
        *(f"- {v['kind']}: {v['detail']}\n" for v in new),
        "vigil-server log (lines naming the host/instance):\n",
    ]
    for host, excerpt in res["log_excerpts"].items():
        lines.append(f"  {host}:\n")
        lines.extend(f"    {ln}\n" for ln in excerpt[-12:])
    lines.append(
        f"Reproduce: .venv/bin/python bench/fault_schedules.py --seed {res['seed']} "
        f"--rev {rev} (state dir with server.log and ground-truth.json: {res['state_dir']})\n"
    )
    with open(path, "a") as f:
        f.writelines(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, action="append", help="run only these seeds")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="vigil-servers per schedule; several run on PostgreSQL (127.0.0.1:5432) and "
        "a three-member etcd cluster this command starts, with server faults on top",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--rev", help="run runner, agents and server from git archive REV")
    parser.add_argument("--findings", help="append new kinds of violation to this file")
    parser.add_argument("--state-root", default=str(Path(tempfile.gettempdir()) / "vigil-sched"))
    parser.add_argument("--keep", action="store_true", help="keep every state dir")
    args = parser.parse_args(argv)
    if args.rev:
        given = list(sys.argv[1:] if argv is None else argv)
        rest: list[str] = []
        skip = False
        for a in given:  # every argument but --rev
            if skip or a.startswith("--rev="):
                skip = False
                continue
            skip = a == "--rev"
            if not skip:
                rest.append(a)
        for flag in ("--out", "--findings", "--state-root"):  # paths stay where they were
            if flag in rest:
                j = rest.index(flag) + 1
                rest[j] = str(Path(rest[j]).resolve())
        return rerun_from(args.rev, rest)
    seeds = args.seed or list(range(args.first_seed, args.first_seed + args.schedules))
    keep = args.keep or bool(args.seed)
    rev = os.environ.get("VIGIL_SCHEDULES_REV") or "working tree"
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    kinds: set[str] = set()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = [pool.submit(run_seed, s, args.state_root, keep, args.servers) for s in seeds]
        for fut in concurrent.futures.as_completed(futures):
            res = fut.result()
            results.append(res)
            report(res)
            if args.findings:
                append_findings(Path(args.findings), res, kinds, rev)
    results.sort(key=lambda r: r["seed"])
    by_kind = Counter(v["kind"] for r in results for v in r["violations"])
    bad = [r for r in results if r["violations"]]
    summary: dict[str, Any] = {
        "schedules": len(results),
        "violations": sum(by_kind.values()),
        "schedules_with_violations": len(bad),
        "violations_by_kind": dict(sorted(by_kind.items())),
        "seeds_by_kind": {
            k: [r["seed"] for r in results if any(v["kind"] == k for v in r["violations"])]
            for k in sorted(by_kind)
        },
        "stranded_with_reason": sum(len(r["stranded_with_reason"]) for r in results),
        "fenced_after_return": sum(len(r["fenced_after_return"]) for r in results),
        "evacuations_to_fresh_dead": sum(len(r["evacuations_to_fresh_dead"]) for r in results),
        "resets_without_quorum": sum(len(r.get("resets_without_quorum", [])) for r in results),
        "duration_s": round(time.monotonic() - started, 1),
        "mean_schedule_s": round(sum(r["duration_s"] for r in results) / max(1, len(results)), 1),
        "settings": {
            "jobs": args.jobs,
            "servers": args.servers,
            "seeds": [seeds[0], seeds[-1]] if not args.seed else seeds,
            "server": rev,
            "timing": asdict(Timing()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python "
            f"{platform.python_version()}",
        },
        "details": [
            {k: r[k] for k in ("seed", "schedule", "violations", "stranded_with_reason", "error")}
            for r in bad
        ],
        "results": [
            {
                "seed": r["seed"],
                "violations": len(r["violations"]),
                "duration_s": r["duration_s"],
                "stranded_with_reason": len(r["stranded_with_reason"]),
                "fenced_after_return": len(r["fenced_after_return"]),
            }
            for r in results
        ],
    }
    print(
        f"\n{summary['schedules']} schedules, {summary['violations']} violations in "
        f"{summary['schedules_with_violations']} ({dict(by_kind)}), "
        f"{summary['duration_s']}s with {args.jobs} jobs, {args.servers} server(s) each"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
