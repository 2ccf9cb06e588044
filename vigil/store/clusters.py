"""In-guest clusters in SQL (issue 19): one row per cluster, its members as JSON.

A cluster's writes take no host lock: a cluster spans hosts, and nothing else writes
its row (its requests run one at a time per cluster, ``vigil.engine.requests``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vigil.model import Cluster, ClusterMember, Event, HaPolicy
from vigil.store.base import AlreadyExists, ClusterStore, NotFoundError
from vigil.store.mapping import record_of
from vigil.store.rows import ClusterRow
from vigil.store.session import SessionBase

_SPEC = ("size", "image", "flavor", "network", "policy", "want_vip", "external")
_RESOURCES = ("network_id", "vip", "vip_port_id", "server_group_id", "security_group_id")


def _cluster(row: ClusterRow) -> Cluster:
    spec, made = row.spec, row.resources
    return record_of(
        Cluster,
        row,
        size=int(spec["size"]),
        image=spec["image"],
        flavor=spec["flavor"],
        network=spec["network"],
        policy=HaPolicy(spec["policy"]),
        want_vip=bool(spec["want_vip"]),
        external=bool(spec.get("external", False)),
        members=tuple(ClusterMember(**m) for m in row.members),
        **{k: made.get(k, "") for k in _RESOURCES},
    )


def _fill(row: ClusterRow, cluster: Cluster) -> None:
    values = dataclasses.asdict(cluster)
    row.name, row.project_id = cluster.name, cluster.project_id
    row.project_key = cluster.project_id or ""
    row.status, row.detail, row.authkey = cluster.status.value, cluster.detail, cluster.authkey
    row.spec = {k: values[k] for k in _SPEC} | {"policy": cluster.policy.value}
    row.resources = {k: values[k] for k in _RESOURCES}
    row.members = [dataclasses.asdict(m) for m in cluster.members]
    row.report = None if cluster.report is None else dict(cluster.report)
    row.created_at, row.updated_at = cluster.created_at, cluster.updated_at


class SqlClusters(SessionBase, ClusterStore):
    def add_cluster(self, cluster: Cluster, *, events: Sequence[Event] = ()) -> Cluster:
        try:
            with self._write() as s:
                row = ClusterRow(id=cluster.id)
                _fill(row, cluster)
                s.add(row)
                s.flush()
                self._outbox(s, events)
                return _cluster(row)
        except IntegrityError as exc:
            where = f"project {cluster.project_id}" if cluster.project_id else "the cloud"
            raise AlreadyExists(f"{where} has a cluster named {cluster.name!r}") from exc

    def get_cluster(self, cluster_id: str) -> Cluster:
        with self._read() as s:
            return _cluster(self._row(s, cluster_id))

    def list_clusters(self, *, project_id: str | None = None) -> list[Cluster]:
        query = sa.select(ClusterRow).order_by(ClusterRow.created_at, ClusterRow.id)
        if project_id is not None:
            query = query.where(ClusterRow.project_id == project_id)
        with self._read() as s:
            return [_cluster(r) for r in s.scalars(query)]

    def update_cluster(
        self, cluster_id: str, *, at: float, events: Sequence[Event] = (), **changes: Any
    ) -> Cluster:
        with self._write() as s:
            row = self._row(s, cluster_id, lock=True)
            changed = dataclasses.replace(_cluster(row), updated_at=at, **changes)
            _fill(row, changed)
            s.flush()
            self._outbox(s, events)
            return _cluster(row)

    def delete_cluster(self, cluster_id: str, *, events: Sequence[Event] = ()) -> None:
        with self._write() as s:
            s.delete(self._row(s, cluster_id, lock=True))
            self._outbox(s, events)

    @staticmethod
    def _row(s: Session, cluster_id: str, *, lock: bool = False) -> ClusterRow:
        query = sa.select(ClusterRow).where(ClusterRow.id == cluster_id)
        row = s.scalars(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise NotFoundError(f"cluster {cluster_id!r} does not exist")
        return row
