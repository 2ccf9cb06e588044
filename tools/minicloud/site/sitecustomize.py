"""Imported by Python at the start of every minicloud service (this directory is on their
PYTHONPATH): with MINICLOUD_TOKEN_MARGIN set, keystoneauth renews a token that many
seconds before it expires instead of 120.

``start --keystone`` sets it to a quarter of the Keystone's token lifetime when that is
short: the tests' Keystone issues 20-second tokens, under keystoneauth's two-minute
margin, so every service-to-service request (Nova to Placement and Neutron, each
middleware's own token) would log in again and present a new service token, which the
service it calls must validate again - some 0.3 s per call, on every evacuation and
every boot. With a quarter of the lifetime as margin the services renew about as rarely
as with production's one-hour tokens (what ``renew_tokens_late`` in tests/nova/cloud.py
does for the tests' own clients).
"""

import os

_margin = os.environ.get("MINICLOUD_TOKEN_MARGIN")
if _margin:
    try:
        from keystoneauth1.identity.base import BaseIdentityPlugin
    except ImportError:  # a process without keystoneauth (the stubs)
        pass
    else:
        BaseIdentityPlugin.MIN_TOKEN_LIFE_SECONDS = int(_margin)
