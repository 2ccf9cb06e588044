"""The real etcd clusters of ``support.etcd_fixture`` and a Redis server of their own
(``support.redis``) for the coordination tests."""

from support.etcd_fixture import etcd_cluster, fresh_etcd_prefix, own_etcd_cluster
from support.redis import redis_server

__all__ = ["etcd_cluster", "fresh_etcd_prefix", "own_etcd_cluster", "redis_server"]
