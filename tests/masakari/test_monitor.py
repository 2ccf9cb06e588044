"""A real masakari-monitors process monitor (``support.monitors``) posts to vigil: a
watched process dies, the monitor fails to restart it and reports it with the SDK
exactly as it would to Masakari; vigil records the notification.

The monitor names the host by ``socket.gethostname()``, so this machine is a compute of
the simulated cloud here. It authenticates with ``[api] auth_type = admin_token``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import require
from support import wait_until
from support.monitors import installed, process_monitor

from .vigil_masakari import Running, running_vigil, sim_cloud

pytestmark = pytest.mark.masakari


@pytest.fixture
def vigil_here(tmp_path: Path) -> Iterator[Running]:
    cloud = sim_cloud()
    cloud.add_host(socket.gethostname())
    with running_vigil(tmp_path, cloud=cloud) as running:
        yield running


def test_process_monitor_reports_a_dead_process(vigil_here: Running, tmp_path: Path) -> None:
    require("masakari-monitors (tools/masakari/setup-clients)", installed)
    vigil = vigil_here
    ha = vigil.sdk()
    seg = ha.create_segment(name="zone", recovery_method="auto", service_type="COMPUTE")
    host = ha.create_host(
        seg.uuid, name=socket.gethostname(), type="COMPUTE", control_attributes=""
    )
    api = f"""
auth_type = admin_token
endpoint = {vigil.endpoint}
token = {vigil.token}
api_interface = public
"""
    with process_monitor(tmp_path, api) as watched:
        watched.kill()

        def reported() -> list[object]:
            return list(ha.notifications(type="PROCESS"))

        try:
            (n,) = wait_until(reported, "the monitor's notification", 60)
        except AssertionError:
            raise AssertionError(watched.log_text()) from None
        assert n.source_host_uuid == host.uuid  # Masakari answers with the host's uuid
        assert n.payload == {"event": "STOPPED", "process_name": watched.name}
        assert n.status == "ignored"  # recorded; vigil's own agent acts on processes
        watched.wait_for_vigil_answer()  # the monitor got its 202 and logged vigil's answer
