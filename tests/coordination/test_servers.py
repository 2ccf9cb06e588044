"""Three vigil-server processes on one PostgreSQL database and a three-member etcd
cluster (the owner killed: on one Redis too), over the simulated cloud (reached over
HTTP, so that it outlives the servers and counts every call): the owner of the segment
is killed, or stopped past its lease, in the middle of a recovery; another server
finishes it, and nothing is done twice.

Each server talks to its own etcd member, as on three controllers. Every agent sends
its heartbeats to the three servers (no self-fencing here), so
that the new owner's detection is warm when it takes over.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from services import require
from support import wait_until
from support.processes import ServerProcess, server_config, three_hosts_six_victims
from support.proxy import TcpProxy

from vigil.cli.main import main
from vigil.sim.agents import SimAgents
from vigil.sim.cloud import SimCloud
from vigil.sim.rpc import serve_cloud
from vigil.store.sql import upgrade

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ETCD = pytest.param("etcd", marks=pytest.mark.etcd)
REDIS = pytest.param("redis", marks=pytest.mark.redis)
OWN_ETCD = pytest.param("etcd-own", marks=pytest.mark.etcd)  # a cluster the test may break

TOKEN, KEY = "ha-test-token", "ha-test-key"
LEASE_TTL = 3  # coordination.lease_ttl: a dead owner's segment is free 3 s after it


@dataclass
class Server:
    member: str
    process: ServerProcess
    api: httpx.Client
    heartbeat_port: int


@dataclass
class World:
    cloud: SimCloud
    servers: list[Server]
    victims: list[str]
    database: TcpProxy  # between the servers and PostgreSQL
    agents: list[SimAgents] = field(default_factory=list)

    def owner(self, via: Server | None = None, segment: str = "s") -> tuple[str, int]:
        """The segment's owner and epoch, by the store, asked through a live server."""
        api = (via or self.live()[0]).api
        owners = api.get("/v1/servers").json()["owners"]
        row = next(o for o in owners if o["segment"] == segment)
        return row["owner"], row["epoch"]

    def server(self, member: str) -> Server:
        return next(s for s in self.servers if s.member == member)

    def live(self) -> list[Server]:
        return [s for s in self.servers if s.process.proc and s.process.proc.poll() is None]

    def steps(self, api: httpx.Client) -> list[dict[str, Any]]:
        recs = api.get("/v1/recoveries", params={"host": "compute-1"}).json()
        return recs[0]["steps"] if recs else []


@dataclass(frozen=True)
class Layout:
    """Each host's segment (compute-1 holds the six victims; hosts beyond compute-3 are
    added, empty), and how many servers run from the start (the others join later)."""

    hosts: dict[str, str]
    started: int = 3

    @property
    def segments(self) -> list[str]:
        return sorted(set(self.hosts.values()))


ONE_SEGMENT = Layout({"compute-1": "s", "compute-2": "s", "compute-3": "s"})


@pytest.fixture
def layout() -> Layout:
    return ONE_SEGMENT


def server_conf(
    tmp_path: Path, i: int, db_url: str, backend_url: str, cloud_url: str, namespace: str
) -> Server:
    conf = tmp_path / f"vigil-{i}.conf"
    coordination = {
        "backend_url": backend_url,
        "namespace": f"{namespace}vigil",
        "member_id": f"vigil-{i}",
        "lease_ttl": LEASE_TTL,
        "renew_interval": 0.5,
        "call_timeout": 1,
        "margin": 0.5,
    }
    api, hb_port = server_config(
        conf, token=TOKEN, key=KEY, cloud_url=cloud_url, database=db_url, coordination=coordination
    )
    return Server(f"vigil-{i}", ServerProcess(conf, tmp_path / f"vigil-{i}.log"), api, hb_port)


@pytest.fixture
def backend_urls(request: pytest.FixtureRequest) -> list[str]:
    """Each server's coordination URL: its own member of the etcd cluster, as on three
    controllers (the default, or "etcd-own": a cluster of the test's own, which it may
    break); or one Redis server ("redis")."""
    kind = getattr(request, "param", "etcd")
    if kind == "redis":
        return [request.getfixturevalue("redis_server").url] * 3
    cluster = request.getfixturevalue("own_etcd_cluster" if kind == "etcd-own" else "etcd_cluster")
    return [u.replace("http://", "etcd3+http://") for u in cluster.client_urls]


