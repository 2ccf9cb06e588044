"""Persistence of vigil's state. ``Store`` is the interface; ``vigil.store.sql`` the
SQLAlchemy implementation (SQLite embedded, PostgreSQL and MariaDB in production)."""

from vigil.store.base import AlreadyExists, InUse, NotFoundError, Store, StoreError

__all__ = ["AlreadyExists", "InUse", "NotFoundError", "Store", "StoreError"]
