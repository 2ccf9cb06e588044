"""``vigil import masakari``: move a Masakari deployment's segments and hosts to vigil.

Masakari is read through its own API with openstacksdk's ``instance_ha`` proxy, from the
cloud that ``--os-cloud`` (or ``OS_CLOUD``, or the ``OS_*`` variables) names — as any
OpenStack client finds it. What is read is written to vigil through vigil's
Masakari-compatible API (``/instance-ha/v1``), so that recovery methods, reserved hosts,
maintenance and control attributes keep exactly Masakari's meaning there; instances keep
their ``HA_Enabled`` metadata, which vigil understands.

Then every imported host is checked against what vigil needs to protect it, and each one
that lacks something is named — so the first failure after the move is not the moment an
operator learns it:

- no fencing level: vigil never evacuates a host it has not fenced (Masakari relied on
  Pacemaker's STONITH, which vigil does not see);
- no vigil agent heard: vigil detects failures by its agents' heartbeats; without one it
  only acts on a monitor's notification, and needs a BMC to corroborate it.

Idempotent: a segment or host that already exists in vigil is left as it is (and still
checked). ``--dry-run`` reads Masakari and vigil and says what would be created.

Limits: Masakari's notifications (its history) are not moved; a host of a segment that
is not imported (an error creating the segment) is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vigil.cli.client import ApiError, Json, VigilClient

API_VERSION = "instance-ha 1.3"  # what vigil's Masakari API serves, with segment "enabled"


@dataclass(frozen=True)
class SourceHost:
    name: str
    type: str
    control_attributes: str
    reserved: bool
    on_maintenance: bool


@dataclass(frozen=True)
class SourceSegment:
    name: str
    description: str
    recovery_method: str
    service_type: str
    enabled: bool
    hosts: tuple[SourceHost, ...] = ()


@dataclass
class Outcome:
    """One row of the report: a segment or host and what became of it."""

    kind: str  # segment | host
    name: str
    segment: str
    result: str  # created | exists | would create | failed
    missing: list[str] = field(default_factory=list)
    detail: str = ""

    def as_json(self) -> Json:
        return {
            "kind": self.kind,
            "name": self.name,
            "segment": self.segment,
            "result": self.result,
            "missing": self.missing,
            "detail": self.detail,
        }


def read_masakari(conn: Any) -> list[SourceSegment]:
    """Segments and their hosts through openstacksdk's ``instance_ha`` proxy."""
    segments = []
    for seg in conn.instance_ha.segments():
        hosts = tuple(
            SourceHost(
                name=str(h.name),
                type=str(h.type or "COMPUTE"),
                control_attributes=str(h.control_attributes or ""),
                reserved=bool(h.reserved),
                on_maintenance=bool(h.on_maintenance),
            )
            for h in conn.instance_ha.hosts(seg.uuid)
        )
        enabled = getattr(seg, "is_enabled", None)
        if enabled is None:
            enabled = getattr(seg, "enabled", True)
        segments.append(
            SourceSegment(
                name=str(seg.name),
                description=str(seg.description or ""),
                recovery_method=str(seg.recovery_method or "auto"),
                service_type=str(seg.service_type or "COMPUTE"),
                enabled=enabled is not False,
                hosts=hosts,
            )
        )
    return segments


def missing_for_protection(host: Mapping[str, Any]) -> list[str]:
    """What a vigil host (as ``GET /v1/hosts/NAME`` shows it) lacks to be protected."""
    missing = []
    if not host.get("fencing"):
        missing.append("fencing")
    if host.get("state") == "new":
        missing.append("agent")
    return missing


ADVICE = {
    "fencing": "add a fencing level: vigil host update NAME --fence redfish:address=...",
    "agent": "run vigil-agent on the host (no heartbeat heard yet)",
}


