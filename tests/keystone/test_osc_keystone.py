"""``openstack vigil ...`` as an operator runs it: the installed ``openstack`` console
script, a cloud of tools/keystone's clouds.yaml, a vigil-server taking Keystone tokens.
The Keystone catalog has no ``ha`` endpoint for this server: ``--os-vigil-url`` names it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Served

pytestmark = pytest.mark.keystone

OPENSTACK = Path(sys.executable).parent / "openstack"


def openstack(served: Served, cloud: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env |= {"OS_CLIENT_CONFIG_FILE": served.keystone.info["clouds_yaml"], "OS_CLOUD": cloud}
    return subprocess.run(
        [str(OPENSTACK), "--os-vigil-url", served.server.api_url, "vigil", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_an_admin_creates_and_lists_a_reader_may_not_create(served: Served) -> None:
    created = openstack(served, "keystone-admin", "segment", "create", "az-osc", "-f", "json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == "az-osc"

    listed = openstack(served, "keystone-admin", "segment", "list", "-f", "value", "-c", "Name")
    assert listed.returncode == 0, listed.stderr
    assert "az-osc" in listed.stdout.split()

    refused = openstack(served, "keystone-cloud-reader", "segment", "create", "az-reader")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "403: policy does not allow vigil:segments:create" in refused.stderr
    assert (
        served.call("GET", "/v1/segments/az-reader", served.keystone.token("admin")).status_code
        == 404
    )
