"""masakari-monitors through Keystone, as they run in a Masakari deployment: the process
monitor logs in with a password (keystoneauth), finds the instance-ha endpoint in the
catalog (vigil's Masakari API) and posts its notification with a Keystone token, which
vigil validates (keystonemiddleware) and authorizes under Masakari's rule name."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from services import require
from support import wait_until
from support.monitors import installed, process_monitor

from .conftest import Keystone, Served

pytestmark = [pytest.mark.keystone, pytest.mark.masakari]


def test_a_process_monitor_reports_through_the_catalog(
    served: Served, keystone: Keystone, tmp_path: Path
) -> None:
    require("masakari-monitors (tools/masakari/setup-clients)", installed)
    me = socket.gethostname()
    served.cloud.add_host(me)
    # What an operator names: the monitors' service user ([api] of masakarimonitors.conf).
    creds = keystone.credentials("admin")
    api = f"""
auth_type = password
auth_url = {creds["auth_url"]}
username = {creds["username"]}
password = {creds["password"]}
project_name = {creds["project_name"]}
user_domain_id = default
project_domain_id = default
region = RegionOne
api_interface = public
"""
    with keystone.in_catalog("instance-ha", f"{served.server.api_url}/instance-ha/v1"):
        ha: Any = keystone.connect("admin").instance_ha
        seg = ha.create_segment(name="ks-zone", recovery_method="auto", service_type="COMPUTE")
        host = ha.create_host(seg.uuid, name=me, type="COMPUTE", control_attributes="")
        try:
            with process_monitor(tmp_path, api) as watched:
                watched.kill()

                def reported() -> list[Any]:
                    return list(ha.notifications(type="PROCESS"))

                try:
                    (n,) = wait_until(reported, "the monitor's notification", 60)
                except AssertionError:
                    raise AssertionError(watched.log_text()) from None
                assert n.source_host_uuid == host.uuid
                assert n.payload == {"event": "STOPPED", "process_name": watched.name}
                watched.wait_for_vigil_answer()
        finally:
            ha.delete_host(host.uuid, segment=seg.uuid)
            ha.delete_segment(seg.uuid)
