"""The SQLAlchemy implementation of ``vigil.store.base.Store``: ``SqlStore``.

One schema for SQLite (embedded, single server), PostgreSQL and MariaDB/MySQL. The
store is assembled from one mixin per aggregate, each over the shared transactions of
``vigil.store.session`` (whose docstring says how writes lock and why):

- ``vigil.store.hosts``: segments, hosts, instance policies, the cloud-wide control;
- ``vigil.store.recoveries`` (with ``failures`` and ``steps``): host failures and
  their recoveries;
- ``vigil.store.guests``: guest failures;
- ``vigil.store.host_services``: host services;
- ``vigil.store.apps``: application checks (declarations, check states, episodes);
- ``vigil.store.outbox``: events, sinks, dead letters, webhook subscriptions;
- ``vigil.store.requests``: operator requests (restore a host, restart an instance);
- ``vigil.store.ownership``: who owns each segment, and its epoch (the fencing token).

The tables are in ``vigil.store.rows``; the engine and the migrations in
``vigil.store.db`` (``SqlStore`` never migrates on its own). Their names are
re-exported here, where callers have always found them.
"""

from __future__ import annotations

from vigil.store.apps import SqlApps
from vigil.store.base import Store
from vigil.store.clusters import SqlClusters
from vigil.store.db import _SQLITE_IMMEDIATE, MIGRATIONS_DIR, alembic_config, make_engine, upgrade
from vigil.store.guests import SqlGuests
from vigil.store.host_services import SqlHostServices
from vigil.store.hosts import SqlHosts
from vigil.store.outbox import SqlOutbox
from vigil.store.ownership import SqlOwnership
from vigil.store.recoveries import SqlRecoveries
from vigil.store.requests import SqlRequests
from vigil.store.rows import Base

__all__ = [
    "MIGRATIONS_DIR",
    "_SQLITE_IMMEDIATE",
    "Base",
    "SqlStore",
    "alembic_config",
    "make_engine",
    "upgrade",
]


class SqlStore(
    SqlHosts,
    SqlRecoveries,
    SqlGuests,
    SqlHostServices,
    SqlApps,
    SqlClusters,
    SqlOutbox,
    SqlRequests,
    SqlOwnership,
    Store,
):
    """``Store`` on a relational database: the composition of the aggregates' mixins.
    One instance may be shared by any number of threads (``vigil.store.session``)."""