@pytest.fixture
def world(
    tmp_path: Path,
    backend_urls: list[str],
    postgres_url: str,
    fresh_etcd_prefix: str,
    layout: Layout,
) -> Iterator[World]:
    from sqlalchemy import create_engine, make_url, text

    engine = create_engine(postgres_url)  # an empty schema for this test
    with engine.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    upgrade(postgres_url)
    cloud, victims = three_hosts_six_victims(seed=11)
    for host in sorted(set(layout.hosts) - set(cloud.hosts())):
        cloud.add_host(host, capacity=20)
    cloud_server, cloud_url = serve_cloud(cloud)
    url = make_url(postgres_url)
    database = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    via_proxy = url.set(port=database.port).render_as_string(hide_password=False)
    servers = [
        server_conf(tmp_path, i, via_proxy, backend_urls[i], cloud_url, fresh_etcd_prefix)
        for i in range(3)
    ]
    w = World(cloud, servers, victims, database)
    try:
        for s in servers[: layout.started]:
            s.process.start(s.api)
        api = servers[0].api
        for segment in layout.segments:
            api.post(
                "/v1/segments", json={"name": segment, "max_parallel_evacuations": 2}
            ).raise_for_status()
        for host, segment in layout.hosts.items():
            api.post(
                "/v1/hosts",
                json={"name": host, "segment": segment, "fencing": [{"driver": "sim"}]},
            ).raise_for_status()
        agents = SimAgents(  # every host heard by every server
            cloud,
            servers=[("127.0.0.1", s.heartbeat_port) for s in servers],
            key=KEY.encode(),
            interval=0.25,
        )
        agents.start()
        w.agents.append(agents)
        wait_until(
            lambda: all(w.owner(segment=g)[1] >= 1 for g in layout.segments),
            "a server to own each segment",
            15,
            ignoring=(Exception,),
        )
        wait_until(
            lambda: all(h["state"] == "up" for h in api.get("/v1/hosts").json()),
            "hosts up",
            15,
            every=0.05,
        )
        yield w
    finally:
        for s in servers:  # before the agents: no server sees every host fall silent
            s.process.stop()
            s.api.close()
            if s.process.log.exists():  # shown by pytest when the test failed
                tail = s.process.log.read_text().splitlines()[-60:]
                print(f"--- {s.member} (last {len(tail)} lines) ---", *tail, sep="\n")
        for agents in w.agents:
            agents.stop()
        cloud_server.close()
        database.close()


def _evacuating(w: World, owner: Server) -> bool:
    """The owner's recovery of compute-1 has an evacuation under way."""
    evacs = [s for s in w.steps(owner.api) if s["kind"] == "evacuate"]
    return any(s["status"] == "running" for s in evacs)


def _finished(w: World, via: list[Server] | None = None) -> dict[str, Any] | None:
    for s in via or w.live():
        try:
            recs = s.api.get("/v1/recoveries", params={"host": "compute-1"}).json()
        except httpx.TransportError:
            continue
        done = [r for r in recs if r["status"] in ("succeeded", "failed")]
        return done[0] if done else None
    return None


def _exactly_once(w: World) -> None:
    cloud = w.cloud
    for iid in w.victims:
        inst = cloud.instance(iid)
        assert inst.status == "ACTIVE" and inst.host != "compute-1", inst
        # asked once: not even a second request that Nova's own rules would have refused
        assert cloud.attempts("evacuate", iid) == 1, f"{inst.name} evacuated more than once"
    assert cloud.double_running() == []
    assert not cloud.is_powered("compute-1")
    assert cloud.attempts("bmc_power_off", "compute-1") == 1, "fenced twice"
    assert cloud.calls("set_forced_down", "compute-1") == 1


@pytest.mark.parametrize("backend_urls", [ETCD, REDIS], indirect=True)
def test_the_owner_killed_mid_evacuation_another_server_finishes_exactly_once(
    world: World,
) -> None:
    first, epoch = world.owner()
    owner = world.server(first)
    world.cloud.isolate("compute-1")  # running but cut off: it really has to be fenced

    def evacuating() -> bool:
        evacs = [s for s in world.steps(owner.api) if s["kind"] == "evacuate"]
        return sum(s["status"] == "succeeded" for s in evacs) >= 2 and any(
            s["status"] == "running" for s in evacs
        )

    wait_until(evacuating, "the owner to be evacuating", 30, every=0.02)
    owner.process.kill9()
    killed = time.monotonic()
    survivor = world.live()[0]
    new, new_epoch = wait_until(
        lambda: (o := world.owner(survivor))[0] != first and o, "a new owner", 15, every=0.05
    )
    took = time.monotonic() - killed
    assert new_epoch == epoch + 1
    assert took <= LEASE_TTL + 2.5, f"takeover took {took:.1f}s"

    rec = wait_until(lambda: _finished(world), "the recovery to finish", 60, every=0.1)
    assert rec["status"] == "succeeded", rec
    _exactly_once(world)
    log = world.server(new).process.log.read_text()
    assert "segment s: acting on it from now (epoch" in log
    assert "left running by its previous owner to re-check" in log

    # What the operator sees, asking any survivor: the backend, the two live servers,
    # and the new owner under its epoch.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--url", str(survivor.api.base_url), "--token", TOKEN, "status"])
    assert code == 0
    lines = out.getvalue().splitlines()
    backend = survivor.process.conf.read_text().split("backend_url = ")[1].split()[0]
    assert lines[1].startswith(f"coordination: {backend}") and lines[1].endswith(", reachable")
    live = sorted(s.member for s in world.live())
    assert lines[2].startswith(f"servers: {', '.join(live)}; {survivor.member} answered")
    assert next(line for line in lines if line.startswith("s ")).split()[:3] == [
        "s",
        new,
        str(new_epoch),
    ]


