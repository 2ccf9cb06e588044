#!/usr/bin/python3
"""fence_vigil: the fence agent of an in-guest Pacemaker cluster built by vigil.

It runs inside the cluster's VMs, where vigil is not installed: it is one file of the
standard library and fence-agents' own ``fencing`` library (``/usr/share/fence``,
package fence-agents or fence-agents-common), which gives it every ClusterLabs
convention — options on stdin and as arguments, ``off | on | reboot | status | list |
monitor | metadata | validate-all``, the XML metadata, the exit codes (0 done, 1
failed, 2 status off), ``power_timeout`` and ``delay``. vigil writes it into each
member by cloud-init (``vigil.engine.clusters``); elsewhere, copy this file to
``/usr/sbin/fence_vigil`` (Pacemaker looks for fence agents there).

What it asks vigil (``POST {vigil_url}/v1/clusters/{cluster}/fence``, authenticated by
the cluster's token, good for that cluster only): a member's power.

- A member whose hypervisor is up: ``off`` is an immediate hard power-off through Nova,
  confirmed by Nova's power state; ``on`` starts it.
- A member whose hypervisor died: vigil answers "off" only once it has fenced that host
  (its BMC confirmed it off, or its self-fencing deadline passed). Until then ``status``
  fails and ``off`` keeps asking until ``power_timeout`` (default 120 s) — never "off"
  on a guess, which is what makes it safe for Pacemaker to take the member's resources.
  Nova's own stop cannot do this: it is cast to the dead compute and never completes,
  which is why ``fence_openstack`` hangs the cluster exactly when it is needed.

``reboot`` is off, confirmed, then on; Pacemaker's stonith resource is generated with
``pcmk_reboot_action=off``: a member on a dead host cannot be started again there.
"""

import atexit
import json
import logging
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

sys.path.append("/usr/share/fence")
from fencing import (  # type: ignore[import-not-found]
    EC_STATUS,
    all_opt,
    atexit_handler,
    check_input,
    fail,
    fail_usage,
    fence_action,
    process_input,
    run_delay,
    show_docs,
)

TOKEN_HEADER = "X-Vigil-Cluster-Token"


