"""Persistence of vigil's state. ``Store`` is the interface, the composition of one part
per aggregate (``HostStore``, ``RecoveryStore``, ...) for code that needs only one;
``vigil.store.sql`` the SQLAlchemy implementation (SQLite embedded, PostgreSQL and
MariaDB in production), assembled from one module per aggregate."""

from vigil.store.base import (
    AlreadyExists,
    AppStore,
    ClusterStore,
    ControlStore,
    GuestStore,
    HostStore,
    InUse,
    NotFoundError,
    OutboxStore,
    OwnershipStore,
    RecoveryStore,
    RequestStore,
    ServiceStore,
    StaleEpoch,
    Store,
    StoreError,
    StoreUnavailable,
    acting_as,
    current_token,
)

__all__ = [
    "AlreadyExists",
    "AppStore",
    "ClusterStore",
    "ControlStore",
    "GuestStore",
    "HostStore",
    "InUse",
    "NotFoundError",
    "OutboxStore",
    "OwnershipStore",
    "RecoveryStore",
    "RequestStore",
    "ServiceStore",
    "StaleEpoch",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "acting_as",
    "current_token",
]