@pytest.mark.parametrize("backend_urls", [ETCD], indirect=True)
def test_an_owner_stopped_past_its_lease_does_nothing_when_it_continues(world: World) -> None:
    first, epoch = world.owner()
    owner = world.server(first)
    world.cloud.isolate("compute-1")

    wait_until(lambda: _evacuating(world, owner), "the owner to be evacuating", 30, every=0.02)
    owner.process.pause()  # SIGSTOP: it believes it still owns the segment
    others = [s for s in world.servers if s.member != first]
    new, new_epoch = wait_until(
        lambda: (o := world.owner(others[0]))[0] != first and o, "a new owner", 15, every=0.05
    )
    assert new_epoch == epoch + 1
    rec = wait_until(lambda: _finished(world, others), "the recovery to finish", 60, every=0.1)
    assert rec["status"] == "succeeded", rec
    mutating = ("evacuate", "bmc_power_off", "set_forced_down", "disable", "enable", "start")
    before = {m: world.cloud.attempts(m) for m in mutating}
    owner.process.resume()  # SIGCONT: its epoch is stale
    time.sleep(2 * LEASE_TTL)
    # It asked the cloud for nothing more, not even what the cloud would have refused.
    assert {m: world.cloud.attempts(m) for m in mutating} == before
    _exactly_once(world)
    # The store: every step finished under the new epoch or before the stop; none after
    # it under the old one (the store refused them).
    steps = world.steps(world.server(new).api)
    assert all(s["status"] in ("succeeded", "skipped") for s in steps), steps
    log = owner.process.log.read_text()
    assert "stops acting on it" in log or "no longer acting on it" in log
    assert world.owner(others[0]) == (new, new_epoch)  # and it did not take it back


@pytest.mark.parametrize("backend_urls", [ETCD], indirect=True)
def test_the_database_briefly_unreachable_mid_recovery(world: World) -> None:
    """Every server loses PostgreSQL for 3 s in the middle of an evacuation (connections
    dropped, new ones refused): nobody crashes, nothing is done twice, and the recovery
    ends once the database is back. The owner keeps its segment (etcd still renews it)."""
    first, epoch = world.owner()
    owner = world.server(first)
    world.cloud.isolate("compute-1")

    wait_until(lambda: _evacuating(world, owner), "the owner to be evacuating", 30, every=0.02)
    world.database.cut()
    time.sleep(1)
    answer = owner.api.get("/v1/hosts")
    assert answer.status_code == 503, answer.text  # says so, does not crash
    assert "database unavailable" in answer.json()["detail"]
    time.sleep(2)
    world.database.mend()
    rec = wait_until(lambda: _finished(world), "the recovery to finish", 60, every=0.1)
    assert rec["status"] == "succeeded", rec
    _exactly_once(world)
    assert world.owner() == (first, epoch)
    assert all(s.process.proc and s.process.proc.poll() is None for s in world.servers)


class Blackhole:
    """nftables on this machine's loopback: packets to one TCP port dropped (no reset, no
    answer, as behind a broken switch), so that one server loses its etcd member while it
    still reaches the agents, the cloud and the database."""

    def __init__(self) -> None:
        self.table = f"vigiltest{os.getpid()}"

    def cut(self, port: int) -> None:
        _nft("add", "table", "inet", self.table)
        _nft("add chain inet", self.table, "out", "{ type filter hook output priority 0; }")
        _nft("add rule inet", self.table, "out", f"tcp dport {port} drop")

    def mend(self) -> None:
        subprocess.run(
            ["nft", "delete", "table", "inet", self.table], capture_output=True, timeout=10
        )