class MasakariApi:
    """vigil's own Masakari-compatible API, through the operator's vigil client."""

    def __init__(self, client: VigilClient) -> None:
        self._client = client
        self._headers = {"OpenStack-API-Version": API_VERSION}

    def _call(self, method: str, path: str, body: Json | None = None) -> Any:
        return self._client.request_raw(
            method, f"/instance-ha/v1{path}", body=body, headers=self._headers
        )

    def segments(self) -> dict[str, Json]:
        return {s["name"]: s for s in self._call("GET", "/segments")["segments"]}

    def hosts(self, segment_uuid: str) -> dict[str, Json]:
        return {h["name"]: h for h in self._call("GET", f"/segments/{segment_uuid}/hosts")["hosts"]}

    def create_segment(self, seg: SourceSegment) -> Json:
        body = {
            "segment": {
                "name": seg.name,
                "description": seg.description or None,
                "recovery_method": seg.recovery_method,
                "service_type": seg.service_type,
                "enabled": seg.enabled,
            }
        }
        created: Json = self._call("POST", "/segments", body)["segment"]
        return created

    def create_host(self, segment_uuid: str, host: SourceHost) -> Json:
        body = {
            "host": {
                "name": host.name,
                "type": host.type,
                "control_attributes": host.control_attributes,
                "reserved": host.reserved,
                "on_maintenance": host.on_maintenance,
            }
        }
        created: Json = self._call("POST", f"/segments/{segment_uuid}/hosts", body)["host"]
        return created


def import_segments(
    source: Sequence[SourceSegment],
    target: MasakariApi,
    vigil_host: Callable[[str], Mapping[str, Any]],
    *,
    dry_run: bool = False,
) -> list[Outcome]:
    """Create what is missing in vigil and check every host; one outcome per row."""
    outcomes: list[Outcome] = []
    existing = target.segments()
    for seg in source:
        current = existing.get(seg.name)
        row = Outcome("segment", seg.name, seg.name, "exists" if current else "created")
        outcomes.append(row)
        if current is None:
            if dry_run:
                row.result = "would create"
            else:
                try:
                    current = target.create_segment(seg)
                except ApiError as exc:
                    row.result, row.detail = "failed", str(exc)
                    outcomes.extend(
                        Outcome("host", h.name, seg.name, "skipped", detail="segment not imported")
                        for h in seg.hosts
                    )
                    continue
        present = target.hosts(str(current["uuid"])) if current is not None else {}
        for host in seg.hosts:
            outcomes.append(_import_host(host, seg, current, present, target, vigil_host))
    return outcomes


def _import_host(
    host: SourceHost,
    seg: SourceSegment,
    segment: Json | None,
    present: Mapping[str, Json],
    target: MasakariApi,
    vigil_host: Callable[[str], Mapping[str, Any]],
) -> Outcome:
    row = Outcome("host", host.name, seg.name, "exists" if host.name in present else "created")
    if segment is None:
        row.result, row.missing = "would create", ["fencing", "agent"]
        return row
    if host.name not in present:
        try:
            target.create_host(str(segment["uuid"]), host)
        except ApiError as exc:
            row.result, row.detail = "failed", str(exc)
            return row
    try:
        row.missing = missing_for_protection(vigil_host(host.name))
    except ApiError as exc:
        row.detail = f"cannot read it back: {exc}"
    row.detail = row.detail or "; ".join(ADVICE[m] for m in row.missing)
    return row


def summary(outcomes: Iterable[Outcome]) -> str:
    rows = list(outcomes)
    hosts = [o for o in rows if o.kind == "host"]
    unprotected = [o for o in hosts if o.missing]
    failed = [o for o in rows if o.result == "failed"]
    return (
        f"{sum(1 for o in rows if o.kind == 'segment')} segments, {len(hosts)} hosts; "
        f"{len(unprotected)} hosts not yet protected by vigil"
        + (f" ({', '.join(o.name for o in unprotected)})" if unprotected else "")
        + (f"; {len(failed)} failed" if failed else "")
    )
