"""Benchmark: one vigil-server watching 100 → 10,000 simulated hypervisors (issue 16).

For each size (``--sizes``, default 100, 1,000, 3,000 and 10,000 hosts; 20 instances a
host, KEEP_RUNNING) a world of its own, all real processes on 127.0.0.1:

- this process owns the simulated cloud (``SimCloud`` on the real clock) and serves it
  over HTTP (``vigil.sim.rpc.serve_cloud``); its Nova and BMCs are slowed to stated
  figures (``NOVA``): every call 20 ms, an evacuation 2.0 s from the start of its
  rebuild to ACTIVE, a BMC power-off 1.0 s (each ± 10 %), and Nova runs at most 40
  rebuilds at once (``SimCloud(max_concurrent_evacuations=40)``: an evacuate beyond
  that is accepted and waits its turn), so the simulated Nova's limit is 40 / 2.0 =
  **20 evacuations a second**;
- one ``python -m vigil.server`` (``support.processes.ServerProcess``): on its default
  store, SQLite in a file of a temporary directory (``--store sqlite``), or on a scratch
  PostgreSQL database (``--store postgresql``; ``services.scratch_database``, dropped
  afterwards); default settings but the API token, the agent key and the cloud's URL
  (``--set GROUP.OPTION=VALUE`` changes one, recorded in the JSON);
- ``--senders`` heartbeat sender processes (multiprocessing, "spawn"), each owning every
  ``senders``-th host: every host sends a real signed heartbeat
  (``vigil.wire.heartbeat.encode``, the server's agent key; an agent boot id per agent
  start, its sequence from 1, the host's kernel boot id from the cloud) over real UDP
  every 0.25 s (detection.heartbeat_interval), phases spread at random. Each datagram is
  dropped with probability ``--loss`` and delayed by uniform [0, ``--jitter``] s (one
  heap of due sends per process, no thread per host). A host told to stop (power loss)
  sends nothing more at once (a datagram already on its way still arrives); told to
  start (power back), it is a new agent: new boot id, sequence from 1, the new kernel
  boot id. Each sender reports its datagrams sent and dropped on purpose, its lag
  behind schedule and its CPU, so that one that cannot keep up shows.

With ``--servers N`` (more than one: ``--store postgresql``; ``1,3``: each size with one
server, then with three, side by side), N vigil-servers share one
scratch database (migrated once) and a coordination backend (``--coordination``, a tooz
URL; Redis on 127.0.0.1 by default, a namespace per size), member ids ``vigil-0`` ...;
the segments are spread over them by their ownership rule, and every heartbeat goes to
each of them, as agents send it (``agent.servers``). The API is read through
``vigil-0``'s (every server answers for the whole store); the rest window says, per
server, the segments it acts on, its CPU (and its heartbeat-receiving process's), memory
and heartbeats received (``per_server``); the row's ``cpu_cores`` and ``rss_mb`` are
then their sums.

The hosts are registered through the REST API (``POST /v1/host-batches``, a segment at
a time), in segments of up to 1,000 hosts (``seg-01``, ``seg-02``, ...), each with
max_failed_share 0.5 and max_parallel_evacuations 64, every host fenced by the ``sim``
driver (its BMC in the simulated cloud); then the bench waits for every host ``up`` in
``GET /v1/hosts``. Measured at each size, one phase after the other:

- ``rest``: after a warm-up, over ``--rest-seconds``: the server process's CPU in cores
  (utime + stime from /proc/<pid>/stat, its heartbeat-receiving child's included), its
  resident memory (VmRSS, the same two processes), heartbeats
  recorded per second (``vigil_heartbeats_received_total`` from ``GET /metrics``) and
  the share lost: 1 - received / sent, where sent excludes the datagrams dropped on
  purpose (``--loss``); null if the server has no such metric (the two counters are
  read a few milliseconds apart: a share within ±0.001 of 0 is none);
- ``rack``: the first ``--rack-hosts`` hosts of ``seg-01`` carry ``--rack-instances``
  instances each (2,000 by default) instead of 20, and all lose power at once: the time
  from the cut until every one of those instances is ACTIVE on another host (read from
  the cloud in this process every 0.25 s), the evacuations per second from the first
  evacuate Nova accepted to the last ACTIVE against Nova's 20/s (the ratio), each
  instance rebuilt elsewhere exactly once (``SimCloud.evacuations()``: an evacuate Nova
  answered with "no valid host", or one aimed at a host that had lost power and that Nova
  fails, is counted apart: ``no_valid_host_answers``, ``aimed_at_a_host_without_power``),
  none running twice.
  The rack comes before the power losses (whose instances would otherwise land on its
  lightly loaded hosts at small sizes); its hosts are brought back and restored after;
- ``api_ms``: during the rack failure a thread reads ``GET /v1/hosts?segment=seg-01``
  (the failing rack's segment, up to 1,000 hosts), ``/v1/recoveries`` and
  ``/v1/events`` (their default limit, the latest 100) in turn, each once a second (an
  operator's dashboard refreshing every second): p50/p99 per route;
- ``outbox_lag_s``: the largest ``vigil_outbox_lag_seconds`` seen in ``GET /metrics``
  (every 0.5 s) during the rack failure; null if the server has no such metric;
- ``detection``: ``--failures`` power losses, one at a time on different hosts (outside
  the rack), each when the previous one is over: the sender stops the host and the cloud
  cuts its power at t0; ``detection_s`` is the recovery's ``created_at`` - t0 (p50/p99);
  once the recovery has ended the host gets its power back, its agent starts again and
  it is restored (``POST /v1/hosts/NAME/restore``) and seen ``up`` before the next one.
  ``false_fences``: over the whole size, recoveries of hosts never failed plus BMC
  power-offs (``SimCloud.power_offs()``) of such hosts;
- ``store_growth``: the database's size (SQLite: its pages in use, read through a
  read-only connection, and its files with the -wal; PostgreSQL: pg_database_size) over
  the rest window, scaled to bytes a day, and over the detection phase per recovery.

    .venv/bin/python bench/scale.py [--sizes 100,1000,3000,10000] [--store sqlite]
    .venv/bin/python bench/scale.py --quick      # 50 and 200 hosts, 5 failures, a 5-host rack
    .venv/bin/python bench/scale.py --store postgresql --servers 1,3 --sizes 3000

The JSON (``--out``, default ``bench/results/scale.json``, ``scale-postgresql.json`` with
``--store postgresql``, ``scale-postgresql-servers.json`` with several servers) is
written again after each size, so a long run's first rows survive it; a plot
(``--plot``; matplotlib) shows the server's CPU, memory and detection p99 against hosts.
Progress goes to stderr. Everything started is stopped on exit, error or Ctrl-C
(servers, senders, the cloud's HTTP server, temporary files, the scratch
database). ``ROOT/tests`` is put on sys.path to reuse the tests' support code; type-check
with ``MYPYPATH=tests .venv/bin/mypy bench/scale.py``.

The machine is shared: the server, the senders and this process (the cloud, the API
reader) run on the same cores; each row says what the senders and this process used. A
sender costs about 14 µs of CPU a heartbeat (from a ``BeatTemplate``: signing and
sending), so 10,000 hosts (40,000 a second) take about 0.55 cores of senders, whatever
their number.

Percentiles are nearest-rank: the value at rank ceil(p/100 * n) of the sorted samples,
so with fewer than 100 samples p99 is the maximum.
Targets (issue 16, at 10,000 hosts): detection p99 ≤ 2 s under 5 % loss and 200 ms
jitter, no false fence; the server at most one core and 2 GB at rest; the rack failure
ends with every instance ACTIVE at a throughput within 20 % of the simulated Nova's limit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' shared support, as pytest has it

from services import POSTGRES_ADMIN_URL, scratch_database  # noqa: E402
from support.processes import ServerProcess, server_config  # noqa: E402

from vigil.clock import SystemClock  # noqa: E402
from vigil.drivers.compute import ACTIVE  # noqa: E402
from vigil.model import HaPolicy  # noqa: E402
from vigil.sim.cloud import SimCloud, SimLatency  # noqa: E402
from vigil.sim.rpc import serve_cloud  # noqa: E402
from vigil.sim.senders import SenderProcesses  # noqa: E402
from vigil.store.sql import upgrade  # noqa: E402

TOKEN, KEY = "bench-token", "bench-key"
INSTANCES_PER_HOST = 20
SEGMENT_HOSTS = 1000  # hosts per segment at most
MAX_FAILED_SHARE = 0.5
MAX_PARALLEL_EVACUATIONS = 64  # per segment: above Nova's 40, so that Nova is the limit
HEARTBEAT_INTERVAL = 0.25  # detection.heartbeat_interval's default
# The simulated Nova and BMCs: stated in the JSON ("nova").
NOVA = SimLatency(api_call=0.02, evacuate=2.0, power_off=1.0, jitter=0.1)
NOVA_MAX_EVACUATIONS = 40  # rebuilds Nova runs at once
NOVA_LIMIT_PER_S = NOVA_MAX_EVACUATIONS / NOVA.evacuate
RESTORE_THREADS = 4
API_PAUSE = 1 / 3  # the reader asks each of its three routes once a second
METRICS_EVERY = 0.5  # seconds between two scrapes of /metrics during the rack failure
RACK_POLL = 0.25  # seconds between two looks at the rack's instances
DONE = ("succeeded", "failed", "withdrawn")  # a recovery's final statuses


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def summary(values: list[float], digits: int = 3) -> dict[str, float | int]:
    """p50, p90, p99 (nearest-rank), max, mean, min and n of ``values``."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return {"n": 0}

    def rank(p: float) -> float:
        return round(ordered[max(1, math.ceil(p / 100 * n)) - 1], digits)

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": round(ordered[-1], digits),
        "mean": round(statistics.fmean(ordered), digits),
        "min": round(ordered[0], digits),
        "n": n,
    }


