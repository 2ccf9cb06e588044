"""The Masakari side tables (migration 0003) on every database vigil supports."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Iterator

import pytest

from vigil.store.masakari import HostExtra, MasakariRecords, Notification, SegmentExtra
from vigil.store.sql import upgrade

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("mariadb", marks=pytest.mark.mariadb, id="mariadb"),
]


@pytest.fixture(params=BACKENDS)
def records(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MasakariRecords]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('masakari') / 'vigil.db'}"
    else:
        url = str(request.getfixturevalue(f"{request.param}_url"))
    upgrade(url)
    records = MasakariRecords(url)
    yield records
    records.close()


def test_segment_and_host_extras_keep_their_uuid(records: MasakariRecords) -> None:
    name = f"seg-{secrets.token_hex(4)}"
    first = records.put_segment(SegmentExtra(str(uuid.uuid4()), name, "auto", "COMPUTE", True, 1.0))
    again = records.put_segment(
        SegmentExtra(str(uuid.uuid4()), name, "rh_priority", "COMPUTE", False, 9.0, 10.0)
    )
    assert (again.uuid, again.created_at) == (first.uuid, 1.0)
    assert records.segments()[name].recovery_method == "rh_priority"
    assert records.segments()[name].enabled is False
    records.delete_segment(name)
    assert name not in records.segments()

    host = f"compute-{secrets.token_hex(4)}"
    made = records.put_host(HostExtra(str(uuid.uuid4()), host, "COMPUTE", "SSH", 2.0))
    records.put_host(HostExtra(str(uuid.uuid4()), host, "COMPUTE", "IPMI", 3.0, 4.0))
    assert records.hosts()[host] == HostExtra(made.uuid, host, "COMPUTE", "IPMI", 2.0, 4.0)


def test_concurrent_adoption_of_one_record(records: MasakariRecords) -> None:
    name = f"seg-{secrets.token_hex(4)}"
    results: list[SegmentExtra] = []

    def adopt() -> None:
        results.append(records.put_segment(SegmentExtra(str(uuid.uuid4()), name, created_at=5.0)))

    threads = [threading.Thread(target=adopt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.uuid for r in results}) == 1


def test_notifications_round_trip(records: MasakariRecords) -> None:
    host = f"compute-{secrets.token_hex(4)}"
    n = records.add_notification(
        Notification(
            uuid=str(uuid.uuid4()),
            type="COMPUTE_HOST",
            hostname=host,
            source_host_uuid=str(uuid.uuid4()),
            segment_uuid=str(uuid.uuid4()),
            generated_time=1.5,
            payload={"event": "STOPPED", "host_status": "NORMAL"},
            status="new",
            created_at=2.0,
        )
    )
    assert n.id > 0
    records.link_recovery(n.uuid, 42, at=3.0)
    (stored,) = records.notifications(hostname=host)
    assert stored.recovery_id == 42 and stored.updated_at == 3.0
    assert stored.payload == {"event": "STOPPED", "host_status": "NORMAL"}
    assert records.get_notification(n.uuid) == stored
    assert records.get_notification(str(uuid.uuid4())) is None
