"""Fixtures of the Masakari compatibility tests: vigil with Masakari's API on the simulated
cloud, and where Masakari's own clients and monitors are (tools/masakari/setup-clients)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .vigil_masakari import Running, running_vigil, sim_cloud

REPO = Path(__file__).resolve().parents[2]
CLIENTS_HOME = Path(os.environ.get("MASAKARI_CLIENTS_HOME") or REPO / ".masakari")
OPENSTACK_CLI = CLIENTS_HOME / "clients" / "bin" / "openstack"
PROCESS_MONITOR = CLIENTS_HOME / "monitors" / "bin" / "masakari-processmonitor"


def installed(path: Path) -> None:
    """A check for services.require."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run tools/masakari/setup-clients")


@pytest.fixture
def vigil(tmp_path: Path) -> Iterator[Running]:
    with running_vigil(tmp_path, cloud=sim_cloud()) as running:
        yield running
