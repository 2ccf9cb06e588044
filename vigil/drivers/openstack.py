"""The compute driver production uses: Nova through openstacksdk.

Credentials come from ``clouds.yaml`` or ``OS_*`` variables, like every OpenStack tool
(``build_openstack_compute(cloud="mycloud")``). The driver speaks Nova's REST API through
the SDK's authenticated compute adapter with an explicit microversion on every call, so
what Nova answers does not change with the SDK's release.

Microversion: ``2.94`` (or the cloud's maximum when it is older, at least ``2.53``):

- ``2.53`` is the floor: services are addressed by UUID and ``PUT /os-services/{id}``
  takes ``forced_down``, ``status`` and ``disabled_reason``;
- ``2.47``/``2.71`` (below the pin) put the flavor's extra specs and the server groups
  into every server body, which saves a call per instance;
- ``2.95`` makes Nova leave every evacuated instance SHUTOFF. Pinned below it, Nova
  brings an evacuated instance back in the power state it had (ACTIVE stays ACTIVE,
  SHUTOFF stays SHUTOFF) in one operation: no extra start call per instance and no
  window in which a running VM is seen stopped. The engine still starts an instance
  that was ACTIVE and arrives SHUTOFF, so a cloud that forces 2.95 behaviour is covered.

HA policy of an instance (``Server.policy``/``priority``): the first of these that says
something, each read with ``ha_policy_from_metadata`` (vigil's keys ``vigil:ha_policy``
and ``vigil:ha_priority``, or Masakari's ``HA_Enabled``):

1. server metadata (the owner's own choice for this one instance),
2. image properties (the image's author: "this appliance must keep running"),
3. flavor extra specs (the operator's class of service),

policy and priority each taken from the first source that sets it; the guest watchdog
key ``vigil:watchdog_action`` (``Server.watchdog_action``) the same way. Image properties
are read from Glance and cached (``image_cache_ttl``); a deleted image counts as none.

Errors are translated here, at the boundary: connection failures, timeouts, 5xx and
429 → ``TemporaryError``; 409, Nova's ``ComputeServiceInUse`` (a 400 with that text) and
its refusal to un-force a host whose evacuations are not cleaned up yet → ``Conflict``;
404 → ``NotFound``; 401/403 and other 4xx → ``PermanentError``. Messages carry the method,
the path and Nova's own sentence, never a password or a token.

Building an in-guest cluster (``create_server_group``, ``create_server``, ``delete_server``,
``delete_server_group``): a server is booted on a port made beforehand (``networks:
[{"port": ...}]``, its address fixed before it exists; ``vigil.drivers.neutron`` makes
the port), in a server group (``os:scheduler_hints``: Nova's scheduler keeps
anti-affinity), with cloud-init's user data (base64, as Nova wants it). Image and flavor
are taken by id or by name (an id first; an image name through Glance). Nova does not
make the request idempotent: a retried ``create_server`` whose first answer was lost
boots a second server, which fails on the port already in use.

Not done here: locking instances during their recovery. Nova checks no lock on
evacuation and admins pass locks anyway, so a lock would only keep owners out, and a
crash of vigil between lock and unlock would leave them locked out. ``reset_state`` and
``migrations`` are there for operators' tooling; the engine uses neither yet.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import openstack
import openstack.connection
import openstack.exceptions

from vigil.drivers.compute import (
    CLUSTER_KEY,
    MASAKARI_KEY,
    POLICY_KEY,
    PRIORITY_KEY,
    WATCHDOG_ACTION_KEY,
    ComputeDriver,
    ComputeService,
    Server,
    app_keys_of,
    ha_policy_from_metadata,
    is_app_key,
)
from vigil.drivers.errors import (
    DriverError,
    NotFound,
    PermanentError,
    TemporaryError,
)
from vigil.drivers.sdk import LIBRARY_ERRORS, Boundary
from vigil.model import HaPolicy

LOG = logging.getLogger(__name__)

#: The microversion every call is pinned to (see the module docstring).
MICROVERSION = "2.94"
#: The oldest microversion the driver works with.
MIN_MICROVERSION = "2.53"
_POLICY_KEYS = (POLICY_KEY, PRIORITY_KEY, MASAKARI_KEY, WATCHDOG_ACTION_KEY)
# Nova answers these refusals with 400 although they pass once the host is fenced and
# forced down, or once the repaired host's nova-compute has cleaned up.
_CONFLICT_400 = (
    "is still in use",  # ComputeServiceInUse: evacuate while the source compute is up
    "evacuation migration records remain",  # un-force a host not cleaned up yet
)
_PAGE = 1000  # Nova's default [api] max_limit
_POLL_OVERLAP = 5.0  # seconds each poll listing reaches back before the previous one


def _nova_time(text: Any) -> float:
    """A Nova timestamp (UTC, ``2026-11-24T06:55:31Z`` or with microseconds and no zone)
    as seconds since the epoch; 0 for none."""
    if not text:
        return 0.0
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def resolve_policy(
    metadata: Mapping[str, Any],
    image_properties: Mapping[str, Any],
    flavor_extra_specs: Mapping[str, Any],
) -> tuple[HaPolicy | None, int]:
    """(policy, priority) from the first source that sets each: server metadata, then
    image properties, then flavor extra specs. Policy None: the segment default applies."""
    policy: HaPolicy | None = None
    priority: int | None = None
    for source in (metadata, image_properties, flavor_extra_specs):
        strings = {k: str(v) for k, v in source.items() if k in _POLICY_KEYS}
        found, prio = ha_policy_from_metadata(strings)
        if policy is None:
            policy = found
        if priority is None and _is_int(strings.get(PRIORITY_KEY)):
            priority = prio
    return policy, priority or 0


def resolve_watchdog_action(*sources: Mapping[str, Any]) -> str | None:
    """``vigil:watchdog_action`` from the first source that sets it, lower case."""
    for source in sources:
        value = source.get(WATCHDOG_ACTION_KEY)
        if value is not None and str(value).strip():
            return str(value).strip().lower()
    return None


def _is_int(value: str | None) -> bool:
    if value is None:
        return False
    try:
        int(value)
    except ValueError:
        return False
    return True


def _nova_message(response: Any) -> str:
    """Nova's own sentence from an error body ({"badRequest": {"message": ...}})."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for value in body.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
        if "message" in body:
            return str(body["message"])
    text = str(getattr(response, "text", "") or "").strip()
    return text[:200] or "no message"