def _nft(*words: str) -> None:
    subprocess.run(["nft", " ".join(words)], check=True, capture_output=True, timeout=10)


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    require("nftables (root)", lambda: _nft("list", "tables"))
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.mend()


@pytest.mark.parametrize("backend_urls", [ETCD], indirect=True)
def test_an_owner_cut_off_from_etcd_only_stops_acting_and_another_finishes(
    world: World, blackhole: Blackhole, backend_urls: list[str]
) -> None:
    """The owner's packets to its etcd member are dropped in the middle of an evacuation;
    it still reaches the cloud, the agents and the database, and it keeps running. It
    stops acting by itself before its lease can expire, another server takes the segment
    under epoch + 1 and finishes, nothing is done twice; mended, it asks nothing more of
    the cloud and does not take the segment back."""
    first, epoch = world.owner()
    owner = world.server(first)
    world.cloud.isolate("compute-1")

    wait_until(lambda: _evacuating(world, owner), "the owner to be evacuating", 30, every=0.02)
    index = [s.member for s in world.servers].index(first)
    blackhole.cut(int(backend_urls[index].rsplit(":", 1)[1]))
    cut = time.monotonic()
    others = [s for s in world.servers if s.member != first]
    new, new_epoch = wait_until(
        lambda: (o := world.owner(others[0]))[0] != first and o, "a new owner", 15, every=0.05
    )
    assert new_epoch == epoch + 1
    took = time.monotonic() - cut
    rec = wait_until(lambda: _finished(world, others), "the recovery to finish", 60, every=0.1)
    assert rec["status"] == "succeeded", rec
    _exactly_once(world)
    # Cut off, it answers its API and says it acts on nothing.
    mine = owner.api.get("/v1/servers").json()
    assert mine["acting_on"] == {} and not mine["backend_healthy"], mine
    mutating = ("evacuate", "bmc_power_off", "set_forced_down", "disable", "enable", "start")
    before = {m: world.cloud.attempts(m) for m in mutating}
    blackhole.mend()
    time.sleep(2 * LEASE_TTL)
    assert {m: world.cloud.attempts(m) for m in mutating} == before
    assert world.owner(others[0]) == (new, new_epoch)
    log = owner.process.log.read_text()
    assert "unreachable" in log and ("stops acting on it" in log or "no longer acting" in log)
    assert took <= LEASE_TTL + 2.5 + 1, f"takeover took {took:.1f}s"


MUTATING = ("evacuate", "bmc_power_off", "set_forced_down", "disable", "enable", "start")


def _backend_healthy(server: Server) -> bool:
    return bool(server.api.get("/v1/servers").json()["backend_healthy"])


@pytest.mark.parametrize("backend_urls", [OWN_ETCD], indirect=True)
def test_one_etcd_member_lost_mid_recovery_the_owner_finishes_it(
    world: World, own_etcd_cluster: Any
) -> None:
    """etcd's leader dies in the middle of an evacuation (or, when the owner talks to the
    leader, another member: that case is the owner cut off from etcd, tested above). The
    two others keep the majority and elect a leader; the owner keeps its segment (etcd
    extends every lease when a new leader is elected) and finishes, exactly once. The
    server whose member died says so and acts on nothing; its member back, it is too."""
    etcd = own_etcd_cluster
    first, _ = world.owner()
    owner = world.server(first)
    mine = [s.member for s in world.servers].index(first)
    world.cloud.isolate("compute-1")

    wait_until(lambda: _evacuating(world, owner), "the owner to be evacuating", 30, every=0.02)
    leader = etcd.leader()
    lost = leader if leader is not None and leader != mine else (mine + 1) % 3
    etcd.kill(lost)
    orphan = world.servers[lost]
    wait_until(lambda: not _backend_healthy(orphan), "its server to notice", 10, every=0.1)
    rec = wait_until(lambda: _finished(world), "the recovery to finish", 60, every=0.1)
    assert rec["status"] == "succeeded", rec
    _exactly_once(world)
    assert world.owner(owner)[0] == first
    assert orphan.api.get("/v1/servers").json()["acting_on"] == {}
    etcd.restart(lost)
    wait_until(lambda: _backend_healthy(orphan), "its server to be back", 15, every=0.1)
    everyone = {s.member for s in world.servers}
    wait_until(
        lambda: set(owner.api.get("/v1/servers").json()["members"]) == everyone,
        "every server a member again",
        15,
        every=0.1,
    )
    assert world.owner(owner)[0] == first


