"""A real masakari-monitors process monitor (PyPI ``masakari-monitors``, in a virtualenv of
its own) posts to vigil: a watched process dies, the monitor fails to restart it and
reports it with the SDK exactly as it would to Masakari; vigil records the notification.

The monitor names the host by ``socket.gethostname()``, so this machine is a compute of
the simulated cloud here. It authenticates with ``[api] auth_type = admin_token``."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import require
from support import wait_until

from .conftest import PROCESS_MONITOR, installed
from .vigil_masakari import Running, running_vigil, sim_cloud

pytestmark = pytest.mark.masakari


@pytest.fixture
def vigil_here(tmp_path: Path) -> Iterator[Running]:
    cloud = sim_cloud()
    cloud.add_host(socket.gethostname())
    with running_vigil(tmp_path, cloud=cloud) as running:
        yield running


def test_process_monitor_reports_a_dead_process(vigil_here: Running, tmp_path: Path) -> None:
    require("masakari-monitors (tools/masakari/setup-clients)", lambda: installed(PROCESS_MONITOR))
    vigil = vigil_here
    me = socket.gethostname()
    ha = vigil.sdk()
    seg = ha.create_segment(name="zone", recovery_method="auto", service_type="COMPUTE")
    host = ha.create_host(seg.uuid, name=me, type="COMPUTE", control_attributes="")

    # The watched "service": a process with a unique name on its command line.
    name = f"/opt/vigil-test/nova-compute-{secrets.token_hex(4)}"
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", name])
    (tmp_path / "process_list.yaml").write_text(
        f"""
- process_name: {name}
  start_command: /bin/true
  pre_start_command:
  post_start_command:
  restart_command: /bin/false
  pre_restart_command:
  post_restart_command:
  run_as_root: False
"""
    )
    (tmp_path / "masakarimonitors.conf").write_text(
        f"""
[api]
auth_type = admin_token
endpoint = {vigil.endpoint}
token = {vigil.token}
api_interface = public

[process]
check_interval = 1
restart_retries = 0
restart_interval = 1
api_retry_max = 3
api_retry_interval = 1
process_list_path = {tmp_path / "process_list.yaml"}
"""
    )
    log = (tmp_path / "monitor.log").open("w")
    monitor = subprocess.Popen(
        [str(PROCESS_MONITOR), "--config-file", str(tmp_path / "masakarimonitors.conf")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert monitor.poll() is None, (tmp_path / "monitor.log").read_text()
        service.kill()
        service.wait()

        def reported() -> list[object]:
            return list(ha.notifications(type="PROCESS"))

        try:
            (n,) = wait_until(reported, "the monitor's notification", 60)
        except AssertionError:
            raise AssertionError((tmp_path / "monitor.log").read_text()[-4000:]) from None
        assert n.source_host_uuid == host.uuid  # Masakari answers with the host's uuid
        assert n.payload == {"event": "STOPPED", "process_name": name.rsplit("/", 1)[-1]}
        assert n.status == "ignored"  # recorded; vigil's own agent acts on processes
        # The monitor got its 202 and logged vigil's answer.
        wait_until(
            lambda: "Response:" in (tmp_path / "monitor.log").read_text(),
            "the monitor to log vigil's response",
            20.0,
        )
    finally:
        monitor.terminate()
        try:
            monitor.wait(10)
        except subprocess.TimeoutExpired:
            monitor.kill()
            monitor.wait()
        if service.poll() is None:
            service.kill()
            service.wait()
        log.close()
