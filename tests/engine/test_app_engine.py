"""Application failures end to end on the fake clock: the agent's reports and the
application's own heartbeats in, through a real (SQLite) store, the ladder out against
the simulated Nova — restart in the guest, soft then hard reboot, escalation, closing;
notify; readiness; a refused declaration; a failing host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from support.world import World

from vigil.engine.app_engine import AppHealth, BadCredential
from vigil.events import payload_schema
from vigil.model import AppEpisodeStatus, CheckState, HaPolicy, Health, HostState, StepStatus
from vigil.store import NotFoundError
from vigil.wire.app_checks import AppAnswer, AppReport, CheckType, CommandDone

WEB = "type=exec command='pidof httpd' interval=5 timeout=2 threshold=2 grace=0"
LADDER = "restart-command='httpd -p 8080' restarts=1 reboots=2 settle=10 backoff=0"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path, hosts=("c1", "c2")) as w:
        yield w


def build(world: World) -> AppHealth:
    apps = AppHealth(store=world.store, compute=world.compute, clock=world.clock, key=b"k")
    world._stops.append(apps.stop)
    return apps


def instance(world: World, policy: HaPolicy | None = None, **metadata: str) -> str:
    # vigil__check__web= is vigil:check:web, vigil__app_recovery= is vigil:app_recovery
    keys = {k.replace("__", ":"): v for k, v in metadata.items()}
    return world.cloud.add_instance("web-1", "c1", policy=policy, metadata=keys)


def report(
    world: World, apps: AppHealth, iid: str, health: Health, *, done: tuple[CommandDone, ...] = ()
) -> AppAnswer:
    """The agent of c1 reports its one check (``web``) of ``iid`` as ``health`` (a
    tenth of a second after its last report)."""
    world.clock.advance(0.1)
    now = world.clock.wall()
    state = CheckState(health, 2 if health == Health.FAILING else 0, now, "pidof: exit 1", now)
    return apps.exchange(AppReport("c1", now, {iid: {"web": state}}, done))


def cycle(world: World, apps: AppHealth, advance: float = 0.0) -> list[object]:
    world.clock.advance(advance)
    actions = list(apps.run_cycle())
    assert apps.drain()
    return actions


def app_events(world: World, iid: str) -> list[str]:
    return [e for e in world.event_types(iid) if e.startswith("vigil.app.")]


def test_the_plan_is_what_the_instance_declares_without_the_servers_own_checks(
    world: World,
) -> None:
    apps = build(world)
    iid = instance(
        world,
        vigil__check__web=WEB,
        vigil__check__app="type=heartbeat interval=30",
        vigil__app_recovery=LADDER,
    )
    world.cloud.add_instance("plain", "c1")  # declares nothing: not planned
    answer = apps.exchange(AppReport("c1", world.clock.wall(), {}))
    assert list(answer.plan) == [iid]
    assert [(s.name, s.type) for s in answer.plan[iid]] == [("web", CheckType.EXEC)]
    assert answer.commands == ()
    stored = world.store.get_app_instance(iid)
    assert stored is not None and stored.mode == "keep-running" and stored.error == ""


def test_a_failing_check_is_restarted_in_the_guest_and_resolved_when_it_passes(
    world: World,
) -> None:
    apps = build(world)
    iid = instance(world, vigil__check__web=WEB, vigil__app_recovery=LADDER)
    report(world, apps, iid, Health.HEALTHY)
    report(world, apps, iid, Health.FAILING)
    cycle(world, apps)  # the failure opens, and its first rung in the same cycle
    assert cycle(world, apps) == []  # the command waits for the agent
    answer = report(world, apps, iid, Health.FAILING)
    [command] = answer.commands
    assert command.instance_id == iid and command.argv == ("httpd", "-p", "8080")
    again = report(world, apps, iid, Health.FAILING)
    assert again.commands == (command,)  # until its outcome comes (the agent runs it once)
    episode = world.store.get_app_instance(iid).episode  # type: ignore[union-attr]
    assert episode is not None and episode.action_status == StepStatus.RUNNING
    report(world, apps, iid, Health.HEALTHY, done=(CommandDone(command.id, iid, True, "ok"),))
    assert report(world, apps, iid, Health.HEALTHY).commands == ()
    cycle(world, apps, 1.0)
    inst = world.store.get_app_instance(iid)
    assert inst is not None and inst.episode is not None
    assert inst.episode.status == AppEpisodeStatus.RESOLVED
    assert app_events(world, iid) == [
        "vigil.app.check.failing",
        "vigil.app.failure",
        "vigil.app.recovery.start",
        "vigil.app.recovery.end",
        "vigil.app.check.healthy",
        "vigil.app.resolved",
    ]
    assert world.cloud.calls("reboot", iid) == 0
    for event in world.store.list_events(limit=100):
        if event.event_type.startswith("vigil.app."):
            jsonschema.validate(event.payload, payload_schema(event.event_type))


def test_the_ladder_climbs_to_the_reboots_then_escalates_and_acts_no_more(
    world: World,
) -> None:
    apps = build(world)
    iid = instance(world, vigil__check__web=WEB, vigil__app_recovery=LADDER)
    report(world, apps, iid, Health.FAILING)
    cycle(world, apps)
    cycle(world, apps)  # restart-app
    [command] = report(world, apps, iid, Health.FAILING).commands
    report(world, apps, iid, Health.FAILING, done=(CommandDone(command.id, iid, False, "x"),))
    assert cycle(world, apps, 5.0) == []  # the rung gets its settle time (10 s)
    cycle(world, apps, 5.0)  # soft reboot, through Nova
    assert world.cloud.calls("reboot", iid) == 1
    cycle(world, apps, 10.0)  # hard reboot
    assert world.cloud.calls("reboot", iid) == 2
    cycle(world, apps, 10.0)  # the ladder is spent
    inst = world.store.get_app_instance(iid)
    assert inst is not None and inst.episode is not None
    assert inst.episode.status == AppEpisodeStatus.ESCALATED
    for _ in range(5):
        report(world, apps, iid, Health.FAILING)
        assert cycle(world, apps, 60.0) == []
    assert world.cloud.calls("reboot", iid) == 2
    assert app_events(world, iid)[-1] == "vigil.app.escalated"
    starts = [e for e in world.store.list_events(limit=100) if e.event_type.endswith(".start")]
    assert [e.payload["vigil_object.data"]["rung"] for e in starts] == [
        "restart-app",
        "soft-reboot",
        "hard-reboot",
    ]
    # The owner fixed it by hand and closes the failure; it passes: nothing more.
    apps.close(iid, by="owner")
    report(world, apps, iid, Health.HEALTHY)
    assert cycle(world, apps, 1.0) == []
    assert app_events(world, iid)[-3:] == [
        "vigil.app.escalated",
        "vigil.app.closed",
        "vigil.app.check.healthy",
    ]


def test_notify_tells_the_owner_and_touches_nothing(world: World) -> None:
    apps = build(world)
    iid = instance(world, HaPolicy.NOTIFY, vigil__check__web=WEB, vigil__app_recovery=LADDER)
    report(world, apps, iid, Health.FAILING)
    for _ in range(5):
        cycle(world, apps, 30.0)
        assert report(world, apps, iid, Health.FAILING).commands == ()
    assert world.cloud.calls("reboot", iid) == 0
    assert app_events(world, iid) == ["vigil.app.check.failing", "vigil.app.notify"]
    report(world, apps, iid, Health.HEALTHY)
    cycle(world, apps)
    assert app_events(world, iid)[-1] == "vigil.app.resolved"


def test_a_readiness_check_marks_not_ready_and_recovers_nothing(world: World) -> None:
    apps = build(world)
    iid = instance(world, vigil__check__web=WEB + " readiness=true")
    report(world, apps, iid, Health.FAILING)
    assert cycle(world, apps, 30.0) == []
    report(world, apps, iid, Health.HEALTHY)
    assert app_events(world, iid) == ["vigil.app.not_ready", "vigil.app.ready"]


def test_a_refused_declaration_names_its_field_and_plans_nothing(world: World) -> None:
    apps = build(world)
    iid = instance(world, vigil__check__web="type=http path=/healthz")
    assert apps.exchange(AppReport("c1", world.clock.wall(), {})).plan == {}
    stored = world.store.get_app_instance(iid)
    assert stored is not None and stored.error.startswith("vigil:check:web.port:")
    [event] = [e for e in world.store.list_events(limit=100) if e.instance_id == iid]
    assert event.event_type == "vigil.app.declaration.refused"
    assert "vigil:check:web.port" in event.payload["vigil_object.data"]["reason"]


def test_nothing_is_done_for_an_instance_whose_host_is_failing(world: World) -> None:
    apps = build(world)
    iid = instance(world, vigil__check__web=WEB, vigil__app_recovery=LADDER)
    report(world, apps, iid, Health.FAILING)
    now = world.clock.wall()
    world.store.set_host_state("c1", HostState.UP, reason="beats", at=now)
    world.store.set_host_state("c1", HostState.SUSPECT, reason="no heartbeat for 1s", at=now)
    assert cycle(world, apps, 30.0) == []
    assert app_events(world, iid) == ["vigil.app.check.failing"]


def test_application_heartbeats_keep_it_healthy_and_their_absence_fails_it(
    world: World,
) -> None:
    apps = build(world)
    iid = instance(world, vigil__check__app="type=heartbeat interval=10 threshold=3 grace=30")
    apps.exchange(AppReport("c1", world.clock.wall(), {}))
    credential = apps.credential(iid)
    with pytest.raises(BadCredential):
        apps.beat(iid, "0" * 64)
    with pytest.raises(BadCredential):
        apps.beat(iid, None)
    with pytest.raises(NotFoundError):
        apps.beat("not-declared", apps.credential("not-declared"))
    cycle(world, apps, 20.0)  # within its grace: no verdict
    for _ in range(6):
        apps.beat(iid, credential)
        cycle(world, apps, 9.0)
    checks = world.store.get_app_instance(iid).checks  # type: ignore[union-attr]
    assert checks["app"].health == Health.HEALTHY
    cycle(world, apps, 16.0)  # 25 s since the last beat: two intervals missed, not yet
    assert app_events(world, iid) == []  # (unknown to healthy is no news)
    cycle(world, apps, 6.0)  # the third: failing; its failure opens, its first rung runs
    assert app_events(world, iid) == [
        "vigil.app.check.failing",
        "vigil.app.failure",
        "vigil.app.recovery.start",  # no restart command declared: a soft reboot
        "vigil.app.recovery.end",
    ]
    assert world.cloud.calls("reboot", iid) == 1


def test_recover_me_now_reboots_at_once_without_waiting_for_a_check(world: World) -> None:
    apps = build(world)
    iid = instance(
        world,
        vigil__check__app="type=heartbeat interval=10 grace=0",
        vigil__app_recovery="reboots=1 settle=30",
    )
    apps.exchange(AppReport("c1", world.clock.wall(), {}))
    apps.beat(iid, apps.credential(iid), reset=True, detail="corrupt cache")
    cycle(world, apps)  # opens; no restart command declared: its first rung is a reboot
    assert world.cloud.calls("reboot", iid) == 1
    apps.beat(iid, apps.credential(iid))
    cycle(world, apps, 1.0)
    assert app_events(world, iid) == [
        "vigil.app.reset_requested",
        "vigil.app.failure",
        "vigil.app.recovery.start",
        "vigil.app.recovery.end",
        "vigil.app.resolved",
    ]


def test_a_masakari_guest_agent_error_is_a_failing_check_until_an_action_helps(
    world: World,
) -> None:
    apps = build(world)
    iid = instance(world, vigil__check__web=WEB, vigil__app_recovery="reboots=1 settle=10")
    report(world, apps, iid, Health.HEALTHY)
    taken, why = apps.guest_agent_error(iid, host="c1", detail="guest-ping timed out")
    assert taken and "keep-running" in why
    cycle(world, apps)  # the failure opens and its first rung, a reboot, runs
    assert world.cloud.calls("reboot", iid) == 1
    cycle(world, apps, 11.0)  # the reboot done, the web check healthy: resolved
    assert app_events(world, iid) == [
        "vigil.app.check.failing",
        "vigil.app.failure",
        "vigil.app.recovery.start",
        "vigil.app.recovery.end",
        "vigil.app.resolved",
    ]
    assert apps.guest_agent_error("unknown", host="c1", detail="")[0] is False
