"""``vigil import masakari`` on plain data: what is created, what is reported, a dry run
that creates nothing, a segment vigil refuses (its hosts skipped, with the reason)."""

from __future__ import annotations

from typing import Any

from vigil.cli.client import ApiError, Json
from vigil.cli.import_masakari import (
    MasakariApi,
    SourceHost,
    SourceSegment,
    import_segments,
    summary,
)


class FakeTarget(MasakariApi):
    def __init__(self, refuse: str = "") -> None:
        self.segs: dict[str, Json] = {}
        self.host_rows: dict[str, dict[str, Json]] = {}
        self.refuse = refuse

    def segments(self) -> dict[str, Json]:
        return dict(self.segs)

    def hosts(self, segment_uuid: str) -> dict[str, Json]:
        return dict(self.host_rows.get(segment_uuid, {}))

    def create_segment(self, seg: SourceSegment) -> Json:
        if seg.name == self.refuse:
            raise ApiError(409, f"segment {seg.name} refused")
        row = {"name": seg.name, "uuid": f"u-{seg.name}"}
        self.segs[seg.name] = row
        return row

    def create_host(self, segment_uuid: str, host: SourceHost) -> Json:
        row = {"name": host.name}
        self.host_rows.setdefault(segment_uuid, {})[host.name] = row
        return row


def host(name: str) -> SourceHost:
    return SourceHost(name, "COMPUTE", "SSH", reserved=False, on_maintenance=False)


SOURCE = [
    SourceSegment("a", "", "auto", "COMPUTE", True, (host("c1"), host("c2"))),
    SourceSegment("b", "", "reserved_host", "COMPUTE", True, (host("c3"),)),
]


def vigil_host(name: str) -> dict[str, Any]:
    fenced = name == "c2"
    return {"name": name, "fencing": [{"driver": "redfish"}] if fenced else [], "state": "new"}


def test_everything_is_created_and_each_unprotected_host_named() -> None:
    target = FakeTarget()
    rows = import_segments(SOURCE, target, vigil_host)
    assert [(r.kind, r.name, r.result) for r in rows] == [
        ("segment", "a", "created"),
        ("host", "c1", "created"),
        ("host", "c2", "created"),
        ("segment", "b", "created"),
        ("host", "c3", "created"),
    ]
    assert {r.name: r.missing for r in rows if r.kind == "host"} == {
        "c1": ["fencing", "agent"],
        "c2": ["agent"],
        "c3": ["fencing", "agent"],
    }
    assert summary(rows) == ("2 segments, 3 hosts; 3 hosts not yet protected by vigil (c1, c2, c3)")
    again = import_segments(SOURCE, target, vigil_host)
    assert {r.result for r in again} == {"exists"}


def test_a_dry_run_creates_nothing() -> None:
    target = FakeTarget()
    rows = import_segments(SOURCE, target, vigil_host, dry_run=True)
    assert {r.result for r in rows} == {"would create"}
    assert target.segs == {} and target.host_rows == {}


def test_a_refused_segment_skips_its_hosts_with_the_reason() -> None:
    rows = import_segments(SOURCE, FakeTarget(refuse="a"), vigil_host)
    by = {(r.kind, r.name): r for r in rows}
    assert by[("segment", "a")].result == "failed"
    assert "refused" in by[("segment", "a")].detail
    assert by[("host", "c1")].result == "skipped"
    assert by[("host", "c3")].result == "created"
    assert summary(rows).endswith("; 1 failed")
