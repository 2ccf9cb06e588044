"""Heartbeats of thousands of simulated hosts, from processes of their own.

``SimAgents`` sends every host's heartbeats from one thread of the process that runs it:
enough for hundreds of hosts, but 10,000 hosts beat 40,000 times a second, which then
takes most of a core, in the same interpreter as whatever else that process runs (the
demo's in-process vigil-server). ``SenderProcesses`` spreads the hosts over a few
processes (multiprocessing, "spawn"), each owning every n-th host and sending real
signed heartbeats over real UDP on one heap of due sends, no thread per host: what
``bench/scale.py`` and ``vigil demo --hosts 10000`` run. Each host's datagrams come from
a ``BeatTemplate`` (the bytes ``vigil.wire.heartbeat.encode`` gives, half its cost).

A host told to stop (it lost power, hung, was cut off) sends nothing more at once (a
datagram already delayed on its way still arrives); told to start again, it is a new
agent: a new agent boot id, its sequence from 1, the kernel boot id it is given. Each
datagram can be dropped (``loss``) or delayed by uniform [0, ``jitter``] s. With several
servers, each host follows its owner's hints as an agent does (``vigil.agent.fanout``).
Each process
counts what it sent and dropped on purpose, and how far behind its schedule it ran, so
that a sender that cannot keep up shows (``stats``).

``CloudFollower`` keeps the processes' hosts in step with a ``SimCloud``: a host sends
only while the cloud says it can (the rule ``SimAgents`` applies to each beat, here
applied within ``every`` seconds of the change).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from vigil.agent.fanout import Fanout
from vigil.sim.cloud import SimCloud
from vigil.wire.heartbeat import MAX_DATAGRAM, BadHeartbeat, BeatTemplate, OwnerHint, decode_hint

LOG = logging.getLogger(__name__)

# A heartbeat sent this much behind its schedule is counted late.
LATE = 0.05
# Due sends handled between two looks at the control pipe.
BURST = 500


def sender_main(
    conn: Connection,
    names: list[str],
    kernel_boot_ids: list[str],
    key: bytes,
    addresses: list[tuple[str, int]],
    interval: float,
    loss: float,
    jitter: float,
    seed: int,
) -> None:
    """One sender process: the agents of ``names``, driven over ``conn``.

    Messages: ("stop", i) host i stops; ("start", i, kernel_boot_id) it starts again as a
    new agent; ("stats",) answered with the counters; ("quit",). A closed pipe (its
    parent died) ends it too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its parent stops it
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    n = len(names)
    agent = [uuid.uuid4().hex[:16] for _ in range(n)]
    kernel = list(kernel_boot_ids)
    beat = [BeatTemplate(names[i], agent[i], key, kernel[i]) for i in range(n)]
    seq = [0] * n
    gen = [0] * n  # a beat due of an older generation (stopped, restarted) is dropped
    running = [True] * n
    order = itertools.count()
    start = time.monotonic()
    # (due, tie-breaker, host, generation, datagram): a beat to make when the datagram is
    # empty, else a delayed datagram to deliver.
    heap: list[tuple[float, int, int, int, bytes]] = [
        (start + rng.uniform(0.0, interval), next(order), i, 0, b"") for i in range(n)
    ]
    heapq.heapify(heap)
    beats = sent = dropped = errors = late = hints = 0
    max_lag = 0.0
    index = {name: i for i, name in enumerate(names)}
    several = len(addresses) > 1
    fanout = Fanout()
    # A host's hints from one server are the same bytes every time: verified once.
    verified: dict[bytes, OwnerHint] = {}
    conn.send(("ready", n))
    while True:
        now = time.monotonic()
        for _ in range(BURST):  # owner hints (several servers), taken between bursts
            try:
                datagram, source = sock.recvfrom(MAX_DATAGRAM + 1, socket.MSG_DONTWAIT)
            except OSError:  # nothing queued (or not bound yet: nothing sent)
                break
            hint = verified.get(datagram)
            if hint is None:
                try:
                    hint = decode_hint(datagram, key)
                except BadHeartbeat:
                    continue
                verified[datagram] = hint
            if hint.host in index:
                fanout.hinted(hint.host, source[:2], hint.ttl, hint.others, now)
                hints += 1
        handled = 0
        while heap and heap[0][0] <= now and handled < BURST:
            handled += 1
            due, _, i, g, datagram = heapq.heappop(heap)
            if not datagram:
                if g != gen[i] or not running[i]:
                    continue
                lag = now - due
                max_lag = max(max_lag, lag)
                late += lag > LATE
                heapq.heappush(heap, (due + interval, next(order), i, g, b""))
                seq[i] += 1
                beats += 1
                if loss and rng.random() < loss:
                    dropped += 1
                    continue
                fanned = several and fanout.fanned(names[i], now)
                datagram = beat[i].datagram(seq[i], time.time(), fanned)
                if jitter:
                    delay = rng.uniform(0.0, jitter)
                    heapq.heappush(heap, (due + delay, next(order), i, -1, datagram))
                    continue
            # To every server, as an agent does (vigil.agent.heartbeat): counted once
            # if any took it, an error for each that did not.
            took = False
            targets = fanout.targets(names[i], addresses, now) if several else addresses
            for address in targets:
                try:
                    sock.sendto(datagram, address)
                    took = True
                except OSError:
                    errors += 1
            sent += took
        pause = 0.0
        if heap and handled < BURST:
            pause = min(max(0.0, heap[0][0] - time.monotonic()), 0.05)
        try:
            ready = conn.poll(pause)
            while ready:
                msg = conn.recv()
                if msg[0] == "stop":
                    running[msg[1]] = False
                    gen[msg[1]] += 1
                elif msg[0] == "start":
                    i = msg[1]
                    running[i], kernel[i] = True, msg[2]
                    gen[i] += 1
                    agent[i], seq[i] = uuid.uuid4().hex[:16], 0
                    fanout.forget(names[i])
                    beat[i] = BeatTemplate(names[i], agent[i], key, kernel[i])
                    heapq.heappush(heap, (time.monotonic(), next(order), i, gen[i], b""))
                elif msg[0] == "stats":
                    conn.send(
                        {
                            "hosts": n,
                            "beats": beats,
                            "sent": sent,
                            "dropped": dropped,
                            "errors": errors,
                            "hints": hints,
                            "late": late,
                            "max_lag_s": max_lag,
                            "cpu_s": time.process_time(),
                            "at": time.monotonic(),
                        }
                    )
                    max_lag = 0.0
                elif msg[0] == "quit":
                    return
                ready = conn.poll(0)
        except (EOFError, OSError):
            return


