"""The real etcd clusters of ``support.etcd_fixture`` for the coordination tests."""

from support.etcd_fixture import etcd_cluster, fresh_etcd_prefix, own_etcd_cluster

__all__ = ["etcd_cluster", "fresh_etcd_prefix", "own_etcd_cluster"]
