"""pytest fixtures for a real etcd cluster (``support.etcd.EtcdCluster``).

Import them into a conftest (``from support.etcd_fixture import etcd_cluster, ...``).
Without the ``etcd`` binary (``tools/etcd/setup`` installs it) a test that uses one is
skipped on a developer's machine and fails with ``CI=true`` (``services.require``).

- ``etcd_cluster``: a three-member cluster for the whole session, on the first free ports
  from 23790 (``VIGIL_TEST_ETCD_BASE_PORT`` to choose another start). Tests share it: one
  that kills or pauses a member must bring it back before it ends (``restart(i)``,
  ``resume(i)``), or use ``own_etcd_cluster``.
- ``own_etcd_cluster``: a three-member cluster of the test's own (about 1 s to start),
  for tests that break quorum; stopped after the test.
- ``fresh_etcd_prefix``: a name prefix unique to the test (``t<hex>-``), for its locks and
  groups on the shared cluster.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import require

from support.etcd import EtcdCluster, etcd_binary, free_base_port

BASE_PORT = int(os.environ.get("VIGIL_TEST_ETCD_BASE_PORT", "23790"))


def _cluster(base_dir: Path, start: int) -> Iterator[EtcdCluster]:
    def installed() -> None:
        etcd_binary()

    require("etcd", installed)
    cluster = EtcdCluster(base_dir, size=3, base_port=free_base_port(3, start))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    yield from _cluster(tmp_path_factory.mktemp("etcd"), BASE_PORT)


@pytest.fixture
def own_etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    yield from _cluster(tmp_path_factory.mktemp("etcd-own"), BASE_PORT + 100)


@pytest.fixture
def fresh_etcd_prefix() -> str:
    return f"t{secrets.token_hex(4)}-"
