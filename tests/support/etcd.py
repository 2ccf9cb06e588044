"""A real etcd cluster of ``size`` members on 127.0.0.1, for the coordination tests.

Members are numbered from 0 (``kill(0)``, ``tooz_url(0)``) and named ``m1``, ``m2``, …
Member ``i`` listens for clients on ``base_port + 2*i`` and for its peers on
``base_port + 2*i + 1``: with the default base 23790 a three-member cluster uses
23790..23795 (never etcd's own 2379/2380, which a packaged etcd may hold). Each member
keeps its data in ``base_dir/m<i+1>.etcd`` and writes its log to ``base_dir/m<i+1>.log``.

Timing: ``--heartbeat-interval 100 --election-timeout 1000`` (milliseconds, etcd's own
defaults): a cluster is healthy about 1 s after start, a new leader is elected about 1 s
after the leader dies, and the shortest lease etcd grants is then 2 s
(ceil(1.5 * election timeout)). Leases only expire while the cluster has a quorum.

``kill(i)`` is SIGKILL, ``restart(i)`` starts the member again on its data dir (it rejoins
its cluster), ``pause(i)``/``resume(i)`` are SIGSTOP/SIGCONT. Every process is started by
this class and ended by its id; a test run that dies takes its members with it
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import urlencode

HEARTBEAT_INTERVAL_MS = 100
ELECTION_TIMEOUT_MS = 1000
START_TIMEOUT = 30.0  # seconds for the whole cluster to report healthy


def etcd_binary() -> str:
    """The path of ``etcd``; raises if it is not installed (``tools/etcd/setup``)."""
    path = shutil.which("etcd")
    if path is None:
        raise FileNotFoundError("no etcd on PATH (run tools/etcd/setup)")
    return path


def ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as etcd (Go) does
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_base_port(size: int, start: int = 23790, tries: int = 50) -> int:
    """The first base port from ``start`` (in steps of 10) whose ``2*size`` ports are all
    free, so that two test runs on one machine do not collide."""
    for base in range(start, start + 10 * tries, 10):
        if ports_free(list(range(base, base + 2 * size))):
            return base
    raise RuntimeError(f"no {2 * size} free ports from {start} on")


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL when the test process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)


def _get_json(url: str, timeout: float) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = json.loads(response.read())
    assert isinstance(data, dict)
    return data


class EtcdCluster:
    def __init__(self, base_dir: Path, size: int = 3, base_port: int = 23790) -> None:
        self.base_dir = Path(base_dir)
        self.size = size
        self.base_port = base_port
        self.names = [f"m{i + 1}" for i in range(size)]
        self.token = f"vigil-test-{secrets.token_hex(4)}"
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * size

    # -- addresses -------------------------------------------------------------------

    def client_port(self, i: int) -> int:
        return self.base_port + 2 * i

    def peer_port(self, i: int) -> int:
        return self.base_port + 2 * i + 1

    @property
    def client_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client_port(i)}" for i in range(self.size)]

    @property
    def peer_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.peer_port(i)}" for i in range(self.size)]

    def tooz_url(self, i: int = 0, **params: object) -> str:
        """tooz's etcd3gw URL of member ``i``, e.g. ``tooz_url(1, timeout=3)`` →
        ``etcd3+http://127.0.0.1:23792?timeout=3``. tooz talks to that one member only."""
        url = f"etcd3+http://127.0.0.1:{self.client_port(i)}"
        return f"{url}?{urlencode(params)}" if params else url

    def data_dir(self, i: int) -> Path:
        return self.base_dir / f"{self.names[i]}.etcd"

    def log_path(self, i: int) -> Path:
        return self.base_dir / f"{self.names[i]}.log"

    # -- processes -------------------------------------------------------------------

    def _command(self, i: int) -> list[str]:
        initial_cluster = ",".join(
            f"{name}={url}" for name, url in zip(self.names, self.peer_urls, strict=True)
        )
        client, peer = self.client_urls[i], self.peer_urls[i]
        return [
            etcd_binary(),
            f"--name={self.names[i]}",
            f"--data-dir={self.data_dir(i)}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",  # ignored once the data dir exists (restart)
            f"--heartbeat-interval={HEARTBEAT_INTERVAL_MS}",
            f"--election-timeout={ELECTION_TIMEOUT_MS}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    def _spawn(self, i: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_path(i), "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start {self.names[i]}\n".encode())
            log.flush()
            with warnings.catch_warnings():
                # eventlet (imported by futurist, under tooz) frowns on any fork
                warnings.filterwarnings("ignore", "Using fork", DeprecationWarning)
                self._procs[i] = subprocess.Popen(
                    self._command(i),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_die_with_parent,
                )

    def running(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int:
        proc = self._procs[i]
        assert proc is not None, f"{self.names[i]} was never started"
        return proc.pid

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every member on fresh data dirs and wait until all report healthy."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        busy = [
            p
            for i in range(self.size)
            for p in (self.client_port(i), self.peer_port(i))
            if not ports_free([p])
        ]
        if busy:
            raise RuntimeError(f"etcd test ports already in use: {busy}")
        for i in range(self.size):
            shutil.rmtree(self.data_dir(i), ignore_errors=True)
        try:
            for i in range(self.size):
                self._spawn(i)
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (its data dir stays, for ``restart``)."""
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, i: int, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start member ``i`` again on its data dir (killing it first if it runs). With
        ``wait``, until it reports healthy — which needs a quorum of running members."""
        self.kill(i)
        self._spawn(i)
        if wait:
            self.wait_healthy([i], timeout=timeout)

    def pause(self, i: int) -> None:
        os.kill(self.pid(i), signal.SIGSTOP)

    def resume(self, i: int) -> None:
        os.kill(self.pid(i), signal.SIGCONT)

    def stop(self) -> None:
        """End every member this cluster started, by SIGKILL: the data is thrown away, and
        a leader that is asked to stop first tries to hand its leadership over (2 s+)."""
        for i in range(self.size):
            self.kill(i)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health ----------------------------------------------------------------------

    def healthy(self, i: int, timeout: float = 1.0) -> bool:
        """Whether member ``i`` answers ``/health`` with ``"health": "true"`` (it runs,
        and its cluster has a leader)."""
        try:
            data = _get_json(f"{self.client_urls[i]}/health", timeout)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return data.get("health") == "true"

    def wait_healthy(self, members: list[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until each of ``members`` (default: all) is healthy; on timeout raise
        naming the members that are not, with the tail of their logs."""
        members = list(range(self.size)) if members is None else members
        deadline = time.monotonic() + timeout
        waiting = list(members)
        while waiting:
            waiting = [i for i in waiting if not self.healthy(i)]
            if not waiting:
                return
            dead = [i for i in waiting if not self.running(i)]
            if dead or time.monotonic() > deadline:
                why = "exited" if dead else f"not healthy after {timeout:.0f} s"
                raise RuntimeError(
                    f"etcd member(s) {', '.join(self.names[i] for i in dead or waiting)} "
                    f"{why}\n" + "\n".join(self.log_tail(i) for i in dead or waiting)
                )
            time.sleep(0.05)

    def leader(self, timeout: float = 1.0) -> int | None:
        """The member that leads, as the running members report it (None: no leader)."""
        for i in range(self.size):
            if not self.running(i):
                continue
            request = urllib.request.Request(
                f"{self.client_urls[i]}/v3/maintenance/status", data=b"{}", method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    status = json.loads(answer.read())
            except (OSError, ValueError, urllib.error.URLError):
                continue
            if status.get("leader") and status.get("leader") == status["header"]["member_id"]:
                return i
        return None

    def log_tail(self, i: int, lines: int = 20) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"--- {self.log_path(i)}: {exc}"
        return f"--- last {len(text)} lines of {self.log_path(i)}:\n" + "\n".join(text)