@pytest.mark.parametrize("backend_urls", [OWN_ETCD], indirect=True)
def test_etcd_majority_lost_no_server_acts_and_recovery_resumes_when_it_returns(
    world: World, own_etcd_cluster: Any
) -> None:
    """Two of etcd's three members die: no server can renew its lease, and within
    lease_ttl - margin none acts. A host that fails then is not fenced, however long it
    stays failed -- no server may know that another does not act on it. When the majority
    returns, the segment's owner recovers the host: fenced once, evacuated once."""
    etcd = own_etcd_cluster
    first, _ = world.owner()
    mine = [s.member for s in world.servers].index(first)
    dead = [mine, (mine + 1) % 3]  # the owner's member, and one more
    for k in dead:
        etcd.kill(k)

    def nobody_acts() -> bool:
        return all(s.api.get("/v1/servers").json()["acting_on"] == {} for s in world.servers)

    wait_until(nobody_acts, "every server to stop acting", LEASE_TTL + 2, every=0.1)
    before = {m: world.cloud.attempts(m) for m in MUTATING}
    world.cloud.isolate("compute-1")
    time.sleep(4 * 1.75)  # four times detection.failed_after: it would have been fenced
    assert {m: world.cloud.attempts(m) for m in MUTATING} == before
    assert world.cloud.is_powered("compute-1")
    assert all(not _backend_healthy(s) for s in world.servers)
    for k in dead:
        etcd.restart(k, wait=False)
    etcd.wait_healthy()
    rec = wait_until(lambda: _finished(world), "the recovery to finish", 60, every=0.1)
    assert rec["status"] == "succeeded", rec
    _exactly_once(world)
    for s in world.servers:
        log = s.process.log.read_text()
        assert "coordination backend" in log and "unreachable" in log, s.member


THREE_SEGMENTS = Layout(  # two hosts a segment where one fails: no storm guard
    {
        "compute-1": "s",
        "compute-2": "s",
        "compute-3": "t",
        "compute-4": "t",
        "compute-5": "u",
        "compute-6": "u",
    },
    started=2,
)


def _owners(w: World) -> dict[str, tuple[str, int]]:
    return {g: w.owner(segment=g) for g in THREE_SEGMENTS.segments}


def _recovered(w: World, host: str) -> dict[str, Any] | None:
    for s in w.live():
        try:
            recs = s.api.get("/v1/recoveries", params={"host": host}).json()
        except httpx.TransportError:
            continue
        done = [r for r in recs if r["status"] in ("succeeded", "failed")]
        return done[0] if done else None
    return None


@pytest.mark.parametrize("backend_urls", [ETCD], indirect=True)
@pytest.mark.parametrize("layout", [THREE_SEGMENTS])
def test_a_server_joining_and_one_leaving_while_hosts_fail(world: World) -> None:
    """Two servers share three segments. compute-1 (segment s) fails; while its owner
    evacuates, a third server joins (the segments are balanced again: one moves to it,
    handed over only once nothing of it is in flight) and compute-3 (segment t) fails;
    then the owner of s leaves (SIGTERM: it lets its locks go). Each host is recovered,
    once; every segment ends with one live owner, s under a higher epoch."""
    first, epoch = world.owner(segment="s")
    world.cloud.isolate("compute-1")
    wait_until(
        lambda: _evacuating(world, world.server(first)), "s's owner to evacuate", 30, every=0.02
    )
    joining = world.servers[2]
    joining.process.start(joining.api)
    world.cloud.isolate("compute-3")
    wait_until(
        lambda: joining.member in {o for o, _ in _owners(world).values()},
        "the new server to own a segment",
        20,
        every=0.1,
    )
    leaving = world.server(world.owner(segment="s")[0])
    leaving.process.stop()
    stayed = [s for s in world.servers if s is not leaving]
    rec1 = wait_until(lambda: _recovered(world, "compute-1"), "compute-1 recovered", 60)
    rec3 = wait_until(lambda: _recovered(world, "compute-3"), "compute-3 recovered", 60)
    assert rec1["status"] == rec3["status"] == "succeeded", (rec1, rec3)
    _exactly_once(world)
    assert world.cloud.attempts("bmc_power_off", "compute-3") == 1
    assert not world.cloud.is_powered("compute-3")
    for other in ("compute-2", "compute-4", "compute-5", "compute-6"):
        assert world.cloud.attempts("bmc_power_off", other) == 0
    members = {s.member for s in stayed}

    def shared_by_those_that_stayed() -> dict[str, tuple[str, int]] | None:
        owners = _owners(world)
        return owners if {m for m, _ in owners.values()} == members else None

    owners = wait_until(shared_by_those_that_stayed, "the segments shared by the two", 20)
    assert owners["s"][1] > epoch
    assert all(s.process.proc and s.process.proc.poll() is None for s in stayed)
