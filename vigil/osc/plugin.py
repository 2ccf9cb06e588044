"""The OpenStackClient plugin hooks: ``openstack vigil ...`` (commands in ``vigil.osc.v1``).

The client is vigil's own (``vigil.cli.client.VigilClient``), given the Keystone token of
OSC's session. The API's URL is ``--os-vigil-url`` (env ``OS_VIGIL_URL``), else the
catalog's endpoint of service type ``ha`` (or clouds.yaml's ``ha_endpoint_override``),
else, with ``--os-auth-type admin_token``, ``--os-endpoint``.
"""

from __future__ import annotations

import argparse

from osc_lib import exceptions, utils
from osc_lib.clientmanager import ClientManager

from vigil.cli.client import VigilClient

API_NAME = "vigil"
API_VERSION_OPTION = "os_vigil_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = {"1": "vigil.cli.client.VigilClient"}
SERVICE_TYPE = "ha"


def make_client(instance: ClientManager) -> VigilClient:
    """A client of the vigil-server that the options or the catalog name, carrying OSC's
    token (a Keystone token; with ``admin_token`` auth, the token given)."""
    config = instance.get_configuration()
    url = config.get("vigil_url") or instance.get_endpoint_for_service_type(
        SERVICE_TYPE, region_name=instance.region_name, interface=instance.interface
    )
    if not url:
        raise exceptions.CommandError(
            f"no {SERVICE_TYPE!r} endpoint in the catalog: give --os-vigil-url or OS_VIGIL_URL"
        )
    token = instance.session.get_token() or ""
    verify = True if instance.verify is None else instance.verify  # --insecure, --os-cacert
    return VigilClient(url, "", keystone_token=token, verify=verify)


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """OSC's global options for vigil."""
    parser.add_argument(
        "--os-vigil-api-version",
        metavar="<version>",
        default=utils.env("OS_VIGIL_API_VERSION", default=DEFAULT_API_VERSION),
        help=f"vigil API version (env OS_VIGIL_API_VERSION; default {DEFAULT_API_VERSION})",
    )
    parser.add_argument(
        "--os-vigil-url",
        metavar="<url>",
        default=utils.env("OS_VIGIL_URL"),
        help=f"vigil-server's API (env OS_VIGIL_URL; default: the catalog's {SERVICE_TYPE!r} "
        "endpoint)",
    )
    return parser
