"""Application checks in the SQL store (``AppStore``), as its users see them, on SQLite,
PostgreSQL and MariaDB: declarations synced per host, check states merged from the
agents' reports, episodes written under the owner's token, each write's events in its
transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import pytest

from vigil.events import make_event
from vigil.model import (
    AppEpisode,
    AppEpisodeStatus,
    AppInstance,
    CheckState,
    Event,
    Health,
    Host,
    OwnerToken,
    Segment,
    StepStatus,
)
from vigil.store.base import NotFoundError, StaleEpoch, acting_as
from vigil.store.sql import Base, SqlStore, upgrade

T0 = 1_700_000_000.25  # a realistic epoch, with a fraction that single precision would lose
HTTP = {"vigil:check:http": "http://127.0.0.1:8080/health", "vigil:app_recovery": "restart-app"}
TCP = {"vigil:check:tcp": "127.0.0.1:5432"}

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("mariadb", marks=pytest.mark.mariadb, id="mariadb"),
]


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('apps') / 'vigil.db'}"
    else:
        url = str(request.getfixturevalue(f"{request.param}_url"))
    upgrade(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[SqlStore]:
    store = SqlStore(db_url)
    with store.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    store.create_segment(Segment("seg"))
    for name in ("n1", "n2"):
        store.create_host(Host(name, "seg"))
    try:
        yield store
    finally:
        store.close()


def _event(instance_id: str, host: str = "n1") -> Event:
    return make_event(
        "vigil.app.check.failing", at=T0, host=host, instance_id=instance_id, check="http"
    )


class Changes:
    """An ``events(old, new)`` callback that records its calls and gives one event each."""

    def __init__(self) -> None:
        self.calls: list[tuple[AppInstance | None, AppInstance | None]] = []
        self.events: list[Event] = []

    def __call__(self, old: AppInstance | None, new: AppInstance | None) -> Sequence[Event]:
        self.calls.append((old, new))
        some = new if new is not None else old
        assert some is not None
        self.events.append(_event(some.instance_id, some.host))
        return self.events[-1:]

    def ids(self) -> list[tuple[str | None, str | None]]:
        return [
            (None if o is None else o.instance_id, None if n is None else n.instance_id)
            for o, n in self.calls
        ]


def _episode(status: AppEpisodeStatus = AppEpisodeStatus.RECOVERING) -> AppEpisode:
    return AppEpisode(
        status,
        "keep-running",
        opened_at=T0 + 1,
        reason="liveness check http failing",
        attempts=1,
        last_action_at=T0 + 1.5,
        action="restart-app",
        action_status=StepStatus.RUNNING,
        action_id="cmd-1",
        action_detail="sent",
    )


# --- declarations ------------------------------------------------------------------------


def test_sync_adds_updates_and_removes_the_hosts_rows_as_declared(store: SqlStore) -> None:
    base = store.last_event_seq()
    changes = Changes()
    added = store.sync_app_declarations(
        "n1",
        {"vm-2": (TCP, "notify", ""), "vm-1": (HTTP, "keep-running", "")},
        at=T0,
        events=changes,
    )
    assert added == [
        AppInstance("vm-1", "n1", HTTP, "keep-running", started_at=T0, updated_at=T0),
        AppInstance("vm-2", "n1", TCP, "notify", started_at=T0, updated_at=T0),
    ]
    assert changes.ids() == [(None, "vm-1"), (None, "vm-2")]
    assert [new for _, new in changes.calls] == added
    assert store.get_app_instance("vm-1") == added[0]

    same = store.sync_app_declarations(
        "n1", {"vm-1": (HTTP, "keep-running", ""), "vm-2": (TCP, "notify", "")}, at=T0 + 1
    )
    assert same == added  # nothing changed: not even updated_at

    changes = Changes()
    bad = {"vigil:check:http": "not a url"}
    now = store.sync_app_declarations(
        "n1",
        {"vm-1": (bad, "keep-running", "vigil:check:http: not a URL")},
        at=T0 + 2,
        events=changes,
    )
    changed = dataclasses.replace(
        added[0], declaration=bad, error="vigil:check:http: not a URL", updated_at=T0 + 2
    )
    assert now == [changed]  # started_at kept: a declaration changed, no restart
    assert changes.calls == [(added[0], changed), (added[1], None)]
    assert store.get_app_instance("vm-2") is None

    assert store.sync_app_declarations("n1", {"vm-1": (bad, "notify", "")}, at=T0 + 3)[0].mode == (
        "notify"
    )
    events = store.list_events(after=base)
    assert len(events) == 4  # written with their changes; the unchanged sync wrote none
    assert {e.instance_id for e in events} == {"vm-1", "vm-2"}


def test_an_instance_with_an_open_episode_stays_and_a_moved_one_restarts(
    store: SqlStore,
) -> None:
    declared = {"vm-1": (HTTP, "keep-running", ""), "vm-2": (TCP, "keep-running", "")}
    store.sync_app_declarations("n1", declared, at=T0)
    store.update_app_checks(
        "vm-1", {"http": CheckState(Health.FAILING, 3, T0 + 1, "503")}, at=T0 + 1
    )
    failing = store.update_app_episode("vm-1", _episode(), at=T0 + 2)

    changes = Changes()
    assert store.sync_app_declarations("n1", {}, at=T0 + 3, events=changes) == [failing]
    assert changes.ids() == [("vm-2", None)]  # the one with an open episode is kept as it is

    changes = Changes()
    moved = store.sync_app_declarations(
        "n2", {"vm-1": (HTTP, "notify", "")}, at=T0 + 4, events=changes
    )
    expected = dataclasses.replace(
        failing, host="n2", mode="notify", started_at=T0 + 4, updated_at=T0 + 4
    )
    assert moved == [expected]  # its checks and its episode go with it
    assert changes.calls == [(failing, expected)]
    assert store.list_app_instances(host="n1") == []
    assert store.sync_app_declarations("n1", {}, at=T0 + 5) == []  # not n1's any more

    resolved = dataclasses.replace(_episode(AppEpisodeStatus.RESOLVED), closed_at=T0 + 6)
    store.update_app_episode("vm-1", resolved, at=T0 + 6)
    assert store.sync_app_declarations("n2", {}, at=T0 + 7) == []  # closed: removed
    assert store.list_app_instances() == []


def test_many_instances_move_at_once(store: SqlStore) -> None:
    many = {f"vm-{i:04d}": (HTTP, "keep-running", "") for i in range(1200)}  # > one IN chunk
    assert len(store.sync_app_declarations("n1", many, at=T0)) == 1200
    assert len(store.sync_app_declarations("n2", many, at=T0 + 1)) == 1200
    assert store.list_app_instances(host="n1") == []
    assert {a.started_at for a in store.list_app_instances(host="n2")} == {T0 + 1}


def test_sync_of_an_unknown_host_raises_not_found_and_writes_nothing(store: SqlStore) -> None:
    store.sync_app_declarations("n1", {"vm-1": (HTTP, "keep-running", "")}, at=T0)
    base = store.last_event_seq()
    changes = Changes()
    with pytest.raises(NotFoundError, match="ghost"):
        store.sync_app_declarations(
            "ghost",
            {"vm-1": (HTTP, "keep-running", ""), "vm-9": (TCP, "notify", "")},
            at=T0,
            events=changes,
        )
    assert store.get_app_instance("vm-1") == AppInstance(
        "vm-1", "n1", HTTP, started_at=T0, updated_at=T0
    )
    assert store.get_app_instance("vm-9") is None
    assert store.last_event_seq() == base


# --- check states ------------------------------------------------------------------------


def test_checks_merge_by_name_and_an_older_report_is_ignored(store: SqlStore) -> None:
    store.sync_app_declarations("n1", {"vm-1": ({**HTTP, **TCP}, "keep-running", "")}, at=T0)
    base = store.last_event_seq()
    olds: list[AppInstance] = []

    def events(old: AppInstance) -> list[Event]:
        olds.append(old)
        return [_event(old.instance_id)]

    http = CheckState(Health.HEALTHY, 0, T0 + 1, "200 OK", since=T0 + 1)
    tcp = CheckState(Health.FAILING, 3, T0 + 1, "connection refused", since=T0 + 0.5)
    first = store.update_app_checks(
        "vm-1", {"http": http, "tcp": tcp}, at=T0 + 1.5, reported_at=T0 + 1, events=events
    )
    assert first.checks == {"http": http, "tcp": tcp}
    assert (first.reported_at, first.updated_at, first.last_beat_at) == (T0 + 1, T0 + 1.5, None)
    assert olds[0].checks == {}

    tcp_up = CheckState(Health.HEALTHY, 0, T0 + 2, "", since=T0 + 2)
    second = store.update_app_checks(
        "vm-1", {"tcp": tcp_up}, at=T0 + 2.5, reported_at=T0 + 2, events=events
    )
    assert second.checks == {"http": http, "tcp": tcp_up}  # http kept, tcp replaced
    assert olds[1] == first

    stale = CheckState(Health.FAILING, 9, T0 + 9, "stale")
    for reported_at in (T0 + 2, T0 + 1.5):  # a retried report, an overtaken one
        again = store.update_app_checks(
            "vm-1", {"tcp": stale}, at=T0 + 3, reported_at=reported_at, events=events
        )
        assert again == second
    assert store.get_app_instance("vm-1") == second
    assert len(olds) == 2 and len(store.list_events(after=base)) == 2


def test_the_applications_heartbeat_is_recorded(store: SqlStore) -> None:
    store.sync_app_declarations("n1", {"vm-1": (HTTP, "keep-running", "")}, at=T0)
    http = CheckState(Health.HEALTHY, 0, T0 + 1, "200 OK", since=T0 + 1)
    store.update_app_checks("vm-1", {"http": http}, at=T0 + 1, reported_at=T0 + 1)

    beat = store.update_app_checks("vm-1", {}, at=T0 + 5, last_beat_at=T0 + 4.75)
    assert (beat.last_beat_at, beat.reported_at, beat.updated_at) == (T0 + 4.75, T0 + 1, T0 + 5)
    assert beat.checks == {"http": http}  # no report: the checks are as they were
    late = store.update_app_checks("vm-1", {}, at=T0 + 6, last_beat_at=T0 + 4.5)
    assert late.last_beat_at == T0 + 4.75  # a call recorded late takes it no further back
    heartbeat = CheckState(Health.HEALTHY, 0, T0 + 7, since=T0 + 7)
    judged = store.update_app_checks("vm-1", {"beat": heartbeat}, at=T0 + 7, last_beat_at=T0 + 7)
    assert judged.checks == {"http": http, "beat": heartbeat} and judged.last_beat_at == T0 + 7


# --- episodes ----------------------------------------------------------------------------


def test_the_episode_is_replaced_and_a_restart_begins_the_grace_period(store: SqlStore) -> None:
    store.sync_app_declarations(
        "n1", {"vm-1": (HTTP, "keep-running", ""), "vm-2": (TCP, "keep-running", "")}, at=T0
    )
    base = store.last_event_seq()
    opened = _episode()
    first = store.update_app_episode(
        "vm-1", opened, at=T0 + 2, started_at=T0 + 2, events=[_event("vm-1")]
    )
    assert first.episode == opened and first.episode.action_status is StepStatus.RUNNING
    assert (first.started_at, first.updated_at) == (T0 + 2, T0 + 2)
    assert store.get_app_instance("vm-1") == first

    escalated = dataclasses.replace(
        opened, status=AppEpisodeStatus.ESCALATED, attempts=4, action_status=None
    )
    second = store.update_app_episode("vm-1", escalated, at=T0 + 3)
    assert second.episode == escalated and second.started_at == T0 + 2  # no restart: kept
    assert [a.instance_id for a in store.list_app_instances(episode_open=True)] == ["vm-1"]

    closed = dataclasses.replace(
        escalated, status=AppEpisodeStatus.CLOSED, closed_at=T0 + 4, closed_by="operator"
    )
    assert store.update_app_episode("vm-1", closed, at=T0 + 4).episode == closed
    assert store.list_app_instances(episode_open=True) == []
    assert store.update_app_episode("vm-1", None, at=T0 + 5).episode is None
    assert [e.instance_id for e in store.list_events(after=base)] == ["vm-1"]


def test_an_episode_written_under_a_stale_token_is_refused(store: SqlStore) -> None:
    store.sync_app_declarations("n1", {"vm-1": (HTTP, "keep-running", "")}, at=T0)
    old = store.take_segment("seg", "vigil-a", at=T0)
    token = OwnerToken("seg", old.owner, old.epoch)
    with acting_as(token):
        opened = store.update_app_episode("vm-1", _episode(), at=T0 + 1)
    store.take_segment("seg", "vigil-b", at=T0 + 2)  # taken over: epoch 2
    base = store.last_event_seq()
    resolved = _episode(AppEpisodeStatus.RESOLVED)
    with acting_as(token), pytest.raises(StaleEpoch, match="vigil-a's epoch 1 is stale"):
        store.update_app_episode(
            "vm-1", resolved, at=T0 + 3, started_at=T0 + 3, events=[_event("vm-1")]
        )
    assert store.get_app_instance("vm-1") == opened
    assert store.last_event_seq() == base
    with acting_as(OwnerToken("seg", "vigil-b", 2)):
        assert store.update_app_episode("vm-1", resolved, at=T0 + 4).episode == resolved


def test_an_instance_whose_host_was_deleted_can_still_be_written(store: SqlStore) -> None:
    store.sync_app_declarations("n1", {"vm-1": (HTTP, "keep-running", "")}, at=T0)
    store.update_app_episode("vm-1", _episode(), at=T0 + 1)
    store.delete_host("n1")
    closed = dataclasses.replace(_episode(AppEpisodeStatus.CLOSED), closed_by="operator")
    assert store.update_app_episode("vm-1", closed, at=T0 + 2).episode == closed
    assert store.update_app_checks("vm-1", {}, at=T0 + 3, last_beat_at=T0 + 3).host == "n1"


# --- reading -----------------------------------------------------------------------------


def test_list_by_instance_id_with_filters(store: SqlStore) -> None:
    store.sync_app_declarations(
        "n1", {"b": (HTTP, "keep-running", ""), "a": (TCP, "notify", "")}, at=T0
    )
    store.sync_app_declarations("n2", {"c": (HTTP, "keep-running", "")}, at=T0)
    store.update_app_episode("b", _episode(), at=T0 + 1)
    store.update_app_episode("c", _episode(AppEpisodeStatus.RESOLVED), at=T0 + 1)

    def ids(
        host: str | None = None, episode_open: bool | None = None, limit: int = 10000
    ) -> list[str]:
        found = store.list_app_instances(host=host, episode_open=episode_open, limit=limit)
        return [a.instance_id for a in found]

    assert ids() == ["a", "b", "c"]
    assert ids(host="n1") == ["a", "b"] and ids(host="n3") == []
    assert ids(episode_open=True) == ["b"]
    assert ids(episode_open=False) == ["a", "c"]  # none, or closed
    assert ids(host="n2", episode_open=False) == ["c"]
    assert ids(limit=2) == ["a", "b"]


def test_an_unknown_instance(store: SqlStore) -> None:
    base = store.last_event_seq()
    assert store.get_app_instance("vm-x") is None
    with pytest.raises(NotFoundError, match="vm-x"):
        store.update_app_checks("vm-x", {}, at=T0, reported_at=T0)
    with pytest.raises(NotFoundError, match="vm-x"):
        store.update_app_episode("vm-x", _episode(), at=T0, events=[_event("vm-x")])
    assert store.last_event_seq() == base