def wait(
    pred: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> Any:
    """Poll ``pred`` until it returns something true (transport errors: not yet);
    ``alive`` raises if waiting is pointless (the server exited)."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        try:
            value = pred()
        except (httpx.HTTPError, ValueError, KeyError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------------- heartbeat senders


# (the sender processes are vigil.sim.senders.SenderProcesses, shared with the demo)


# ------------------------------------------------------------------- the server, measured


def family(pid: int) -> list[int]:
    """``pid`` and its child processes (vigil-server's heartbeat receiver is one)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process and its live children, in seconds."""
    return sum(cpu_by_process(pid))


def cpu_by_process(pid: int) -> tuple[float, float]:
    """utime + stime in seconds of the process ``pid``, and of its live children (the
    heartbeat-receiving process)."""
    own = children = 0
    for p in family(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            if p == pid:
                own += int(fields[11]) + int(fields[12])
            else:
                children += int(fields[11]) + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return own / tick, children / tick


def proc_mem_mb(pid: int, key: str = "VmRSS") -> float:
    """``key`` of /proc/PID/status (kB) of a process and its live children, in MB."""
    total = 0
    for p in family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(client: httpx.Client) -> dict[str, float] | None:
    """``GET /metrics`` as {series: value} (``name{labels}``); None if not served."""
    try:
        response = client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    out: dict[str, float] = {}
    for line in response.text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def total(scrapes: list[dict[str, float] | None], name: str) -> float | None:
    """``name`` summed over several servers' scrapes (None if one lacks it)."""
    values = [metric(m, name) for m in scrapes]
    return None if None in values else sum(v for v in values if v is not None)


def metric(scraped: dict[str, float] | None, name: str, how: str = "sum") -> float | None:
    """The sum (or max) of every series of ``name``; None if there is none."""
    if scraped is None:
        return None
    values = [v for k, v in scraped.items() if k == name or k.startswith(name + "{")]
    if not values:
        return None
    return max(values) if how == "max" else sum(values)


class StoreSize:
    """The database's size in bytes, on SQLite or PostgreSQL."""

    def __init__(self, url: str, sqlite_path: Path | None) -> None:
        self.path = sqlite_path
        self._engine = None if sqlite_path else sa.create_engine(url, poolclass=NullPool)

    def measure(self) -> dict[str, int]:
        if self.path is not None:
            files = sum(
                p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists()
            )
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
            try:
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                free = db.execute("PRAGMA freelist_count").fetchone()[0]
                page_size = db.execute("PRAGMA page_size").fetchone()[0]
            finally:
                db.close()
            return {"used": (pages - free) * page_size, "files": files}
        assert self._engine is not None
        with self._engine.connect() as connection:
            size = connection.execute(
                sa.text("SELECT pg_database_size(current_database())")
            ).scalar_one()
        return {"used": int(size), "files": int(size)}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def log_counts(log: Path) -> dict[str, int]:
    """How many lines of the server's log are errors, warnings, tracebacks."""
    counts = {"error": 0, "warning": 0, "traceback": 0}
    if not log.exists():
        return counts
    with log.open(errors="replace") as lines:
        for line in lines:
            if " ERROR " in line:
                counts["error"] += 1
            elif " WARNING " in line:
                counts["warning"] += 1
            if line.startswith("Traceback"):
                counts["traceback"] += 1
    return counts


@dataclass
class ApiReader:
    """Reads the host, recovery and event lists in turn on a thread of its own."""

    client: httpx.Client
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    # The failing rack's segment (an operator's view of it), the latest 100 recoveries
    # and events (the routes' default limits).
    ROUTES = (
        ("hosts", "/v1/hosts?segment=seg-01"),
        ("recoveries", "/v1/recoveries"),
        ("events", "/v1/events"),
    )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="api-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _run(self) -> None:
        for name, path in itertools.cycle(self.ROUTES):
            if self._stop.is_set():
                return
            started = time.perf_counter()
            try:
                response = self.client.get(path)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                took = (time.perf_counter() - started) * 1000
                self.latencies.setdefault(name, []).append(took)
            else:
                self.errors[name] += 1
            self._stop.wait(API_PAUSE)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _ in self.ROUTES:
            s = summary(self.latencies.get(name, []), digits=1)
            out[name] = {
                "p50": s.get("p50"),
                "p99": s.get("p99"),
                "max": s.get("max"),
                "n": s["n"],
                "errors": self.errors[name],
            }
        return out


@dataclass
class Sampler:
    """Every ``METRICS_EVERY`` s: the outbox lag from /metrics and Nova's rebuilds."""

    client: httpx.Client
    cloud: SimCloud
    lag_max: float | None = None
    running_max: int = 0
    queued_max: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(METRICS_EVERY):
            running, queued = self.cloud.evacuations_in_progress()
            self.running_max = max(self.running_max, running)
            self.queued_max = max(self.queued_max, queued)
            lag = metric(scrape(self.client), "vigil_outbox_lag_seconds", "max")
            if lag is not None:
                self.lag_max = lag if self.lag_max is None else max(self.lag_max, lag)


# ------------------------------------------------------------------------ one size


def host_name(i: int) -> str:
    return f"compute-{i}"


def segment_of(i: int) -> str:
    return f"seg-{(i - 1) // SEGMENT_HOSTS + 1:02d}"


class Size:
    """One size's world: cloud, server, senders; and its measurements."""

    def __init__(self, args: argparse.Namespace, hosts: int, workdir: Path) -> None:
        self.args = args
        self.n = hosts
        self.workdir = workdir
        self.hosts = [host_name(i) for i in range(1, hosts + 1)]
        in_first = min(hosts, SEGMENT_HOSTS)
        self.rack_hosts = self.hosts[: min(args.rack_hosts, max(0, in_first - 1))]
        self.rack_set = set(self.rack_hosts)
        self.failed: Counter[str] = Counter()  # host -> power losses caused by the bench
        self.row: dict[str, Any] = {"hosts": hosts, "store": args.store, "servers": args.servers}
        self.cloud = self._build_cloud()
        self.servers: list[ServerProcess] = []  # the first: self.server, read through self.api
        self.apis: list[httpx.Client] = []
        self.server: ServerProcess | None = None
        self.api: httpx.Client | None = None
        self.senders: SenderProcesses | None = None
        self.size: StoreSize | None = None
        self.rack_ended: list[str] = []  # rack hosts whose recovery ended
        self._stack = contextlib.ExitStack()

    def _build_cloud(self) -> SimCloud:
        cloud = SimCloud(
            SystemClock(),
            latency=NOVA,
            max_concurrent_evacuations=NOVA_MAX_EVACUATIONS,
            seed=self.args.seed,
        )
        rack_total = len(self.rack_hosts) * self.args.rack_instances
        others = max(1, self.n - len(self.rack_hosts))
        # Room for the rack's instances and every detection's twenty, with margin.
        capacity = INSTANCES_PER_HOST * 2 + 2 * math.ceil(rack_total / others) + 20
        capacity = max(capacity, self.args.rack_instances)
        for h in self.hosts:
            cloud.add_host(h, capacity=capacity)
        self.rack_ids: list[str] = []
        count = 0
        for i, h in enumerate(self.hosts, start=1):
            per_host = self.args.rack_instances if h in self.rack_set else INSTANCES_PER_HOST
            for k in range(per_host):
                iid = cloud.add_instance(
                    f"vm-{i}-{k}", h, policy=HaPolicy.KEEP_RUNNING, priority=k % 3, id=f"vm-{i}-{k}"
                )
                if h in self.rack_set:
                    self.rack_ids.append(iid)
                count += 1
        self.row["instances"] = count
        return cloud

    # --- the world ---------------------------------------------------------------------

    def __enter__(self) -> Size:
        try:
            self._up()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _up(self) -> None:
        stack, args = self._stack, self.args
        setup: dict[str, float] = {}
        started = time.monotonic()
        cloud_server, cloud_url = serve_cloud(self.cloud)
        stack.callback(cloud_server.close)
        if args.store == "postgresql":
            db_url = stack.enter_context(scratch_database(POSTGRES_ADMIN_URL))
            self.size = StoreSize(db_url, None)
        else:
            path = self.workdir / "vigil.db"
            db_url = f"sqlite:///{path}"
            self.size = StoreSize(db_url, path)
        stack.callback(self.size.close)
        stack.callback(self._teardown)  # first out: the server, then the senders
        extra: dict[str, dict[str, object]] = {}
        for item in args.overrides:
            name, value = item.split("=", 1)
            group, option = name.split(".", 1)
            extra.setdefault(group, {})[option] = value
        hb_ports = []
        if args.servers > 1:
            upgrade(db_url)  # once: the servers share the schema
        for i in range(args.servers):
            # Several: one coordination backend, a member id each (vigil-0, vigil-1, ...).
            coordination = {
                "backend_url": args.coordination,
                "member_id": f"vigil-{i}",
                "namespace": f"vigil-scale-{os.getpid()}-{self.n}",
            }
            api, hb_port = server_config(
                self.workdir / (f"vigil-{i}.conf" if i else "vigil.conf"),
                token=TOKEN,
                key=KEY,
                cloud_url=cloud_url,
                database=db_url,
                coordination=coordination if args.servers > 1 else None,
                extra=extra,
                timeout=120,
            )
            log = self.workdir / (f"vigil-server-{i}.log" if i else "vigil-server.log")
            server = ServerProcess(self.workdir / (f"vigil-{i}.conf" if i else "vigil.conf"), log)
            self.servers.append(server)
            self.apis.append(api)
            server.start(api, timeout=60)
            hb_ports.append(hb_port)
        self.server, self.api = self.servers[0], self.apis[0]
        setup["server_start_s"] = time.monotonic() - started

        t = time.monotonic()
        self._register()
        setup["register_s"] = time.monotonic() - t
        say(f"{self.n} hosts registered in {setup['register_s']:.1f}s")

        kernel = {h: self.cloud.boot_id(h) for h in self.hosts}
        self.senders = SenderProcesses(
            self.hosts,
            kernel,
            addresses=[("127.0.0.1", port) for port in hb_ports],
            key=KEY.encode(),
            interval=HEARTBEAT_INTERVAL,
            loss=args.loss,
            jitter=args.jitter,
            processes=args.senders,
            seed=args.seed,
        )
        t = time.monotonic()
        self.senders.start()
        setup["senders_start_s"] = time.monotonic() - t
        t = time.monotonic()
        self._wait_all_up(timeout=60 + 0.02 * self.n)
        setup["all_up_s"] = time.monotonic() - t
        say(f"every host up {setup['all_up_s']:.1f}s after the senders started")
        self.row["setup_s"] = {k: round(v, 1) for k, v in setup.items()}

    def _teardown(self) -> None:
        for i, server in enumerate(self.servers):
            out = self.row.setdefault("server", {}) if i == 0 else {}
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(OSError):
                    out["peak_rss_mb"] = proc_mem_mb(server.proc.pid, "VmHWM")
            server.stop()
            out["log"] = log_counts(server.log)
            if i:
                self.row.setdefault("other_servers", []).append(out)
        for api in self.apis:
            api.close()
        if self.senders is not None:
            self.senders.close()

    def _register(self) -> None:
        assert self.api is not None
        api = self.api
        segments = sorted({segment_of(i) for i in range(1, self.n + 1)})
        for name in segments:
            api.post(
                "/v1/segments",
                json={
                    "name": name,
                    "max_failed_share": MAX_FAILED_SHARE,
                    "max_parallel_evacuations": MAX_PARALLEL_EVACUATIONS,
                },
            ).raise_for_status()
        self.row["segments"] = len(segments)
        # A segment's hosts at a time, as an operator adding a cloud would
        # (POST /v1/host-batches: up to 1,000 hosts, all or none).
        for name in segments:
            batch = [
                {"name": host_name(i), "segment": name, "fencing": [{"driver": "sim"}]}
                for i in range(1, self.n + 1)
                if segment_of(i) == name
            ]
            api.post("/v1/host-batches", json={"hosts": batch}).raise_for_status()
            say(f"  {len(batch)} hosts of {name} registered")

    def _states(self) -> Counter[str]:
        assert self.api is not None
        response = self.api.get("/v1/hosts")
        response.raise_for_status()
        return Counter(h["state"] for h in response.json())

    def _wait_all_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        said = time.monotonic()
        every = max(0.5, self.n / 5000)
        while True:
            try:
                states = self._states()
            except httpx.HTTPError:
                states = Counter()
            if states["up"] == self.n:
                return
            self._alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout:g}s waiting for every host up: {dict(states)}"
                )
            if time.monotonic() - said > 10:
                say(f"  hosts so far: {dict(states)}")
                said = time.monotonic()
            time.sleep(every)

    # --- rest ----------------------------------------------------------------------------

    def rest(self) -> None:
        assert self.api and self.server and self.server.proc and self.senders and self.size
        pids, args = self._pids(), self.args
        say(f"warm-up {args.warmup:g}s, then {args.rest_seconds:g}s at rest")
        time.sleep(args.warmup)
        # The senders' counters and the servers', read one right after the other at
        # both ends; rates over each one's own span.
        z0, c0, own0, t0 = (
            self.size.measure(),
            [cpu_by_process(pid) for pid in pids],
            time.process_time(),
            time.monotonic(),
        )
        s0, m0, tm0 = self.senders.stats(), [scrape(a) for a in self.apis], time.monotonic()
        time.sleep(args.rest_seconds)
        s1, m1, tm1 = self.senders.stats(), [scrape(a) for a in self.apis], time.monotonic()
        z1, c1, own1, t1 = (
            self.size.measure(),
            [cpu_by_process(pid) for pid in pids],
            time.process_time(),
            time.monotonic(),
        )
        dt = t1 - t0
        per_server: list[dict[str, Any]] = []
        for i, (api, pid) in enumerate(zip(self.apis, pids, strict=True)):
            got = [metric(m[i], "vigil_heartbeats_received_total") for m in (m0, m1)]
            unverified = [metric(m[i], "vigil_heartbeats_unverified_total") for m in (m0, m1)]
            acting = api.get("/v1/servers").json().get("acting_on", {})
            per_server.append(
                {
                    "member": f"vigil-{i}",
                    "segments_acting_on": len(acting),
                    "cpu_cores": round((sum(c1[i]) - sum(c0[i])) / dt, 3),
                    "receiving_process_cores": round((c1[i][1] - c0[i][1]) / dt, 3),
                    "rss_mb": proc_mem_mb(pid),
                    "heartbeats_per_s": None
                    if None in got
                    else round((got[1] - got[0]) / (tm1 - tm0), 1),  # type: ignore[operator]
                    "unverified_per_s": None
                    if None in unverified
                    else round((unverified[1] - unverified[0]) / (tm1 - tm0), 1),  # type: ignore[operator]
                }
            )
        rss = round(sum(p["rss_mb"] for p in per_server), 1)
        sent = sum(
            (b["sent"] - a["sent"]) / (b["at"] - a["at"]) for a, b in zip(s0, s1, strict=True)
        )
        dropped = sum(
            (b["dropped"] - a["dropped"]) / (b["at"] - a["at"]) for a, b in zip(s0, s1, strict=True)
        )
        # Verified: each heartbeat by the one server holding its host's segment.
        r0, r1 = (total(m, "vigil_heartbeats_received_total") for m in (m0, m1))
        f0, f1 = (total(m, "vigil_heartbeats_refused_total") for m in (m0, m1))
        received = None if r0 is None or r1 is None else (r1 - r0) / (tm1 - tm0)
        refused = None if f0 is None or f1 is None else (f1 - f0) / (tm1 - tm0)
        senders = []
        for a, b in zip(s0, s1, strict=True):
            span = b["at"] - a["at"]
            senders.append(
                {
                    "hosts": b["hosts"],
                    "expected_per_s": round(b["hosts"] / HEARTBEAT_INTERVAL, 1),
                    "achieved_per_s": round((b["beats"] - a["beats"]) / span, 1),
                    "sent_per_s": round((b["sent"] - a["sent"]) / span, 1),
                    "send_errors": b["errors"] - a["errors"],
                    "late_share": round(
                        (b["late"] - a["late"]) / max(1, b["beats"] - a["beats"]), 4
                    ),
                    "max_lag_s": round(b["max_lag_s"], 3),
                    "cpu_cores": round((b["cpu_s"] - a["cpu_s"]) / span, 3),
                }
            )
        self.row["rest"] = {
            "window_s": round(dt, 1),
            "cpu_cores": round(sum(p["cpu_cores"] for p in per_server), 3),
            "receiving_process_cores": round(
                sum(p["receiving_process_cores"] for p in per_server), 3
            ),
            "rss_mb": rss,
            "heartbeats_per_s": None if received is None else round(received, 1),
            "lost_share": None if received is None or not sent else round(1 - received / sent, 4),
            "refused_per_s": None if refused is None else round(refused, 1),
            "sent_per_s": round(sent, 1),
            "dropped_on_purpose_per_s": round(dropped, 1),
            "bench_process_cpu_cores": round((own1 - own0) / dt, 3),
            "per_server": per_server,
        }
        self.row["senders"] = senders
        self.row["store_growth"] = {
            "kind": args.store,
            "at_rest_bytes_per_day": round((z1["used"] - z0["used"]) * 86400 / dt),
            "at_rest_file_bytes_per_day": round((z1["files"] - z0["files"]) * 86400 / dt),
            "size_bytes_at_rest": z1["used"],
        }
        r = self.row["rest"]
        say(
            f"rest: server {r['cpu_cores']} cores, {rss} MB; heartbeats {r['heartbeats_per_s']}/s "
            f"received of {r['sent_per_s']}/s sent (lost {r['lost_share']}); senders "
            + ", ".join(f"{s['achieved_per_s']}/{s['expected_per_s']}/s" for s in senders)
            + f"; receiving processes {r['receiving_process_cores']} cores"
        )
        if len(per_server) > 1:
            for p in per_server:
                say(
                    f"  {p['member']}: acting on {p['segments_acting_on']} segment(s), "
                    f"{p['cpu_cores']} cores ({p['receiving_process_cores']} receiving), "
                    f"{p['rss_mb']} MB, heartbeats {p['heartbeats_per_s']}/s verified, "
                    f"{p['unverified_per_s']}/s unverified"
                )

    # --- detection -------------------------------------------------------------------------

    def _recoveries(self, host: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        assert self.api is not None
        params: dict[str, Any] = {"limit": limit}
        if host is not None:
            params["host"] = host
        response = self.api.get("/v1/recoveries", params=params)
        response.raise_for_status()
        recs: list[dict[str, Any]] = response.json()
        return recs

    def _opened(self, host: str, after: float) -> dict[str, Any] | None:
        return next((r for r in self._recoveries(host) if r["created_at"] >= after), None)

    def _ended(self, host: str, rid: int) -> dict[str, Any] | None:
        return next(
            (r for r in self._recoveries(host) if r["id"] == rid and r["status"] in DONE), None
        )

    def _cut(self, host: str) -> None:
        assert self.senders is not None
        self.senders.stop_host(host)
        self.cloud.power_loss(host)
        self.failed[host] += 1

    def _alive(self) -> None:
        """Raise if a vigil-server has exited: nothing more can be measured."""
        for i, server in enumerate(self.servers):
            assert server.proc is not None
            code = server.proc.poll()
            if code is not None:
                raise RuntimeError(f"vigil-server {i} exited with status {code}")

    def _pids(self) -> list[int]:
        return [s.proc.pid for s in self.servers if s.proc is not None]

    def _cpu_s(self) -> float:
        """Every server's CPU so far (each with its heartbeat-receiving child)."""
        return sum(proc_cpu_s(pid) for pid in self._pids())

    def _is_up(self, host: str) -> bool:
        assert self.api is not None
        return bool(self.api.get(f"/v1/hosts/{host}").json()["state"] == "up")

    def bring_back(self, hosts: list[str]) -> list[str]:
        """Power back, agents started again, restored through the API, seen up; returns
        the hosts that could not be (left off: logged, and listed in the row)."""
        assert self.api is not None and self.senders is not None
        if not hosts:
            return []
        api, senders = self.api, self.senders
        started = time.monotonic()
        for host in hosts:
            self.cloud.power_restore(host)
            senders.start_host(host, self.cloud.boot_id(host))

        def restore(host: str) -> bool:
            try:
                wait(
                    lambda: api.post(f"/v1/hosts/{host}/restore").status_code < 300,
                    60,
                    f"{host} restored",
                    0.2,
                    self._alive,
                )
                wait(functools.partial(self._is_up, host), 60, f"{host} up", 0.1, self._alive)
            except TimeoutError as exc:
                say(f"  {exc}: left as it is")
                return False
            return True

        with ThreadPoolExecutor(min(RESTORE_THREADS, len(hosts))) as pool:
            done = list(pool.map(restore, hosts))
        left = [h for h, ok in zip(hosts, done, strict=True) if not ok]
        if left:
            self.row.setdefault("not_restored", []).extend(left)
        if len(hosts) > 1:
            say(
                f"{len(hosts) - len(left)} of {len(hosts)} hosts back and restored in "
                f"{time.monotonic() - started:.1f}s"
            )
        return left

    def detection(self) -> None:
        assert self.size is not None
        args = self.args
        candidates = [h for h in self.hosts if h not in self.rack_set]
        rng = random.Random(args.seed)
        order = rng.sample(candidates, len(candidates))
        victims = [order[i % len(order)] for i in range(args.failures)]
        z0 = self.size.measure()
        samples: list[dict[str, Any]] = []
        missed: list[str] = []
        down = set(self.row.get("not_restored", []))
        victims = [h for h in victims if h not in down]
        for n, host in enumerate(victims, start=1):
            t0 = time.time()
            self._cut(host)
            try:
                rec = wait(
                    functools.partial(self._opened, host, t0),
                    60,
                    f"{host}'s recovery",
                    alive=self._alive,
                )
            except TimeoutError:
                missed.append(host)  # left off: the next failure is on another host
                say(f"power loss {n}/{len(victims)}: {host} NOT declared within 60s")
                continue
            detected = rec["created_at"] - t0
            try:
                done = wait(
                    functools.partial(self._ended, host, rec["id"]),
                    120 + 10 * INSTANCES_PER_HOST,
                    f"the end of {host}'s recovery",
                    0.1,
                    self._alive,
                )
            except TimeoutError:
                done = {"status": "not ended", "finished_at": None}
            samples.append(
                {
                    "host": host,
                    "detection_s": round(detected, 3),
                    "recovery": done["status"],
                    "recovery_s": round((done["finished_at"] or time.time()) - t0, 3),
                }
            )
            if done["status"] != "not ended":
                self.bring_back([host])
            say(
                f"power loss {n}/{len(victims)}: {host} declared after {detected:.3f}s, "
                f"recovery {done['status']} after {samples[-1]['recovery_s']:.1f}s"
            )
            time.sleep(args.gap)
        z1 = self.size.measure()
        s = summary([x["detection_s"] for x in samples])
        self.row["detection"] = {
            "n": s["n"],
            "missed": len(missed),
            "p50_s": s.get("p50"),
            "p99_s": s.get("p99"),
            "max_s": s.get("max"),
            "mean_s": s.get("mean"),
            "false_fences": None,  # counted at the end of the size
            "recoveries": dict(Counter(x["recovery"] for x in samples)),
            "recovery_s": summary([x["recovery_s"] for x in samples]),
            "samples": samples,
        }
        growth = self.row.setdefault("store_growth", {"kind": args.store})
        growth["per_recovery_bytes"] = round((z1["used"] - z0["used"]) / max(1, len(samples)))
        growth["per_recovery_file_bytes"] = round(
            (z1["files"] - z0["files"]) / max(1, len(samples))
        )

    # --- the rack ------------------------------------------------------------------------

    def rack(self) -> None:
        assert self.api is not None and self.server and self.server.proc
        if not self.rack_hosts:
            self.row["rack"] = None
            return
        api = self.api
        reader_client = httpx.Client(
            base_url=str(api.base_url), headers=dict(api.headers), timeout=120
        )
        sampler_client = httpx.Client(base_url=str(api.base_url), timeout=30)
        reader, sampler = ApiReader(reader_client), Sampler(sampler_client, self.cloud)
        ids = list(self.rack_ids)
        say(f"rack failure: {len(self.rack_hosts)} hosts, {len(ids)} instances")
        try:
            reader.start()
            sampler.start()
            time.sleep(1.0)  # the reader's first answers: at rest
            c0 = self._cpu_s()
            cut_wall, cut = time.time(), time.monotonic()
            for h in self.rack_hosts:
                self._cut(h)
            remaining = set(ids)
            timeout = 600 + 10 * len(ids) / NOVA_LIMIT_PER_S
            said = time.monotonic()
            while remaining:
                self._alive()
                now = time.monotonic()
                for iid in list(remaining):
                    inst = self.cloud.instance(iid)
                    if inst.status == ACTIVE and inst.host not in self.rack_set:
                        remaining.discard(iid)
                if not remaining:
                    break
                if now - cut > timeout:
                    break
                if now - said > 10:
                    running, queued = self.cloud.evacuations_in_progress()
                    say(
                        f"  {len(ids) - len(remaining)}/{len(ids)} ACTIVE elsewhere after "
                        f"{now - cut:.0f}s (Nova: {running} rebuilding, {queued} waiting)"
                    )
                    said = now
                time.sleep(RACK_POLL)
            ended = time.monotonic()
            c1 = self._cpu_s()
        finally:
            reader.stop()
            sampler.stop()
            reader_client.close()
            sampler_client.close()
        all_active = None if remaining else round(ended - cut, 2)
        mine = set(ids)
        records = [e for e in self.cloud.evacuations() if e.instance in mine]

        # Rebuilt: an evacuate Nova accepted and scheduled on a host with power. An
        # answer of "no valid host", or a destination that had lost power (another rack
        # host vigil had not yet seen fail), moves nothing: Nova fails it, vigil asks
        # again; each is counted apart.
        def rebuilt(e: Any) -> bool:
            condition = e.dest_condition
            return not e.lost and e.dest is not None and condition is not None and condition.powered

        per_instance = Counter(e.instance for e in records if rebuilt(e))
        first = min((e.at for e in records), default=None)
        span = None if first is None or remaining else ended - first
        rate = None if span is None else len(ids) / span
        double = set(self.cloud.double_running()) & mine

        def recs_ended() -> list[dict[str, Any]] | None:
            recs = [r for r in self._recoveries(limit=1000) if r["host"] in self.rack_set]
            recs = [r for r in recs if r["created_at"] >= cut_wall]
            ok = len(recs) >= len(self.rack_hosts) and all(r["status"] in DONE for r in recs)
            return recs if ok else None

        try:
            recs: list[dict[str, Any]] = wait(
                recs_ended, 600, "the rack's recoveries to end", 0.5, self._alive
            )
        except TimeoutError:
            recs = [r for r in self._recoveries(limit=1000) if r["host"] in self.rack_set]
            recs = [r for r in recs if r["created_at"] >= cut_wall]
        self.rack_ended = [r["host"] for r in recs if r["status"] in DONE]
        self.row["rack"] = {
            "hosts": len(self.rack_hosts),
            "instances": len(ids),
            "all_active_s": all_active,
            "not_active": len(remaining),
            "first_evacuation_s": None if first is None else round(first - cut, 2),
            "evacuation_span_s": None if span is None else round(span, 2),
            "evacuations_per_s": None if rate is None else round(rate, 2),
            "evacuations_per_s_from_cut": None
            if all_active is None
            else round(len(ids) / all_active, 2),
            "nova_limit_per_s": NOVA_LIMIT_PER_S,
            "ratio_to_limit": None if rate is None else round(rate / NOVA_LIMIT_PER_S, 3),
            "evacuated_exactly_once": all(per_instance[i] == 1 for i in ids),
            "evacuated_never": sum(per_instance[i] == 0 for i in ids),
            "evacuated_more_than_once": sum(per_instance[i] > 1 for i in ids),
            "evacuate_calls": len(records),
            "no_valid_host_answers": sum(1 for e in records if e.dest is None),
            "aimed_at_a_host_without_power": sum(
                1
                for e in records
                if e.dest is not None and e.dest_condition and not e.dest_condition.powered
            ),
            "double_running": len(double),
            "nova_rebuilding_max": sampler.running_max,
            "nova_waiting_max": sampler.queued_max,
            "recoveries": dict(Counter(r["status"] for r in recs)),
            "server_cpu_cores": round((c1 - c0) / (ended - cut), 3),
        }
        self.row["api_ms"] = reader.result()
        self.row["outbox_lag_s"] = None if sampler.lag_max is None else round(sampler.lag_max, 3)
        r = self.row["rack"]
        say(
            f"rack: all ACTIVE after {r['all_active_s']}s, {r['evacuations_per_s']} evacuations/s "
            f"(Nova's limit {NOVA_LIMIT_PER_S:g}/s, ratio {r['ratio_to_limit']}), "
            f"exactly once: {r['evacuated_exactly_once']}, double running: {r['double_running']}; "
            "API p99 ms "
            + ", ".join(f"{k} {v['p99']}" for k, v in self.row["api_ms"].items())
            + f"; outbox lag max {self.row['outbox_lag_s']}"
        )

    # --- false fences --------------------------------------------------------------------

    def false_fences(self) -> None:
        recs = self._recoveries(limit=1000)
        never = [r["host"] for r in recs if r["host"] not in self.failed]
        offs = [p.host for p in self.cloud.power_offs() if p.host not in self.failed]
        by_host = Counter(r["host"] for r in recs if r["host"] in self.failed)
        extra = {h: n - self.failed[h] for h, n in by_host.items() if n > self.failed[h]}
        detection = self.row.setdefault("detection", {})
        detection["false_fences"] = len(never) + len(offs)
        detection["false_fence_hosts"] = sorted(set(never) | set(offs))
        detection["extra_recoveries"] = extra


# --------------------------------------------------------------------------- output


def git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.rstrip()  # not lstrip: porcelain lines start with a space


def targets(row: dict[str, Any]) -> dict[str, bool | None]:
    """Issue 16's targets (set for 10,000 hosts), judged on this row."""
    rest, det, rack = row.get("rest") or {}, row.get("detection") or {}, row.get("rack") or {}
    p99, ratio = det.get("p99_s"), rack.get("ratio_to_limit")
    return {
        "detection_p99_le_2s": None if p99 is None else p99 <= 2.0,
        "no_false_fence": None if det.get("false_fences") is None else det["false_fences"] == 0,
        "cpu_le_1_core": None if "cpu_cores" not in rest else rest["cpu_cores"] <= 1.0,
        "rss_le_2gb": None if "rss_mb" not in rest else rest["rss_mb"] <= 2048,
        "rack_all_active": None if not rack else rack.get("not_active") == 0,
        "rack_within_20pct_of_limit": None if ratio is None else ratio >= 0.8,
        "rack_exactly_once": None if not rack else rack.get("evacuated_exactly_once"),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no plot")
        return
    result = {**result, "sizes": sorted(result["sizes"], key=lambda r: r["hosts"])}
    rows = [r for r in result["sizes"] if r.get("rest")]
    if not rows:
        return
    xs = [r["hosts"] for r in rows]
    panels = [
        ("server CPU at rest (cores)", [r["rest"]["cpu_cores"] for r in rows], 1.0),
        ("server RSS at rest (MB)", [r["rest"]["rss_mb"] for r in rows], 2048.0),
        (
            "detection p99 (s)",
            [(r.get("detection") or {}).get("p99_s") for r in rows],
            2.0,
        ),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, ys, target) in zip(axes, panels, strict=True):
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="#2a9d8f")
            for x, y in points:
                ax.annotate(
                    f"{y:g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center"
                )
        ax.axhline(target, color="#e76f51", linestyle="--", linewidth=1, label="target")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("hosts")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
    fig.suptitle(
        f"One vigil-server ({result['settings']['store']}), {INSTANCES_PER_HOST} instances a "
        f"host, {result['loss']:.0%} loss, {result['jitter'] * 1000:.0f} ms jitter"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], out: Path, plot_path: Path | None) -> None:
    result["machine"]["loadavg_now"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    if plot_path is not None:
        plot(result, plot_path)


def run_size(
    args: argparse.Namespace, hosts: int, base: Path
) -> tuple[dict[str, Any], BaseException | None]:
    """One row, and what stopped it (the row then has what was measured, and "error")."""
    workdir = base / (f"size-{hosts}" + (f"-{args.servers}-servers" if args.servers > 1 else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"=== {hosts} hosts ({args.store}, {args.servers} server(s)) ===")
    row: dict[str, Any] = {"hosts": hosts, "store": args.store, "servers": args.servers}
    failure: BaseException | None = None
    try:
        size = Size(args, hosts, workdir)
        row = size.row
        with size:
            size.rest()
            size.rack()
            size.bring_back(size.rack_ended)
            size.detection()
            size.false_fences()
    except (Exception, KeyboardInterrupt) as exc:
        failure = exc
        row["error"] = f"{type(exc).__name__}: {exc}"
        log = workdir / "vigil-server.log"
        if log.exists() and not isinstance(exc, KeyboardInterrupt):
            tail = log.read_text(errors="replace").splitlines()[-20:]
            say("server log, last lines:\n" + "\n".join(tail))
    row["duration_s"] = round(time.monotonic() - started, 1)
    row["targets"] = targets(row)
    return row, failure


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", help="hosts per row, comma-separated (100,1000,3000,10000)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--failures", type=int, help="power losses per size (50)")
    parser.add_argument("--loss", type=float, default=0.05, help="heartbeats dropped (0.05)")
    parser.add_argument("--jitter", type=float, default=0.2, help="max delay, seconds (0.2)")
    parser.add_argument("--senders", type=int, default=2, help="sender processes (2)")
    parser.add_argument("--rest-seconds", type=float, help="rest window, seconds (30)")
    parser.add_argument("--warmup", type=float, help="seconds all up before the window (10)")
    parser.add_argument("--rack-hosts", type=int, help="hosts of the rack failure (40)")
    parser.add_argument("--rack-instances", type=int, default=50, help="per rack host (50)")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between failures")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="GROUP.OPTION=VALUE",
        help="a vigil-server option other than the defaults, e.g. recovery.workers=64",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 50 and 200 hosts, 5 failures, 5 racked"
    )
    parser.add_argument(
        "--servers",
        default="1",
        help="vigil-servers sharing the hosts, comma-separated: each size is run with each "
        "count, side by side (1); more than one need --store postgresql",
    )
    parser.add_argument(
        "--coordination",
        default="redis://127.0.0.1:6379",
        help="their coordination backend, a tooz URL (redis://127.0.0.1:6379)",
    )
    parser.add_argument("--logs", help="keep each size's server log and database here")
    parser.add_argument("--out", help="default bench/results/scale.json (-postgresql)")
    parser.add_argument("--plot", help="default: --out with .png")
    args = parser.parse_args()
    quick = args.quick
    if args.sizes is None:
        args.sizes = "50,200" if quick else "100,1000,3000,10000"
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    for name, normal, small in (
        ("failures", 50, 5),
        ("rest_seconds", 30.0, 10.0),
        ("warmup", 10.0, 3.0),
        ("rack_hosts", 40, 5),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else normal)
    if any(not re.fullmatch(r"[a-z_]+\.[a-z_]+=.*", o) for o in args.overrides):
        parser.error("--set takes GROUP.OPTION=VALUE")
    if min(sizes) < 2 or args.failures < 0 or args.senders < 1 or not 0 <= args.loss < 1:
        parser.error("sizes of at least 2 hosts, failures >= 0, senders >= 1, loss in [0, 1)")
    counts = [int(n) for n in args.servers.split(",") if n.strip()]
    if not counts or min(counts) < 1 or (max(counts) > 1 and args.store != "postgresql"):
        parser.error("--servers: at least 1; more than one share a --store postgresql")
    suffix = ("" if args.store == "sqlite" else f"-{args.store}") + (
        "-servers" if max(counts) > 1 else ""
    )
    out = Path(args.out or ROOT / f"bench/results/scale{suffix}.json")
    # The plot is of one server against hosts; several servers' rows are compared in
    # the JSON (per_server) and the README.
    plot_path = (
        None if max(counts) > 1 else Path(args.plot) if args.plot else out.with_suffix(".png")
    )

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.logs:
        base = Path(args.logs).resolve()
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix="vigil-scale-"))
    command = " ".join(["python", "bench/scale.py", *sys.argv[1:]])
    result: dict[str, Any] = {
        "benchmark": "scale",
        "command": command,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": [],
        "nova": {
            "api_call_s": NOVA.api_call,
            "evacuate_s": NOVA.evacuate,
            "power_off_s": NOVA.power_off,
            "action_s": NOVA.action,
            "jitter": NOVA.jitter,
            "max_concurrent_evacuations": NOVA_MAX_EVACUATIONS,
            "limit_evacuations_per_s": NOVA_LIMIT_PER_S,
        },
        "loss": args.loss,
        "jitter": args.jitter,
        "settings": {
            "store": args.store,
            "servers": counts,
            "coordination": args.coordination if max(counts) > 1 else None,
            "instances_per_host": INSTANCES_PER_HOST,
            "policy": HaPolicy.KEEP_RUNNING.value,
            "segment_hosts": SEGMENT_HOSTS,
            "max_failed_share": MAX_FAILED_SHARE,
            "max_parallel_evacuations": MAX_PARALLEL_EVACUATIONS,
            "heartbeat_interval_s": HEARTBEAT_INTERVAL,
            "senders": args.senders,
            "failures": args.failures,
            "rest_seconds": args.rest_seconds,
            "warmup_s": args.warmup,
            "rack_hosts": args.rack_hosts,
            "rack_instances": args.rack_instances,
            "gap_s": args.gap,
            "api_pause_s": API_PAUSE,
            "seed": args.seed,
            "quick": quick,
            "server_options": args.overrides or "defaults",
        },
        "code": {
            "commit": git("rev-parse", "--short", "HEAD"),
            "vigil_changed": [
                ln[3:] for ln in git("status", "--porcelain", "--", "vigil").splitlines()
            ],
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        },
        "percentiles": "nearest-rank; with fewer than 100 samples p99 is the max",
    }
    started = time.monotonic()
    status = 0
    try:
        for hosts, count in itertools.product(sizes, counts):
            row, failure = run_size(
                argparse.Namespace(**{**vars(args), "servers": count}), hosts, base
            )
            result["duration_s"] = round(time.monotonic() - started, 1)
            result["sizes"].append(row)
            write(result, out, plot_path)
            if isinstance(failure, KeyboardInterrupt):
                say(f"interrupted; what was measured is in {out}")
                status = 130
                break
            if failure is not None:
                say(f"{hosts} hosts failed ({row['error']}); what was measured is in {out}")
                status = 1
                break
            say(f"{hosts} hosts done in {row['duration_s']:.0f}s -> {out}")
    finally:
        if args.logs:
            say(f"logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if status:
        return status
    for row in result["sizes"]:
        det, rest, rack = row["detection"], row["rest"], row["rack"] or {}
        print(
            f"{row['hosts']:>6} hosts, {row.get('servers', 1)} server(s): "
            f"{rest['cpu_cores']} cores, {rest['rss_mb']} MB, "
            f"{rest['heartbeats_per_s']} heartbeats/s (lost {rest['lost_share']}); detection "
            f"p50 {det['p50_s']}s p99 {det['p99_s']}s over {det['n']}, false fences "
            f"{det['false_fences']}; rack {rack.get('instances')} instances ACTIVE after "
            f"{rack.get('all_active_s')}s at {rack.get('evacuations_per_s')}/s "
            f"({rack.get('ratio_to_limit')} of Nova's limit)"
        )
    print(f"-> {out}" + (f", {plot_path}" if plot_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