class SenderProcesses:
    """``processes`` sender processes and the hosts each owns (every n-th host)."""

    def __init__(
        self,
        hosts: Sequence[str],
        kernel_boot_ids: Mapping[str, str],
        *,
        addresses: Sequence[tuple[str, int]],
        key: bytes,
        interval: float,
        loss: float = 0.0,
        jitter: float = 0.0,
        processes: int = 2,
        seed: int = 0,
    ) -> None:
        n = max(1, min(processes, len(hosts)))
        self.slices = [list(hosts[k::n]) for k in range(n)]
        self.where = {h: (k, i) for k, names in enumerate(self.slices) for i, h in enumerate(names)}
        self._kernel = kernel_boot_ids
        self._addresses = list(addresses)
        self._key = key
        self._interval = interval
        self._loss = loss
        self._jitter = jitter
        self._seed = seed
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._locks = [threading.Lock() for _ in range(n)]

    def start(self, timeout: float = 60.0) -> None:
        ctx = get_context("spawn")
        for k, names in enumerate(self.slices):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=sender_main,
                args=(
                    child,
                    names,
                    [self._kernel[h] for h in names],
                    self._key,
                    self._addresses,
                    self._interval,
                    self._loss,
                    self._jitter,
                    self._seed * 1000 + k,
                ),
                name=f"heartbeat-sender-{k}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for k, conn in enumerate(self._conns):
            if not conn.poll(timeout):
                self.close()
                raise TimeoutError(f"heartbeat sender {k} did not start in {timeout:.0f}s")
            conn.recv()

    def _send(self, k: int, msg: tuple[Any, ...]) -> None:
        with self._locks[k]:
            self._conns[k].send(msg)

    def stop_host(self, host: str) -> None:
        k, i = self.where[host]
        self._send(k, ("stop", i))

    def start_host(self, host: str, kernel_boot_id: str) -> None:
        k, i = self.where[host]
        self._send(k, ("start", i, kernel_boot_id))

    def stats(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Each process's counters: beats made, sent, dropped on purpose, send errors,
        late beats, the largest lag behind schedule since the last call, its CPU."""
        out = []
        for k, conn in enumerate(self._conns):
            with self._locks[k]:
                conn.send(("stats",))
                if not conn.poll(timeout):
                    raise TimeoutError(f"heartbeat sender {k} does not answer")
                out.append(conn.recv())
        return out

    def close(self) -> None:
        for k in range(len(self._conns)):
            with contextlib.suppress(OSError, ValueError):
                self._send(k, ("quit",))
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []


class CloudFollower:
    """Stops a sender process's host when the cloud says it cannot heartbeat (its open
    faulty span), and starts it again, a new agent with the host's new kernel boot id,
    once it can: looked at every ``every`` seconds on a thread of its own."""

    def __init__(self, cloud: SimCloud, senders: SenderProcesses, every: float = 0.05) -> None:
        self._cloud = cloud
        self._senders = senders
        self._every = every
        self._stopped: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def follow(self) -> None:
        """One look: hosts that stopped being healthy stop sending; those healthy again
        start as new agents."""
        down = {
            h
            for h, spans in self._cloud.faulty_spans().items()
            if spans[-1][1] is None and h in self._senders.where
        }
        for host in sorted(down - self._stopped):
            self._senders.stop_host(host)
        for host in sorted(self._stopped - down):
            self._senders.start_host(host, self._cloud.boot_id(host))
        self._stopped = down

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.follow()
            except (OSError, ValueError):
                LOG.exception("simulated senders: following the cloud failed")
                return
