"""The real-Nova tier runs on the real Keystone (tools/keystone): Nova and Placement
validate tokens with keystonemiddleware (no token or a forged one is a 401 naming
Keystone), the catalog the real Keystone hands out names minicloud's Nova and Placement,
and vigil's openstack driver lists the computes with the Keystone token it took.
"""

from __future__ import annotations

import httpx
import pytest
from support.keystone import Keystone

from vigil.drivers.openstack import build_openstack_compute

from .cloud import COMPUTES, Minicloud

pytestmark = pytest.mark.nova


def _endpoints(keystone: Keystone, service_type: str) -> dict[str, str]:
    """The catalog's endpoints of ``service_type`` in RegionOne, by interface, as the
    real Keystone gives them to its admin."""
    admin = keystone.session("admin")
    catalog = admin.auth.get_access(admin).service_catalog  # type: ignore[union-attr]
    return {
        interface: catalog.url_for(
            service_type=service_type, interface=interface, region_name="RegionOne"
        )
        for interface in ("public", "internal")
    }


def test_nova_and_placement_take_only_keystone_tokens(minicloud: Minicloud) -> None:
    keystone = minicloud.keystone
    assert keystone is not None
    compute = _endpoints(keystone, "compute")
    placement = _endpoints(keystone, "placement")
    # The catalog of the real Keystone, not a stand-in's, points at minicloud's services.
    assert minicloud.conn.config.get_auth_args()["auth_url"] == keystone.auth_url
    assert compute["public"] == compute["internal"]
    assert compute["public"].startswith("http://127.0.0.1:") and "/v2.1" in compute["public"]
    assert placement["public"] == placement["internal"]
    assert minicloud.conn.compute.get_endpoint().rstrip("/") == compute["public"].rstrip("/")

    forged = "gAAAAABforged" + "x" * 160  # shaped like a fernet token, signed by no one
    for url in (f"{compute['public']}/os-services", f"{placement['public']}/resource_providers"):
        for headers in ({}, {"X-Auth-Token": forged}):
            response = httpx.get(url, headers=headers, timeout=30)
            assert response.status_code == 401, (url, headers, response.text)
            # keystonemiddleware's answer: where to get a token.
            www = response.headers.get("WWW-Authenticate", "")
            assert keystone.auth_url.rsplit("/v3", 1)[0] in www, www
        good = {"X-Auth-Token": keystone.token("admin")}
        assert httpx.get(url, headers=good, timeout=30).status_code == 200

    # vigil's driver: its token from the real Keystone, Nova's answer through it.
    driver = build_openstack_compute("minicloud")
    assert sorted(s.host for s in driver.list_services()) == list(COMPUTES)