class Vigil:
    """The calls of one run, with the options it was given."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.url = options["--vigil-url"].rstrip("/")
        self.cluster = options["--cluster"]
        self.timeout = float(options["--apitimeout"])
        token = options.get("--token", "")
        if options.get("--token-file"):
            try:
                with open(options["--token-file"]) as f:
                    token = f.read().strip()
            except OSError as exc:
                fail_usage(f"Failed: cannot read the cluster token: {exc}")
        if not token:
            fail_usage("Failed: give the cluster's token (token_file= or token=)")
        self.token = token
        self.context: ssl.SSLContext | None = None
        if options.get("--ssl-insecure") == "1":
            self.context = ssl._create_unverified_context()
        elif options.get("--cacert"):
            self.context = ssl.create_default_context(cafile=options["--cacert"])

    def ask(
        self, action: str, member: str | None = None, report: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """vigil's answer as (HTTP status, JSON body); status 0 when vigil was not
        reached (the body says why)."""
        body = json.dumps({"action": action, "member": member, "report": report}).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/clusters/{self.cluster}/fence",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", TOKEN_HEADER: self.token},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as r:
                return int(r.status), dict(json.loads(r.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            try:
                answer = dict(json.loads(exc.read() or b"{}"))
            except ValueError:
                answer = {}
            return exc.code, answer
        except (OSError, ValueError) as exc:
            return 0, {"detail": f"vigil at {self.url} not reached: {exc}"}


def _detail(answer: dict[str, Any]) -> str:
    return str(answer.get("detail") or answer)


def get_power_status(vigil: Vigil, options: dict[str, Any]) -> str:
    member = options["--plug"]
    status, answer = vigil.ask("status", member)
    if status == 200 and answer.get("power") in ("on", "off"):
        logging.info("%s: %s (%s)", member, answer["power"], _detail(answer))
        return str(answer["power"])
    if status in (401, 403, 404):  # no retry makes these right
        fail_usage(f"Failed: {member}: {_detail(answer)}")
    logging.warning("%s: power not known: %s", member, _detail(answer))
    if options["--action"] in ("off", "reboot"):
        # not confirmed off (its host is not fenced yet, vigil is away): it counts as
        # on, so that off asks again until power_timeout
        return "on"
    fail(EC_STATUS)
    return "unknown"  # not reached: fail() exits


def set_power_status(vigil: Vigil, options: dict[str, Any]) -> None:
    member, action = options["--plug"], options["--action"]
    status, answer = vigil.ask(action, member)
    if status in (401, 403, 404):
        fail_usage(f"Failed: {member}: {_detail(answer)}")
    if status not in (200, 202):
        # a host not fenced yet (409) or vigil away: the status polls go on
        logging.warning("%s: %s not started: %s", member, action, _detail(answer))
    else:
        logging.info("%s: %s: %s", member, action, _detail(answer))


def cluster_report() -> dict[str, Any] | None:
    """This member's view of the cluster (``crm_mon``): quorum and the members online.
    None where there is no running cluster to ask (``crm_mon`` fails or is missing)."""
    try:
        shown = subprocess.run(
            ["crm_mon", "-1", "--output-as=xml"], capture_output=True, text=True, timeout=10
        )
        root = ET.fromstring(shown.stdout) if shown.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ET.ParseError):
        return None
    if root is None:
        return None
    dc = root.find("summary/current_dc")
    nodes = root.find("nodes")
    online = (
        []
        if nodes is None
        else [str(n.get("name")) for n in nodes.findall("node") if n.get("online") == "true"]
    )
    return {
        "quorate": dc is not None and dc.get("with_quorum") == "true",
        "online": online,
        "dc": "" if dc is None else str(dc.get("name") or ""),
        "by": socket.gethostname(),
    }


def get_list(vigil: Vigil, options: dict[str, Any]) -> dict[str, tuple[str, str]]:
    # Pacemaker's monitor of the device (every minute) also tells vigil what this
    # member sees: ``vigil cluster verify`` checks quorum and membership with it.
    monitor = options.get("--original-action") == "monitor"
    status, answer = vigil.ask("list", report=cluster_report() if monitor else None)
    if status != 200:
        fail_usage(f"Failed: cluster {vigil.cluster}: {_detail(answer)}")
    return {m["name"]: (m.get("address", ""), m.get("power", "")) for m in answer["members"]}


def define_new_opts() -> None:
    all_opt["vigil_url"] = {
        "getopt": ":",
        "longopt": "vigil-url",
        "help": "--vigil-url=[url]              vigil's API, e.g. https://vigil.example:8675",
        "required": "1",
        "shortdesc": "vigil's API endpoint",
        "order": 1,
    }
    all_opt["cluster"] = {
        "getopt": ":",
        "longopt": "cluster",
        "help": "--cluster=[id]                 The cluster's id in vigil",
        "required": "1",
        "shortdesc": "The cluster's id in vigil",
        "order": 2,
    }
    all_opt["token_file"] = {
        "getopt": ":",
        "longopt": "token-file",
        "help": "--token-file=[path]            File holding the cluster's token",
        "required": "0",
        "shortdesc": "File holding the cluster's fencing token",
        "order": 3,
    }
    all_opt["token"] = {
        "getopt": ":",
        "longopt": "token",
        "help": "--token=[token]                The cluster's token (token_file is better)",
        "required": "0",
        "shortdesc": "The cluster's fencing token",
        "order": 4,
    }
    all_opt["cacert"] = {
        "getopt": ":",
        "longopt": "cacert",
        "help": "--cacert=[file]                CA certificates checking vigil's",
        "required": "0",
        "shortdesc": "CA certificates for vigil's TLS",
        "default": "",
        "order": 5,
    }
    all_opt["apitimeout"] = {
        "getopt": ":",
        "type": "second",
        "longopt": "apitimeout",
        "help": "--apitimeout=[seconds]         Timeout of one call to vigil",
        "shortdesc": "Timeout in seconds of one call to vigil, default 10",
        "required": "0",
        "default": "10",
        "order": 6,
    }


def main() -> None:
    device_opt = [
        "no_login",
        "no_password",
        "port",
        "vigil_url",
        "cluster",
        "token_file",
        "token",
        "cacert",
        "ssl_insecure",
        "apitimeout",
    ]
    atexit.register(atexit_handler)
    define_new_opts()
    all_opt["port"]["help"] = "-n, --plug=[name]              The member's name (its node name)"
    all_opt["port"]["shortdesc"] = "The member to fence: its node name"
    all_opt["power_timeout"]["default"] = "120"
    all_opt["power_wait"]["default"] = "1"
    options = check_input(device_opt, process_input(device_opt))
    docs = {
        "shortdesc": "Fence agent for in-guest clusters built by vigil (OpenStack HA)",
        "longdesc": "fence_vigil powers off a member of an in-guest cluster through vigil: "
        "a hard power-off through Nova while its hypervisor is up, and, when its "
        "hypervisor is dead, 'off' once vigil has fenced that host and confirmed it off "
        "(never before). Its token is good for its own cluster only.",
        "vendorurl": "https://opendev.org/openstack/nova",
    }
    show_docs(options, docs)
    run_delay(options)
    sys.exit(fence_action(Vigil(options), options, set_power_status, get_power_status, get_list))


if __name__ == "__main__":
    main()
