"""Fixtures of the Masakari compatibility tests: vigil with Masakari's API on the simulated
cloud, and where Masakari's own clients and monitors are (tools/masakari/setup-clients)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.monitors import CLIENTS_HOME, installed

from .vigil_masakari import Running, running_vigil, sim_cloud

OPENSTACK_CLI = CLIENTS_HOME / "clients" / "bin" / "openstack"
__all__ = ["OPENSTACK_CLI", "installed"]


@pytest.fixture
def vigil(tmp_path: Path) -> Iterator[Running]:
    with running_vigil(tmp_path, cloud=sim_cloud()) as running:
        yield running