class OpenStackCompute(ComputeDriver):
    """``ComputeDriver`` on a real Nova. ``conn`` is an ``openstack.connect()`` result.

    Thread-safe: the engine calls it from its step workers in parallel.
    """

    def __init__(
        self,
        conn: openstack.connection.Connection,
        *,
        image_cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        poll_refresh: float = 0.5,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._conn = conn
        self._cache_ttl = image_cache_ttl
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        # poll_server: the servers polled lately, as the last shared listing showed them.
        self._poll_refresh = poll_refresh
        self._poll_lock = threading.Lock()
        self._sleep = sleep
        # id -> (body, monotonic time last polled); body None: not seen yet, in the next listing
        self._polled: dict[str, tuple[Mapping[str, Any] | None, float]] = {}
        self._polled_at = float("-inf")  # monotonic time of the last listing
        self._listed_since: float | None = None  # wall time the last listing began
        self._unlisted_since: float | None = None  # first poll of a server not listed yet
        self._microversion: str | None = None
        self._images: dict[str, tuple[dict[str, Any], float]] = {}
        self._sdk = Boundary(conn, "compute")

    # ------------------------------------------------------------------ plumbing

    def microversion(self) -> str:
        """The microversion in use: MICROVERSION, or the cloud's maximum if lower."""
        with self._lock:
            if self._microversion is not None:
                return self._microversion
        try:
            response = self._conn.compute.get("/", microversion=None)
        except LIBRARY_ERRORS as exc:
            raise self._sdk.translate(exc, "GET / (Nova versions)") from None
        self._raise_for(response, "GET", "/ (Nova versions)")
        doc = response.json().get("version", {})
        top = str(doc.get("version") or "")
        if not top:
            raise PermanentError("Nova's version document has no microversion: legacy v2 API?")
        if _version(top) < _version(MIN_MICROVERSION):
            raise PermanentError(
                f"Nova's API goes up to microversion {top}; vigil needs {MIN_MICROVERSION}"
                " (Pike) or later"
            )
        chosen = MICROVERSION if _version(top) >= _version(MICROVERSION) else top
        with self._lock:
            self._microversion = chosen
        LOG.info("Nova API microversions up to %s; vigil uses %s", top, chosen)
        return chosen

    def _raise_for(self, response: Any, method: str, path: str) -> None:
        status = int(response.status_code)
        if status >= 400:
            message = _nova_message(response)
            self._sdk.raise_for(
                status,
                f"Nova {method} {path}",
                message,
                conflict=status == 400 and any(s in message for s in _CONFLICT_400),
                forbidden=" (vigil's account needs the admin role)",
            )

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One Nova API call at the pinned microversion; the JSON answer or None."""
        microversion = self.microversion()
        try:
            response = self._conn.compute.request(
                path, method, json=body, microversion=microversion
            )
        except LIBRARY_ERRORS as exc:
            raise self._sdk.translate(exc, f"Nova {method} {path}") from None
        self._raise_for(response, method, path)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    # ------------------------------------------------------------------ start-up

    def check(self) -> str:
        """Authenticate, pick the microversion and list the compute services once.

        For the server's start-up: wrong credentials or a Nova too old raise
        PermanentError (a configuration to fix, not something to retry); Keystone or
        Nova unreachable raises TemporaryError. Returns a one-line summary.
        """
        version = self.microversion()
        services = self.list_services()
        return f"Nova API at microversion {version}, {len(services)} compute services"

    # ------------------------------------------------------------------ services

    def _service_dicts(self, host: str | None = None) -> list[dict[str, Any]]:
        query = {"binary": "nova-compute", **({"host": host} if host else {})}
        body = self._call("GET", "/os-services?" + urlencode(query))
        services = list(body.get("services", []))
        if host is not None:
            services = [s for s in services if s.get("host") == host]
        return services

    def _service_dict(self, host: str) -> dict[str, Any]:
        services = self._service_dicts(host)
        if not services:
            raise NotFound(f"Nova has no nova-compute service on host {host}")
        return services[0]

    @staticmethod
    def _service(data: Mapping[str, Any]) -> ComputeService:
        return ComputeService(
            host=str(data["host"]),
            up=data.get("state") == "up",
            forced_down=bool(data.get("forced_down")),
            disabled=data.get("status") == "disabled",
            disabled_reason=str(data.get("disabled_reason") or ""),
        )

    def list_services(self) -> list[ComputeService]:
        return [self._service(s) for s in self._service_dicts()]

    def get_service(self, host: str) -> ComputeService:
        return self._service(self._service_dict(host))

    def _update_service(self, host: str, body: dict[str, Any]) -> None:
        service = self._service_dict(host)
        self._call("PUT", f"/os-services/{service['id']}", body)

    def set_forced_down(self, host: str, forced_down: bool) -> None:
        # Un-forcing is refused (Conflict) until the repaired host's restarted
        # nova-compute has destroyed its copies of the evacuated instances.
        self._update_service(host, {"forced_down": forced_down})

    def disable(self, host: str, reason: str) -> None:
        self._update_service(host, {"status": "disabled", "disabled_reason": reason[:255]})

    def enable(self, host: str) -> None:
        self._update_service(host, {"status": "enabled"})

    # ------------------------------------------------------------------ servers

    def list_servers(self, host: str) -> list[Server]:
        self._service_dict(host)  # NotFound for a misspelt host, not "nothing there"
        servers: list[Server] = []
        marker: str | None = None
        while True:
            query: dict[str, Any] = {"all_tenants": 1, "host": host, "limit": _PAGE}
            if marker:
                query["marker"] = marker
            page = self._call("GET", "/servers/detail?" + urlencode(query)).get("servers", [])
            # Nova's host filter is exact, but be sure: a listing drives evacuations.
            servers.extend(self._server(s) for s in page if s.get("OS-EXT-SRV-ATTR:host") == host)
            if len(page) < _PAGE:
                return servers
            marker = str(page[-1]["id"])

    def get_server(self, server_id: str) -> Server:
        return self._server(self._call("GET", f"/servers/{server_id}")["server"])

    def poll_server(self, server_id: str) -> Server:
        """Confirmation polls share one listing: ``GET /servers/detail?changes-since=…``,
        at most every ``poll_refresh`` seconds whoever asks, gives every server changed
        lately; a server not in it has not changed and its last known body stands. A
        server polled for the first time joins the next listing (waiting for it at most
        ``poll_refresh``), reaching back before it was first asked for: it was just
        evacuated, so it is in it. Fifty evacuations each polling its instance would cost
        Nova fifty reads per round, and one read each to begin; this costs it one.

        Nova stamps ``updated_at`` in whole seconds, and clocks differ a little: each
        listing reaches back ``_POLL_OVERLAP`` seconds before the previous one began (or
        the first poll of a server it is the first to cover)."""
        while True:
            with self._poll_lock:  # one listing at a time; the others wait and share it
                now = self._clock()
                entry = self._polled.get(server_id)
                if entry is None:
                    self._polled[server_id] = entry = (None, now)
                    first = self._wall()
                    if self._unlisted_since is None or first < self._unlisted_since:
                        self._unlisted_since = first
                due = self._polled_at + self._poll_refresh
                if now >= due:
                    self._list_changed(now)
                    entry = self._polled.get(server_id, entry)
                if entry[0] is not None or now >= due:
                    break
            self._sleep(due - now)
        body = entry[0]
        if body is None:  # not in a listing meant to hold it: read it on its own
            body = self._call("GET", f"/servers/{server_id}")["server"]
        with self._poll_lock:
            self._polled[server_id] = (body, self._clock())
        return self._server(body)

    def _list_changed(self, now: float) -> None:
        """Refresh ``_polled`` from Nova (the caller holds ``_poll_lock``)."""
        started = self._wall()
        # Forget the servers nobody polled for a minute (their evacuations are done).
        self._polled = {k: v for k, v in self._polled.items() if now - v[1] < 60.0}
        # From the previous listing (unless it is a minute old: a new round of polls) or
        # from the first poll of a server not listed yet, whichever is earlier.
        reach = [t for t in (self._unlisted_since, self._listed_since) if t is not None]
        if now - self._polled_at > 60.0 and self._unlisted_since is not None:
            reach = [self._unlisted_since]
        since = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(reach, default=started) - _POLL_OVERLAP)
        )
        marker: str | None = None
        while True:
            query: dict[str, Any] = {"all_tenants": 1, "changes-since": since, "limit": _PAGE}
            if marker:
                query["marker"] = marker
            page = self._call("GET", "/servers/detail?" + urlencode(query)).get("servers", [])
            for data in page:
                sid = str(data["id"])
                if sid in self._polled:
                    self._polled[sid] = (data, self._polled[sid][1])
            if len(page) < _PAGE:
                break
            marker = str(page[-1]["id"])
        self._listed_since, self._polled_at, self._unlisted_since = started, now, None

    def _server(self, data: Mapping[str, Any]) -> Server:
        metadata = data.get("metadata") or {}
        flavor = data.get("flavor")
        # Embedded in the server from 2.47 (admins see the extra specs).
        extra_specs = (flavor.get("extra_specs") or {}) if isinstance(flavor, dict) else {}
        image_properties: Mapping[str, Any] = {}
        # Read (cached) for every server: the image may declare application checks even
        # when the metadata sets every policy key.
        image = data.get("image")
        if isinstance(image, dict) and image.get("id"):  # "" when booted from a volume
            image_properties = self._image_properties(str(image["id"]))
        policy, priority = resolve_policy(metadata, image_properties, extra_specs)
        watchdog = resolve_watchdog_action(metadata, image_properties, extra_specs)
        fault = data.get("fault")  # only ERROR (and DELETED) servers carry one
        message = str(fault.get("message") or "") if isinstance(fault, dict) else ""
        groups = data.get("server_groups") or []  # from 2.71
        return Server(
            id=str(data["id"]),
            name=str(data.get("name") or ""),
            host=data.get("OS-EXT-SRV-ATTR:host") or None,
            status=str(data.get("status") or ""),
            policy=policy,
            priority=priority,
            task_state=data.get("OS-EXT-STS:task_state") or None,
            server_group=str(groups[0]) if groups else None,
            fault=message or None,
            watchdog_action=watchdog,
            power_state=_int_or_none(data.get("OS-EXT-STS:power_state")),
            app_keys=app_keys_of(metadata, image_properties, extra_specs),
            project_id=data.get("tenant_id") or data.get("project_id") or None,
            cluster=str(metadata[CLUSTER_KEY]) if metadata.get(CLUSTER_KEY) else None,
        )

    def _image_properties(self, image_id: str) -> Mapping[str, Any]:
        """vigil's keys among the image's properties, cached; {} for a deleted image."""
        now = self._clock()
        with self._lock:
            cached = self._images.get(image_id)
        if cached is not None and now - cached[1] < self._cache_ttl:
            return cached[0]
        try:
            response = self._conn.image.get(f"/images/{image_id}")
            if response.status_code == 404:
                props: dict[str, Any] = {}
            else:
                self._raise_for(response, "GET", f"/images/{image_id} (Glance)")
                body = response.json()
                props = {k: v for k, v in body.items() if k in _POLICY_KEYS or is_app_key(k)}
        except LIBRARY_ERRORS as exc:
            error: DriverError = self._sdk.translate(exc, f"Glance GET /images/{image_id}")
        except DriverError as exc:
            error = exc
        else:
            with self._lock:
                self._images[image_id] = (props, now)
            return props
        if cached is not None:  # a stale answer beats no answer while Glance is away
            LOG.warning("image %s: %s; using properties read earlier", image_id, error)
            return cached[0]
        raise error

    # ------------------------------------------------------------------ actions

    def _action(self, server_id: str, body: dict[str, Any]) -> None:
        self._call("POST", f"/servers/{server_id}/action", body)

    def evacuate(self, server_id: str, target_host: str | None = None) -> None:
        # No "force": a named target still goes through the scheduler's filters, so a
        # server group's anti-affinity is checked before Nova accepts.
        args: dict[str, Any] = {"host": target_host} if target_host else {}
        self._action(server_id, {"evacuate": args})

    def start(self, server_id: str) -> None:
        self._action(server_id, {"os-start": None})

    def stop(self, server_id: str) -> None:
        self._action(server_id, {"os-stop": None})

    def reboot(self, server_id: str, hard: bool = True) -> None:
        self._action(server_id, {"reboot": {"type": "HARD" if hard else "SOFT"}})

    def rebuild(self, server_id: str) -> None:
        """Rebuild from the image the server was booted from (a server booted from a
        volume has none: PermanentError)."""
        image = self._call("GET", f"/servers/{server_id}")["server"].get("image")
        if not isinstance(image, dict) or not image.get("id"):
            raise PermanentError(f"server {server_id} was booted from a volume: no image")
        self._action(server_id, {"rebuild": {"imageRef": str(image["id"])}})

    def evacuation_started(self, server_id: str) -> bool | None:
        """Nova's own records say. The API saves the instance as rebuilding, records an
        instance action ``evacuate``, then casts to a conductor, whose first act is to add
        an event to that action (``conductor_rebuild_server``). The latest evacuate action
        without an event (or none since the instance was saved) although a nova-conductor
        reported alive after the request was accepted: the request never reached the
        queue, since a live conductor takes a queued one at once. No conductor alive since
        then: the request may wait in the queue for one: None, cannot tell. (An API that
        died between saving the instance and recording the action, for an instance
        evacuated once before, shows the older action's events: True, and the evacuation
        times out instead of being re-issued.)"""
        server = self._call("GET", f"/servers/{server_id}")["server"]
        if server.get("OS-EXT-STS:task_state") != "rebuilding":
            return True  # moved on (or never was): nothing lost to re-issue
        accepted = _nova_time(server.get("updated"))
        body = self._call("GET", f"/servers/{server_id}/os-instance-actions")
        actions = [a for a in body.get("instanceActions", []) if a.get("action") == "evacuate"]
        if actions:
            latest = max(actions, key=lambda a: _nova_time(a.get("start_time")))
            path = f"/servers/{server_id}/os-instance-actions/{latest['request_id']}"
            if self._call("GET", path)["instanceAction"].get("events"):
                return True
            accepted = max(accepted, _nova_time(latest.get("start_time")))
        body = self._call("GET", "/os-services?" + urlencode({"binary": "nova-conductor"}))
        alive_since = [
            _nova_time(c.get("updated_at"))
            for c in body.get("services", [])
            if c.get("state") == "up"
        ]
        # Nova stamps whole seconds: a report in the same second may precede the request.
        if any(t > accepted + 1.0 for t in alive_since):
            return False
        return None

    def reset_state(self, server_id: str, state: str = "error") -> None:
        """Nova's reset-state (``error`` or ``active``), for an instance whose task Nova
        will never finish (its host died mid-operation) and which it then refuses to
        evacuate. An operator's tool: resetting to ``active`` hides real damage."""
        self._action(server_id, {"os-resetState": {"state": state}})

    def migrations(self, server_id: str) -> list[dict[str, Any]]:
        """Nova's migration records of an instance (evacuations included), oldest first."""
        body = self._call("GET", "/os-migrations?" + urlencode({"instance_uuid": server_id}))
        return sorted(body.get("migrations", []), key=lambda m: int(m.get("id", 0)))

    # ------------------------------------------------------------------ building

    def create_server_group(self, name: str, policy: str = "anti-affinity") -> str:
        if _version(self.microversion()) >= (2, 64):
            group: dict[str, Any] = {"name": name, "policy": policy}
        else:  # a cloud older than the pin: the list form of before 2.64
            group = {"name": name, "policies": [policy]}
        body = self._call("POST", "/os-server-groups", {"server_group": group})
        return str(body["server_group"]["id"])

    def delete_server_group(self, group_id: str) -> None:
        self._call("DELETE", f"/os-server-groups/{quote(group_id, safe='')}")

    def server_group_members(self, group_id: str) -> list[str]:
        body = self._call("GET", f"/os-server-groups/{quote(group_id, safe='')}")
        return [str(m) for m in body["server_group"].get("members") or []]

    def create_server(
        self,
        *,
        name: str,
        image: str,
        flavor: str,
        port_id: str,
        user_data: str,
        server_group: str,
        metadata: Mapping[str, str],
    ) -> str:
        """``image`` and ``flavor`` by id or by name (an id is tried first)."""
        server: dict[str, Any] = {
            "name": name,
            "imageRef": self._image_id(image),
            "flavorRef": self._flavor_id(flavor),
            "networks": [{"port": port_id}],
            "metadata": dict(metadata),
        }
        if user_data:
            server["user_data"] = base64.b64encode(user_data.encode()).decode("ascii")
        body: dict[str, Any] = {"server": server}
        if server_group:
            body["os:scheduler_hints"] = {"group": server_group}
        return str(self._call("POST", "/servers", body)["server"]["id"])

    def delete_server(self, server_id: str) -> None:
        self._call("DELETE", f"/servers/{quote(server_id, safe='')}")

    def _flavor_id(self, flavor: str) -> str:
        try:
            found = self._call("GET", f"/flavors/{quote(flavor, safe='')}")["flavor"]
            return str(found["id"])
        except NotFound:
            pass
        flavors = self._call("GET", "/flavors?" + urlencode({"is_public": "none"}))["flavors"]
        match = [f for f in flavors if f.get("name") == flavor]
        if not match:
            raise NotFound(f"Nova has no flavor {flavor!r} (by id or name)")
        return str(match[0]["id"])

    def _glance(self, path: str) -> Any:
        try:
            response = self._conn.image.get(path)
        except LIBRARY_ERRORS as exc:
            raise self._sdk.translate(exc, f"Glance GET {path}") from None
        if response.status_code == 404:
            raise NotFound(f"Glance GET {path}: {self._sdk.scrub(_nova_message(response))}")
        self._raise_for(response, "GET", f"{path} (Glance)")
        return response.json()

    def _image_id(self, image: str) -> str:
        if _is_uuid(image):
            try:
                return str(self._glance(f"/images/{image}")["id"])
            except NotFound:
                pass
        images = self._glance("/images?" + urlencode({"name": image}))["images"]
        match = [i for i in images if i.get("name") == image]
        if not match:
            raise NotFound(f"Glance has no image {image!r} (by id or name)")
        if len(match) > 1:
            raise PermanentError(f"{len(match)} images are named {image!r}: name it by id")
        return str(match[0]["id"])


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def discover_hosts(
    conn: openstack.connection.Connection | OpenStackCompute,
    aggregate: str | None = None,
    availability_zone: str | None = None,
) -> list[str]:
    """The compute hosts of an aggregate and/or an availability zone (all when neither),
    sorted: what fills a segment. NotFound for an unknown aggregate or zone."""
    compute = conn if isinstance(conn, OpenStackCompute) else OpenStackCompute(conn)
    hosts = {s.host for s in compute.list_services()}
    if aggregate is not None:
        aggregates = compute._call("GET", "/os-aggregates").get("aggregates", [])
        match = [a for a in aggregates if aggregate in (a.get("name"), str(a.get("id")))]
        if not match:
            raise NotFound(f"Nova has no host aggregate {aggregate}")
        hosts &= set(_strings(match[0].get("hosts")))
    if availability_zone is not None:
        zones = compute._call("GET", "/os-availability-zone/detail").get("availabilityZoneInfo", [])
        zone = [z for z in zones if z.get("zoneName") == availability_zone]
        if not zone:
            raise NotFound(f"Nova has no availability zone {availability_zone}")
        zone_hosts = zone[0].get("hosts") or {}
        hosts &= {h for h, services in zone_hosts.items() if "nova-compute" in (services or {})}
    return sorted(hosts)


def _strings(values: Iterable[Any] | None) -> list[str]:
    return [str(v) for v in values or []]


def build_openstack_compute(
    cloud: str | None = None,
    *,
    timeout: float = 60.0,
    check: bool = True,
) -> OpenStackCompute:
    """Connect to the cloud named ``cloud`` in clouds.yaml (or the ``OS_*`` variables when
    None) and check the credentials once.

    Raises PermanentError with a sentence to act on when the cloud is unknown, the
    credentials are refused or Nova is too old: the server should refuse to start (exit,
    no restart loop). A cloud merely unreachable now is logged and not fatal: the engine
    retries every call.
    """
    try:
        # Retries are the engine's business (with backoff, after reading where an instance
        # is): the library must not resend a request on its own.
        conn = openstack.connect(
            cloud=cloud, api_timeout=timeout, connect_retries=0, status_code_retries=0
        )
    except LIBRARY_ERRORS as exc:
        name = cloud or "from OS_* variables"
        raise PermanentError(f"OpenStack cloud {name}: {type(exc).__name__}: {exc}") from None
    compute = OpenStackCompute(conn)
    if check:
        try:
            LOG.info("OpenStack cloud %s: %s", cloud or "(OS_* variables)", compute.check())
        except TemporaryError as exc:
            LOG.warning("OpenStack cloud not reachable at start-up (will retry): %s", exc)
    return compute


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
