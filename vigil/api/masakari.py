"""Masakari's instance-ha v1 API, served by vigil so that Masakari's monitors, the SDK's
``instance_ha`` proxy and ``openstack segment … / notification …`` keep working.

``masakari_app(...)`` is a FastAPI application to mount under vigil's server (at
``/instance-ha``: the catalog endpoint is then ``http://vigil:port/instance-ha/v1`` or
``…/v1/<project_id>``; every route answers with and without the project id).

What maps onto what (``doc/masakari-compatibility.md`` has the whole table):

- a Masakari segment is a vigil segment; a host is a vigil host. Masakari's own fields
  (uuids, recovery method, service type, ``enabled``, host type and control attributes)
  live in ``vigil.store.masakari``. ``on_maintenance`` and ``reserved`` are vigil's.
- a COMPUTE_HOST ``STOPPED`` notification is one corroborating signal for vigil's engine
  (``Engine.report_down``): the host becomes suspect, its BMC is read, and the recovery
  that follows fences before it evacuates. The notification's status follows that
  recovery; its vmoves are the recovery's evacuations.
- VM and PROCESS notifications are recorded (and listed) but vigil does not act on them:
  its own agent watches instances; they are ``ignored`` with a message saying so. The
  exception is a VM ``QEMU_GUEST_AGENT_ERROR`` (the introspective monitor) about an
  instance with application checks: a failing check of it (``AppHealth``), ``finished``.

The API records and wakes the engine; it never fences or evacuates itself. Like
Masakari, every route is for the admin: the same token as vigil's API, sent as
``X-Auth-Token`` (what keystoneauth sends) or as a bearer token.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from vigil.api import masakari_openapi as doc
from vigil.api import policies
from vigil.api.auth import Authority, Caller, log_refusal
from vigil.clock import Clock
from vigil.config import RecoverySettings
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.errors import Conflict, DriverError, NotFound
from vigil.engine.app_engine import AppHealth
from vigil.engine.engine import Engine
from vigil.engine.flow import MASAKARI_TASKS
from vigil.model import (
    HaPolicy,
    Host,
    HostState,
    InvalidTransition,
    Recovery,
    RecoveryStatus,
    Segment,
    Step,
    StepKind,
    StepStatus,
)
from vigil.store import AlreadyExists, InUse, NotFoundError, Store
from vigil.store.masakari import HostExtra, MasakariRecords, Notification, SegmentExtra

LOG = logging.getLogger("vigil.api.masakari")

MIN_VERSION = (1, 0)
MAX_VERSION = (1, 3)  # 1.1 recovery workflow details, 1.2 segment enabled, 1.3 vmoves
VERSION_HEADER = "OpenStack-API-Version"
SERVICE = "instance-ha"
MAX_LIMIT = 1000
# Masakari's duplicate_notification_detection_interval default.
DUPLICATE_INTERVAL = 180.0
# A report about a host whose vigil heartbeats go on is contradicted after this long.
REPORT_GRACE = 10.0

RECOVERY_METHODS = ("auto", "reserved_host", "auto_priority", "rh_priority")
NOTIFICATION_TYPES = ("COMPUTE_HOST", "VM", "PROCESS")
EVENTS = ("STARTED", "STOPPED")
TRUE = {"true", "1", "on", "yes"}
FALSE = {"false", "0", "off", "no"}
# The version documents (keystoneauth reads them for discovery) and the API's description.
PUBLIC = ("", "/", "/v1", "/v1/", "/openapi.json")
HOSTNAME = re.compile(r"^[a-zA-Z0-9-._]*$")
HOST_TYPE = re.compile(r"^[a-zA-Z0-9]*$")
PAYLOAD_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
ERROR_KEYS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    503: "serviceUnavailable",
}
# vigil's recovery and step states as Masakari's notification, task and vmove states.
NOTIFICATION_STATUS = {
    RecoveryStatus.PENDING: "new",
    RecoveryStatus.RUNNING: "running",
    RecoveryStatus.PAUSED: "running",
    RecoveryStatus.SUCCEEDED: "finished",
    # Masakari's "error" is one its engine retries by itself, and it holds the host and
    # segment (409 on update and delete); "failed" is the end. vigil retries a failed
    # recovery only when an operator asks (the notification then follows it again), so a
    # failed recovery is Masakari's end: the client can then change or delete the host.
    RecoveryStatus.FAILED: "failed",
    RecoveryStatus.WITHDRAWN: "ignored",  # the host came back before anything acted
}
# Masakari's version document links its API reference (Masakari's versions.py).
DESCRIBEDBY = {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"}
MEDIA_TYPES = [
    {"base": "application/json", "type": "application/vnd.openstack.masakari+json;version=1"}
]
TASK_STATE = {
    StepStatus.PENDING: "PENDING",
    StepStatus.RUNNING: "RUNNING",
    StepStatus.SUCCEEDED: "SUCCESS",
    StepStatus.FAILED: "FAILURE",
    StepStatus.SKIPPED: "SUCCESS",
}
VMOVE_STATUS = {
    StepStatus.PENDING: "pending",
    StepStatus.RUNNING: "ongoing",
    StepStatus.SUCCEEDED: "succeeded",
    StepStatus.FAILED: "failed",
    StepStatus.SKIPPED: "ignored",
}
TASKS = MASAKARI_TASKS  # FenceHostTask is vigil's: Masakari does not fence
_VMOVE_NS = uuid.UUID("6f0b7a36-1c7e-4f5c-9d55-6a0c2f1e9b11")

Handler = Callable[[Request, Any], Response]


class ApiError(Exception):
    """A refusal, answered in Masakari's fault format: {"itemNotFound": {...}}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- small pure helpers ---------------------------------------------------------------


def parse_version(header: str | None) -> tuple[int, int]:
    """The requested microversion: none means 1.0, ``latest`` the newest. 400 for a
    malformed one, 406 for one out of range (Masakari's answers)."""
    if not header:
        return MIN_VERSION
    for part in header.split(","):
        service, _, value = part.strip().partition(" ")
        if service.lower() != SERVICE:
            continue
        value = value.strip()
        if value == "latest":
            return MAX_VERSION
        match = re.fullmatch(r"([1-9]\d*)\.(0|[1-9]\d*)", value)
        if not match:
            raise ApiError(400, f"API Version String {value} is of invalid format.")
        version = (int(match.group(1)), int(match.group(2)))
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise ApiError(
                406,
                f"Version {value} is not supported by the API. Minimum is "
                f"{_v(MIN_VERSION)} and maximum is {_v(MAX_VERSION)}.",
            )
        return version
    return MIN_VERSION


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def timestamp(epoch: float | None) -> str | None:
    """Masakari's time format: naive UTC with microseconds."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def parse_time(value: str, what: str) -> float:
    """ISO 8601; a time without a zone is UTC (what the monitors send)."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"Invalid input for field/attribute {what}.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        # A time whose UTC falls outside years 1-9999 (9999-12-31T23:00-05:00) could not
        # be shown again (Masakari's naive UTC format): refused now, not a 500 later.
        datetime.fromtimestamp(parsed.timestamp(), UTC)
    except (ValueError, OverflowError):
        raise ApiError(400, f"Invalid input for field/attribute {what}.") from None
    return parsed.timestamp()


def boolean(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    raise ApiError(400, f"Invalid input for field/attribute {what}. Value: {value}.")


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or value != value.strip():
        raise ApiError(
            400,
            f"Invalid input for field/attribute {what}: a name is 1 to 255 characters "
            "with no leading or trailing whitespace.",
        )
    return value


def _text(value: Any, what: str, pattern: re.Pattern[str] | None = None) -> str:
    """An optional string (null is empty); with ``pattern``, at most 255 characters."""
    if value is None:
        return ""
    if not isinstance(value, str) or (pattern is not None and len(value) > 255):
        raise ApiError(400, f"Invalid input for field/attribute {what}.")
    if pattern is not None and not pattern.match(value):
        raise ApiError(400, f"Invalid input for field/attribute {what}. Value: {value}.")
    return value


def _member(body: Any, key: str, allowed: Iterable[str]) -> dict[str, Any]:
    """``{"segment": {...}}`` with nothing else, and only the allowed fields inside."""
    if not isinstance(body, dict) or set(body) != {key} or not isinstance(body[key], dict):
        raise ApiError(400, f"Invalid input: the body must be {{'{key}': {{...}}}}.")
    inner: dict[str, Any] = body[key]
    unknown = sorted(set(inner) - set(allowed))
    if unknown:
        raise ApiError(
            400, f"Additional properties are not allowed ({', '.join(unknown)} unexpected)."
        )
    return inner


def _require(fields: Mapping[str, Any], names: Iterable[str]) -> None:
    for name in names:
        if name not in fields:
            raise ApiError(400, f"'{name}' is a required property")


def page(
    items: list[dict[str, Any]],
    params: Any,
    *,
    sort_keys: Iterable[str],
    marker_key: str = "uuid",
) -> list[dict[str, Any]]:
    """Sort (``sort_key``/``sort_dir``, repeatable; default newest first), then the page
    after ``marker`` of at most ``limit`` items (Masakari's rules: 1000 at most; 0 or
    none means the most; a negative or non-integer limit and an unknown marker are 400)."""
    keys = [k.strip() for k in params.getlist("sort_key")] or ["created_at"]
    dirs = [d.strip() for d in params.getlist("sort_dir")] or ["desc"]
    for key in keys:
        if key not in sort_keys:
            raise ApiError(400, f"Invalid sort_key {key}")
    for direction in dirs:
        if direction not in ("asc", "desc"):
            raise ApiError(400, f"Invalid sort_dir {direction}: asc or desc")
    dirs += [dirs[-1]] * (len(keys) - len(dirs))
    ordered = sorted(items, key=lambda i: i.get("id") or 0, reverse=dirs[0] == "desc")
    for key, direction in reversed(list(zip(keys, dirs, strict=False))):
        ordered.sort(key=_by(key), reverse=direction == "desc")
    limit = MAX_LIMIT
    if "limit" in params:
        try:
            limit = int(params["limit"])
        except ValueError:
            raise ApiError(400, "limit param must be an integer") from None
        if limit < 0:
            raise ApiError(400, "limit param must be positive")
        limit = min(limit or MAX_LIMIT, MAX_LIMIT)
    if "marker" in params:
        marker = params["marker"]
        # The uuid, as Masakari wants; or the integer id, which is what openstacksdk's
        # pager sends (its resources' id is Masakari's "id" field).
        index = next(
            (n for n, i in enumerate(ordered) if marker in (i.get(marker_key), str(i.get("id")))),
            None,
        )
        if index is None:
            raise ApiError(400, f"Marker {marker} could not be found.")
        ordered = ordered[index + 1 :]
    return ordered[:limit]


def _by(key: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    """A sort key on a field: Nones first (ascending), never compared with a value."""

    def sortable(item: dict[str, Any]) -> tuple[bool, Any]:
        value = item.get(key)
        return (value is not None, value if value is not None else 0)

    return sortable


def _filter(items: list[dict[str, Any]], field: str, wanted: Any) -> list[dict[str, Any]]:
    return [i for i in items if i.get(field) == wanted]


def workflow_details(recovery: Recovery) -> list[dict[str, Any]]:
    """A vigil recovery as Masakari's recovery workflow details (microversion 1.1)."""
    details: list[dict[str, Any]] = []
    for name, kinds in TASKS:
        steps = [s for s in recovery.steps if s.kind in kinds]
        if not steps:
            continue
        done = [s for s in steps if s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)]
        if any(s.status == StepStatus.FAILED for s in steps):
            state = "FAILURE"
        elif len(done) == len(steps):
            state = "SUCCESS"
        elif any(s.status == StepStatus.RUNNING or s.started_at for s in steps):
            state = "RUNNING"
        else:
            state = TASK_STATE[steps[0].status]
        details.append(
            {
                "name": name,
                "state": state,
                "progress": round(len(done) / len(steps), 2),
                "progress_details": [
                    {
                        "timestamp": timestamp(
                            s.finished_at or s.started_at or recovery.created_at
                        ),
                        "progress": 1.0 if s in done else 0.0,
                        "message": s.detail or f"{s.kind.value} {s.status.value}",
                    }
                    for s in steps
                ],
            }
        )
    return details


def vmove_view(notification: Notification, recovery: Recovery, step: Step) -> dict[str, Any]:
    """An evacuation step of the recovery as Masakari's vmove (microversion 1.3)."""
    dest = step.result.get("to") if step.status == StepStatus.SUCCEEDED else step.target_host
    return {
        "id": step.id,
        "uuid": str(uuid.uuid5(_VMOVE_NS, f"{notification.uuid}/{step.id}")),
        "notification_uuid": notification.uuid,
        "instance_uuid": step.instance_id,
        "instance_name": step.instance_name,
        "source_host": recovery.host,
        "dest_host": dest,
        "start_time": timestamp(step.started_at),
        "end_time": timestamp(step.finished_at),
        "type": "evacuation",
        "status": VMOVE_STATUS[step.status],
        "message": step.detail or None,
        "created_at": timestamp(step.started_at or recovery.created_at),
        "updated_at": timestamp(step.finished_at),
        "deleted": False,
        "deleted_at": None,
    }


# --- the application --------------------------------------------------------------------


def masakari_app(
    *,
    store: Store,
    engine: Engine,
    compute: ComputeDriver,
    token: str,
    clock: Clock,
    records: MasakariRecords,
    defaults: RecoverySettings | None = None,
    duplicate_interval: float = DUPLICATE_INTERVAL,
    apps: AppHealth | None = None,
    authority: Authority | None = None,
) -> FastAPI:
    """Masakari's API on vigil's store and engine; mount it at ``/instance-ha``.
    ``apps``: a ``VM`` notification ``QEMU_GUEST_AGENT_ERROR`` becomes a failing
    application check of its instance. ``authority``: who may call what, under
    Masakari's rule names (``vigil.api.policies``); None: the one ``token``, an admin's."""
    api = _MasakariApi(
        apps=apps,
        authority=authority,
        store=store,
        engine=engine,
        compute=compute,
        token=token,
        clock=clock,
        records=records,
        defaults=defaults,
        duplicate_interval=duplicate_interval,
    )
    return api.app


class _MasakariApi:
    """Masakari's API on vigil's store and engine: the handlers, the helpers they share
    and, in ``_register``, the routes that reach them."""

    def __init__(
        self,
        *,
        store: Store,
        engine: Engine,
        compute: ComputeDriver,
        token: str,
        clock: Clock,
        authority: Authority | None = None,
        records: MasakariRecords,
        defaults: RecoverySettings | None = None,
        duplicate_interval: float = DUPLICATE_INTERVAL,
        apps: AppHealth | None = None,
    ) -> None:
        self.apps = apps
        self.store = store
        self.engine = engine
        self.compute = compute
        self.authority = authority or Authority.static(token)
        self.clock = clock
        self.records = records
        self.defaults = defaults
        self.duplicate_interval = duplicate_interval
        self.app = FastAPI(
            title="vigil: Masakari instance-ha v1",
            description="Masakari's API for its monitors, SDK and CLI; vigil's rules apply.",
            openapi_url="/openapi.json",  # described by masakari_openapi (why: there)
            docs_url=None,
            redoc_url=None,
        )
        self._register()

    # --- plumbing: microversions, auth, faults ------------------------------------------
    def version_of(self, request: Request) -> tuple[int, int]:
        version: tuple[int, int] = request.state.version
        return version

    async def microversion_and_auth(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            request.state.version = parse_version(request.headers.get(VERSION_HEADER))
        except ApiError as exc:
            return _fault(exc, MAX_VERSION)
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path not in PUBLIC:
            # Keystone may be asked (its answers are cached): not on the event loop.
            caller = await run_in_threadpool(self.authority.caller, request.headers)
            request.state.caller = caller
            if caller is None:
                client = request.client.host if request.client else "?"
                given = "x-auth-token" in request.headers or "authorization" in request.headers
                LOG.warning(
                    "Masakari API %s %s from %s refused: %s",
                    request.method,
                    request.url.path,
                    client,
                    "invalid token" if given else "no token",
                )
                return _fault(
                    ApiError(401, "The request you have made requires authentication."),
                    request.state.version,
                )
        response = await call_next(request)
        _version_headers(response, request.state.version)
        return response

    async def on_api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _fault(exc, getattr(request.state, "version", MIN_VERSION))

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = "The resource could not be found." if exc.status_code == 404 else exc.detail
        response = _fault(
            ApiError(exc.status_code, str(message)),
            getattr(request.state, "version", MIN_VERSION),
        )
        if exc.status_code == 405:
            # Starlette names only the first route of the path; a client wants them all.
            response.headers["Allow"] = ", ".join(
                sorted(
                    {
                        m
                        for r in self.app.routes
                        if isinstance(r, APIRoute) and r.matches(request.scope)[0] != Match.NONE
                        for m in r.methods or ()
                    }
                )
            )
        return response

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        status: int = 200,
        *,
        answer: doc.Schema | None,
        body: doc.Schema | None = None,
        params: list[doc.Schema] | None = None,
        refusals: tuple[int, ...] = (),
        links: dict[str, tuple[str, dict[str, str]]] | None = None,
    ) -> None:
        """``path`` under /v1, with and without the project id. The handler runs on a
        worker thread: the store and the engine block. ``answer``, ``body``, ``params``,
        ``refusals`` and ``links`` describe it in the OpenAPI document (operation id: the
        handler's name; ``…_in_project`` with the project id)."""

        rule = policies.masakari_rule(handler.__name__)

        async def endpoint(request: Request) -> Response:
            self.authorize(request, rule)
            body = await self.body_of(request) if method in ("POST", "PUT") else None
            return await run_in_threadpool(handler, request, body)

        for prefix in ("/v1", "/v1/{project_id}"):
            responses, extra = doc.operation(
                status,
                answer=answer,
                body=body,
                params=params,
                refusals=refusals,
                path=prefix + path,
                links=links if prefix == "/v1" else None,
            )
            self.app.add_api_route(
                prefix + path,
                endpoint,
                methods=[method],
                status_code=status,
                response_model=None,
                responses=responses,
                openapi_extra=extra,
                operation_id=handler.__name__ + ("" if prefix == "/v1" else "_in_project"),
            )

    def authorize(self, request: Request, rule: str | None) -> None:
        """Refuse (403, as Masakari words it) a caller the rule does not allow."""
        caller: Caller = request.state.caller
        if rule is not None and self.authority.allows(rule, caller):
            return
        log_refusal("Masakari API", request, caller, rule)
        raise ApiError(403, f"Policy doesn't allow {rule or 'this route'} to be performed.")

    async def body_of(self, request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise ApiError(400, "Malformed request body") from None

    # --- records: vigil's, with Masakari's extras (adopted on first sight) ----------------
    def segment_extras(self) -> dict[str, SegmentExtra]:
        extras = self.records.segments()
        for seg in self.store.list_segments():
            if seg.name not in extras:
                # A segment made through vigil's own API: Masakari's defaults.
                extras[seg.name] = self.records.put_segment(
                    SegmentExtra(str(uuid.uuid4()), seg.name, created_at=self.clock.wall())
                )
        return extras

    def host_extras(self) -> dict[str, HostExtra]:
        extras = self.records.hosts()
        for host in self.store.list_hosts():
            if host.name not in extras:
                extras[host.name] = self.records.put_host(
                    HostExtra(str(uuid.uuid4()), host.name, "COMPUTE", "", self.clock.wall())
                )
        return extras

    def segment_view(self, seg: Segment, extra: SegmentExtra) -> dict[str, Any]:
        return {
            "id": seg.id,
            "uuid": extra.uuid,
            "name": seg.name,
            "description": seg.description or None,
            "recovery_method": extra.recovery_method,
            "service_type": extra.service_type,
            "enabled": extra.enabled,
            "created_at": timestamp(extra.created_at),
            "updated_at": timestamp(extra.updated_at),
            "deleted": False,
            "deleted_at": None,
        }

    def find_segment(self, ident: str) -> tuple[Segment, SegmentExtra]:
        extras = self.segment_extras()
        for seg in self.store.list_segments():
            extra = extras[seg.name]
            if ident in (extra.uuid, str(seg.id)):
                return seg, extra
        raise ApiError(404, f"Failover segment {ident} could not be found.")

    def host_view(self, host: Host, extra: HostExtra, seg: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": host.id,
            "uuid": extra.uuid,
            "name": host.name,
            "failover_segment_id": seg["uuid"],
            "failover_segment": seg,
            "type": extra.type,
            "reserved": host.reserved,
            "control_attributes": extra.control_attributes,
            # vigil's maintenance only: a recovered host is out of use by its state, and an
            # operator's on_maintenance=false brings it back (see update_host).
            "on_maintenance": host.maintenance,
            "created_at": timestamp(extra.created_at),
            "updated_at": timestamp(extra.updated_at),
            "deleted": False,
            "deleted_at": None,
        }

    def find_host(self, seg: Segment, ident: str) -> tuple[Host, HostExtra]:
        extras = self.host_extras()
        for host in self.store.list_hosts(seg.name):
            extra = extras[host.name]
            if ident in (extra.uuid, str(host.id)):
                return host, extra
        raise ApiError(404, f"Host {ident} could not be found.")

    # --- notifications: status follows the recovery ----------------------------------------
    def live(self, n: Notification) -> tuple[str, str, Recovery | None]:
        """(status, message, recovery) of a notification now."""
        if n.status != "new" or n.type != "COMPUTE_HOST":
            return n.status, n.message, None
        recovery: Recovery | None = None
        if n.recovery_id is not None:
            try:
                recovery = self.store.get_recovery(n.recovery_id)
            except NotFoundError:
                return "failed", f"recovery {n.recovery_id} is gone", None
        else:
            # The first recovery of the host opened after the report, or running then.
            for r in sorted(self.store.list_recoveries(host=n.hostname, limit=20), key=_created):
                if r.created_at >= n.created_at - 1.0 or (
                    r.finished_at is None or r.finished_at >= n.created_at
                ):
                    recovery = r
                    self.records.link_recovery(n.uuid, r.id, at=self.clock.wall())
                    break
        if recovery is None:
            try:
                host = self.store.get_host(n.hostname)
            except NotFoundError:
                return "ignored", "the host is no longer known to vigil", None
            if host.state == HostState.UP and self.clock.wall() - n.created_at > REPORT_GRACE:
                return "ignored", "vigil hears the host's heartbeats: it is not down", None
            if host.state == HostState.NEW and host.state_changed_at >= n.created_at:
                # The engine closed the report: nothing corroborated it (its reason says).
                return "ignored", host.state_reason, None
            return "new", "vigil is confirming the failure (BMC, heartbeats)", None
        status = NOTIFICATION_STATUS[recovery.status]
        return (
            status,
            recovery.reason or f"recovery {recovery.id} {recovery.status.value}",
            recovery,
        )

    def notification_view(
        self, n: Notification, version: tuple[int, int], *, details: bool = False
    ) -> dict[str, Any]:
        status, message, recovery = self.live(n)
        view: dict[str, Any] = {
            "id": n.id,
            "notification_uuid": n.uuid,
            "generated_time": timestamp(n.generated_time),
            "source_host_uuid": n.source_host_uuid,
            "type": n.type,
            "payload": dict(n.payload),
            "status": status,
            "failover_segment_uuid": n.segment_uuid,
            "message": message or None,
            "created_at": timestamp(n.created_at),
            "updated_at": timestamp(n.updated_at),
            "deleted": False,
            "deleted_at": None,
        }
        if details and version >= (1, 1):
            view["recovery_workflow_details"] = workflow_details(recovery) if recovery else []
        return view

    def open_notifications(self, **match: str) -> list[str]:
        busy = []
        for n in self.records.notifications():
            if all(getattr(n, k) == v for k, v in match.items()):
                status, _, _ = self.live(n)
                if status in ("new", "running", "error"):
                    busy.append(n.uuid)
        return busy

    # --- versions -------------------------------------------------------------------------
    def v1_href(self, request: Request) -> str:
        base = str(request.base_url).rstrip("/")
        root = request.scope.get("root_path", "")
        return f"{base}{root}/v1/" if root and not base.endswith(root) else f"{base}/v1/"

    def version_doc(self, request: Request) -> dict[str, Any]:
        """GET /v1: Masakari's version document, self then describedby."""
        return {
            "id": "v1.0",
            "status": "CURRENT",
            "version": _v(MAX_VERSION),
            "min_version": _v(MIN_VERSION),
            "updated": "2016-07-01T11:33:21Z",
            "links": [{"rel": "self", "href": self.v1_href(request)}, dict(DESCRIBEDBY)],
            "media-types": [dict(m) for m in MEDIA_TYPES],
        }

    async def versions(self, request: Request) -> Response:
        """GET /: Masakari answers 300 Multiple Choices with its "choices" (id, status, a
        self link and the media types), as its versions controller's ``multi`` does."""
        choice = {
            "id": "v1.0",
            "status": "CURRENT",
            "links": [{"rel": "self", "href": self.v1_href(request)}],
            "media-types": [dict(m) for m in MEDIA_TYPES],
        }
        return JSONResponse({"choices": [choice]}, status_code=300)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": self.version_doc(request)})

    def segment_input(self, body: Any, version: tuple[int, int], *, create: bool) -> dict[str, Any]:
        allowed = (*self.segment_fields, "enabled") if version >= (1, 2) else self.segment_fields
        fields = _member(body, "segment", allowed)
        if create:
            _require(fields, ("name", "recovery_method", "service_type"))
        elif not fields:
            raise ApiError(400, "The segment update must change at least one field.")
        if "name" in fields:
            _name(fields["name"], "name")
        if "service_type" in fields:
            _name(fields["service_type"], "service_type")
        if "description" in fields:
            fields["description"] = _text(fields["description"], "description")
            if len(fields["description"]) > 255:  # Masakari's schema: at most 255
                raise ApiError(400, "Invalid input for field/attribute description: too long.")
        if "recovery_method" in fields and fields["recovery_method"] not in RECOVERY_METHODS:
            raise ApiError(
                400,
                f"Invalid input for field/attribute recovery_method. Value: "
                f"{fields['recovery_method']}. Must be one of {', '.join(RECOVERY_METHODS)}.",
            )
        if "enabled" in fields:
            fields["enabled"] = boolean(fields["enabled"], "enabled")
        return fields

    def list_segments(self, request: Request, body: Any) -> Response:
        extras = self.segment_extras()
        views = [self.segment_view(s, extras[s.name]) for s in self.store.list_segments()]
        q = request.query_params
        for field in ("recovery_method", "service_type"):
            if field in q:
                views = _filter(views, field, q[field])
        if "enabled" in q:
            views = _filter(views, "enabled", boolean(q["enabled"], "enabled"))
        keys = ("created_at", "description", "id", "name", "updated_at", "uuid", "recovery_method")
        return JSONResponse({"segments": page(views, q, sort_keys=(*keys, "service_type"))})

    def create_segment(self, request: Request, body: Any) -> Response:
        fields = self.segment_input(body, self.version_of(request), create=True)
        name = fields["name"]
        try:
            seg = self.store.create_segment(
                Segment(
                    name=name,
                    description=fields.get("description") or "",
                    # Masakari evacuates every instance of a failed host by default
                    # (evacuate_all_instances); HA_Enabled=False or vigil:ha_policy opt out.
                    default_policy=HaPolicy.KEEP_RUNNING,
                    max_failed_share=self.defaults.max_failed_share if self.defaults else 0.5,
                    max_parallel_evacuations=(
                        self.defaults.max_parallel_evacuations if self.defaults else 8
                    ),
                    paused=not fields.get("enabled", True),
                    pause_reason="" if fields.get("enabled", True) else _DISABLED,
                )
            )
        except AlreadyExists:
            raise ApiError(409, f"Failover segment with name {name} already exists.") from None
        extra = self.records.put_segment(
            SegmentExtra(
                str(uuid.uuid4()),
                name,
                fields["recovery_method"],
                fields["service_type"],
                fields.get("enabled", True),
                self.clock.wall(),
            )
        )
        LOG.info("segment %s created through the Masakari API", name)
        return JSONResponse({"segment": self.segment_view(seg, extra)}, status_code=201)

    def show_segment(self, request: Request, body: Any) -> Response:
        seg, extra = self.find_segment(request.path_params["segment_id"])
        return JSONResponse({"segment": self.segment_view(seg, extra)})

    def update_segment(self, request: Request, body: Any) -> Response:
        seg, extra = self.find_segment(request.path_params["segment_id"])
        fields = self.segment_input(body, self.version_of(request), create=False)
        if fields.get("name", seg.name) != seg.name:
            if any(s.name == fields["name"] for s in self.store.list_segments()):
                raise ApiError(409, f"Failover segment with name {fields['name']} already exists.")
            raise ApiError(409, "vigil cannot rename a segment: create a new one instead.")
        if self.open_notifications(segment_uuid=extra.uuid):
            raise ApiError(
                409, f"Failover segment {extra.uuid} is in use: a notification is being processed."
            )
        changes: dict[str, Any] = {}
        if "description" in fields:
            changes["description"] = fields["description"]
        if "enabled" in fields and fields["enabled"] != extra.enabled:
            changes["paused"] = not fields["enabled"]
            changes["pause_reason"] = "" if fields["enabled"] else _DISABLED
        if changes:
            seg = self.store.update_segment(seg.name, **changes)
        extra = self.records.put_segment(
            SegmentExtra(
                extra.uuid,
                seg.name,
                fields.get("recovery_method", extra.recovery_method),
                fields.get("service_type", extra.service_type),
                fields.get("enabled", extra.enabled),
                extra.created_at,
                self.clock.wall(),
            )
        )
        self.engine.wake()
        return JSONResponse({"segment": self.segment_view(seg, extra)})

    def delete_segment(self, request: Request, body: Any) -> Response:
        seg, extra = self.find_segment(request.path_params["segment_id"])
        if self.open_notifications(segment_uuid=extra.uuid):
            raise ApiError(
                409, f"Failover segment {extra.uuid} is in use: a notification is being processed."
            )
        try:
            # Masakari deletes a segment with its hosts.
            for host in self.store.list_hosts(seg.name):
                self.store.delete_host(host.name)
                self.records.delete_host(host.name)
            self.store.delete_segment(seg.name)
        except InUse as exc:
            raise ApiError(409, str(exc)) from None
        self.records.delete_segment(seg.name)
        LOG.info("segment %s deleted through the Masakari API", seg.name)
        return Response(status_code=204)

    def host_input(self, body: Any, *, create: bool) -> dict[str, Any]:
        fields = _member(body, "host", self.host_fields)
        if create:
            _require(fields, ("name", "type", "control_attributes"))
        elif not fields:
            raise ApiError(400, "The host update must change at least one field.")
        if "name" in fields:
            _name(fields["name"], "name")
        if "type" in fields:
            fields["type"] = _text(fields["type"], "type", HOST_TYPE)
        if "control_attributes" in fields:
            fields["control_attributes"] = _text(fields["control_attributes"], "control_attributes")
        for flag in ("reserved", "on_maintenance"):
            if flag in fields:
                fields[flag] = boolean(fields[flag], flag)
        return fields

    def check_compute(self, name: str) -> None:
        try:
            self.compute.get_service(name)
        except NotFound:
            raise ApiError(400, f"Compute service with name {name} could not be found.") from None
        except DriverError as exc:
            raise ApiError(503, f"Nova did not answer: {exc}") from None

    def list_hosts(self, request: Request, body: Any) -> Response:
        seg, extra = self.find_segment(request.path_params["segment_id"])
        seg_view = self.segment_view(seg, extra)
        extras = self.host_extras()
        views = [
            self.host_view(h, extras[h.name], seg_view) for h in self.store.list_hosts(seg.name)
        ]
        q = request.query_params
        for field in ("name", "type", "control_attributes"):
            if field in q:
                views = _filter(views, field, q[field])
        for flag in ("on_maintenance", "reserved"):
            if flag in q:
                views = _filter(views, flag, boolean(q[flag], flag))
        keys = ("created_at", "id", "name", "type", "updated_at", "uuid", "reserved")
        sortable = (*keys, "on_maintenance", "control_attributes")
        return JSONResponse({"hosts": page(views, q, sort_keys=sortable)})

    def create_host(self, request: Request, body: Any) -> Response:
        seg, seg_extra = self.find_segment(request.path_params["segment_id"])
        fields = self.host_input(body, create=True)
        name = fields["name"]
        self.check_compute(name)
        try:
            host = self.store.create_host(
                Host(
                    name=name,
                    segment=seg.name,
                    maintenance=fields.get("on_maintenance", False),
                    reserved=fields.get("reserved", False),
                )
            )
        except AlreadyExists:
            raise ApiError(409, f"Host with name {name} already exists.") from None
        extra = self.records.put_host(
            HostExtra(
                str(uuid.uuid4()),
                name,
                fields["type"],
                fields["control_attributes"],
                self.clock.wall(),
            )
        )
        LOG.info("host %s created in segment %s through the Masakari API", name, seg.name)
        self.engine.wake()
        view = self.host_view(host, extra, self.segment_view(seg, seg_extra))
        return JSONResponse({"host": view}, status_code=201)

    def show_host(self, request: Request, body: Any) -> Response:
        seg, seg_extra = self.find_segment(request.path_params["segment_id"])
        host, extra = self.find_host(seg, request.path_params["host_id"])
        return JSONResponse(
            {"host": self.host_view(host, extra, self.segment_view(seg, seg_extra))}
        )

    def update_host(self, request: Request, body: Any) -> Response:
        seg, seg_extra = self.find_segment(request.path_params["segment_id"])
        host, extra = self.find_host(seg, request.path_params["host_id"])
        fields = self.host_input(body, create=False)
        if fields.get("name", host.name) != host.name:
            raise ApiError(409, "vigil cannot rename a host: delete it and create it again.")
        if self.open_notifications(source_host_uuid=extra.uuid):
            raise ApiError(
                409, f"Host {extra.uuid} is in use: a notification of it is being processed."
            )
        if fields.get("on_maintenance") is False and host.state == HostState.RECOVERED:
            # Masakari's way to put a repaired host back: vigil's restore (compute service
            # up and enabled, monitored again).
            try:
                host = self.engine.restore_host(host.name)
            except (Conflict, InvalidTransition) as exc:
                raise ApiError(409, str(exc)) from None
        changes = {
            vigil: fields[masakari]
            for masakari, vigil in (("on_maintenance", "maintenance"), ("reserved", "reserved"))
            if masakari in fields
        }
        if changes:
            host = self.store.update_host(host.name, **changes)
        extra = self.records.put_host(
            HostExtra(
                extra.uuid,
                host.name,
                fields.get("type", extra.type),
                fields.get("control_attributes", extra.control_attributes),
                extra.created_at,
                self.clock.wall(),
            )
        )
        self.engine.wake()
        return JSONResponse(
            {"host": self.host_view(host, extra, self.segment_view(seg, seg_extra))}
        )

    def delete_host(self, request: Request, body: Any) -> Response:
        seg, _ = self.find_segment(request.path_params["segment_id"])
        host, extra = self.find_host(seg, request.path_params["host_id"])
        if self.open_notifications(source_host_uuid=extra.uuid):
            raise ApiError(
                409, f"Host {extra.uuid} is in use: a notification of it is being processed."
            )
        try:
            self.store.delete_host(host.name)
        except InUse as exc:
            raise ApiError(409, str(exc)) from None
        self.records.delete_host(host.name)
        LOG.info("host %s deleted through the Masakari API", host.name)
        return Response(status_code=204)

    # --- notifications --------------------------------------------------------------------
    def notification_input(self, body: Any) -> dict[str, Any]:
        fields = _member(body, "notification", ("type", "hostname", "generated_time", "payload"))
        _require(fields, ("type", "hostname", "generated_time", "payload"))
        if fields["type"] not in NOTIFICATION_TYPES:
            raise ApiError(400, f"Invalid input for field/attribute type. Value: {fields['type']}.")
        hostname = fields["hostname"]
        if not isinstance(hostname, str) or not 1 <= len(hostname) <= 255:
            raise ApiError(400, "Invalid input for field/attribute hostname.")
        _text(hostname, "hostname", HOSTNAME)
        if not isinstance(fields["generated_time"], str):
            raise ApiError(400, "Invalid input for field/attribute generated_time.")
        fields["generated_time"] = parse_time(fields["generated_time"], "generated_time")
        payload = fields["payload"]
        if not isinstance(payload, dict) or any(
            not PAYLOAD_KEY.match(k) or not isinstance(v, str) or len(v) > 255
            for k, v in payload.items()
        ):
            raise ApiError(400, "Invalid input for field/attribute payload: strings only.")
        _check_payload(fields["type"], payload)
        return fields

    def create_notification(self, request: Request, body: Any) -> Response:
        fields = self.notification_input(body)
        hostname, kind, payload = fields["hostname"], fields["type"], fields["payload"]
        try:
            host = self.store.get_host(hostname)
        except NotFoundError:
            raise ApiError(400, f"Host with name {hostname} could not be found.") from None
        if host.maintenance:
            raise ApiError(
                409,
                f"Notification received from host {hostname} of type '{kind}' is ignored "
                "as the host is already under maintenance.",
            )
        host_extra = self.host_extras()[hostname]
        seg_extra = self.segment_extras()[host.segment]
        since = fields["generated_time"] - self.duplicate_interval
        for old in self.records.notifications(hostname=hostname):
            if old.type == kind and old.generated_time >= since and dict(old.payload) == payload:
                raise ApiError(
                    409,
                    f"Notification received from host {hostname} of type {kind} is duplicate.",
                )
        now = self.clock.wall()
        status, message, recovery_id = "new", "", None
        event = payload.get("event", "").upper()
        if not seg_extra.enabled:
            status, message = "ignored", f"segment {host.segment} is disabled"
        elif kind == "COMPUTE_HOST":
            if event == "STARTED":
                status, message = "finished", "the host reports itself started"
                self.engine.withdraw_report(hostname)
            elif "host_status" not in payload:
                status, message = "ignored", "no host_status in the payload"
            elif host.state in (HostState.FAILED, HostState.RECOVERED):
                # Already declared: this notification follows the recovery under way.
                latest = self.store.list_recoveries(host=hostname, limit=1)
                recovery_id = latest[0].id if latest else None
            else:
                self.engine.report_down(
                    hostname,
                    source="masakari",
                    reason=(
                        f"COMPUTE_HOST {event} notification (cluster "
                        f"{payload.get('cluster_status', '?')}, host "
                        f"{payload.get('host_status', '?')})"
                    ),
                )
        elif kind == "VM" and event == "QEMU_GUEST_AGENT_ERROR" and self.apps is not None:
            # Masakari's introspective monitor: the application layer's, where it maps.
            taken, message = self.apps.guest_agent_error(
                payload["instance_uuid"],
                host=hostname,
                detail=payload.get("vir_domain_event", ""),
            )
            status = "finished" if taken else "ignored"
        else:
            # vigil's own agent watches instances and processes; recorded, not acted on.
            status = "ignored"
            message = f"recorded: vigil does not act on {kind} notifications from Masakari"
            LOG.warning(
                "host %s: Masakari %s notification recorded, not acted on: %s",
                hostname,
                kind,
                payload,
            )
        n = self.records.add_notification(
            Notification(
                uuid=str(uuid.uuid4()),
                type=kind,
                hostname=hostname,
                source_host_uuid=host_extra.uuid,
                segment_uuid=seg_extra.uuid,
                generated_time=fields["generated_time"],
                payload=payload,
                status=status,
                message=message,
                recovery_id=recovery_id,
                created_at=now,
            )
        )
        LOG.info("host %s: Masakari %s notification %s: %s", hostname, kind, n.uuid, status)
        view = self.notification_view(n, self.version_of(request))
        return JSONResponse({"notification": view}, status_code=202)

    def list_notifications(self, request: Request, body: Any) -> Response:
        version = self.version_of(request)
        views = [self.notification_view(n, version) for n in self.records.notifications()]
        q = request.query_params
        for field in ("status", "source_host_uuid", "type"):
            if field in q:
                views = _filter(views, field, q[field])
        if "generated-since" in q:
            try:
                since = parse_time(q["generated-since"], "generated-since")
            except ApiError:
                raise ApiError(400, "Invalid generated-since value") from None
            views = [v for v in views if parse_time(v["generated_time"], "") >= since]
        keys = ("created_at", "generated_time", "id", "type", "status", "updated_at")
        sortable = (*keys, "notification_uuid", "source_host_uuid")
        listed = page(views, q, sort_keys=sortable, marker_key="notification_uuid")
        return JSONResponse({"notifications": listed})

    def find_notification(self, ident: str) -> Notification:
        n = self.records.get_notification(ident) if UUID.match(ident) else None
        if n is None:
            raise ApiError(404, f"No notification with id {ident}.")
        return n

    def show_notification(self, request: Request, body: Any) -> Response:
        n = self.find_notification(request.path_params["notification_id"])
        view = self.notification_view(n, self.version_of(request), details=True)
        return JSONResponse({"notification": view})

    # --- vmoves (1.3) -------------------------------------------------------------------------
    def vmoves_of(self, request: Request) -> list[dict[str, Any]]:
        # Masakari serves vmoves at every microversion (1.3 only announces them); so
        # does vigil, for the clients that send no version header (the SDK's VMove).
        n = self.find_notification(request.path_params["notification_id"])
        if n.type != "COMPUTE_HOST":
            raise ApiError(400, f"Notification {n.uuid} has no vmoves: it is of type {n.type}.")
        _, _, recovery = self.live(n)
        if recovery is None:
            return []
        return [vmove_view(n, recovery, s) for s in recovery.steps if s.kind == StepKind.EVACUATE]

    def list_vmoves(self, request: Request, body: Any) -> Response:
        views = self.vmoves_of(request)
        q = request.query_params
        for field in ("status", "type"):
            if field in q:
                views = _filter(views, field, q[field])
        sortable = ("created_at", "id", "uuid", "status", "type", "instance_name", "start_time")
        return JSONResponse({"vmoves": page(views, q, sort_keys=sortable)})

    def show_vmove(self, request: Request, body: Any) -> Response:
        wanted = request.path_params["vmove_id"]
        for view in self.vmoves_of(request):
            if wanted in (view["uuid"], str(view["id"])):
                return JSONResponse({"vmove": view})
        raise ApiError(404, f"VM move {wanted} could not be found.")

    def many(self, key: str, item: doc.Schema) -> doc.Schema:
        return doc.obj({key: {"type": "array", "items": item}}, [key])

    def _register(self) -> None:
        """Every route, under /v1 with and without the project id, and the version documents."""
        self.app.middleware("http")(self.microversion_and_auth)

        self.app.add_exception_handler(ApiError, self.on_api_error)
        self.app.add_exception_handler(StarletteHTTPException, self.on_http_error)

        # the fields the handlers accept, and the sort keys and bodies the document names
        self.segment_fields = ("name", "description", "recovery_method", "service_type")
        self.host_fields = ("name", "type", "control_attributes", "reserved", "on_maintenance")

        self.seg_sort = ["created_at", "description", "id", "name", "updated_at", "uuid"]
        self.seg_sort += ["recovery_method", "service_type"]
        self.host_sort = ["created_at", "id", "name", "type", "updated_at", "uuid", "reserved"]
        self.host_sort += ["on_maintenance", "control_attributes"]
        self.n_sort = ["created_at", "generated_time", "id", "type", "status", "updated_at"]
        self.n_sort += ["notification_uuid", "source_host_uuid"]
        self.vm_sort = ["created_at", "id", "uuid", "status", "type", "instance_name", "start_time"]
        self.segment_one = doc.obj({"segment": doc.SEGMENT}, ["segment"])
        self.host_one = doc.obj({"host": doc.HOST}, ["host"])
        self.notification_one = doc.obj({"notification": doc.NOTIFICATION}, ["notification"])

        self._segment_routes()
        self._notification_routes()
        self._version_routes()

    def _segment_routes(self) -> None:
        """Segments and their hosts."""
        self.route(
            "GET",
            "/segments",
            self.list_segments,
            answer=self.many("segments", doc.SEGMENT),
            params=doc.paging(
                self.seg_sort,
                {
                    "recovery_method": {"type": "string"},
                    "service_type": {"type": "string"},
                    "enabled": doc.BOOL_QUERY,
                },
            ),
        )
        self.route(
            "POST",
            "/segments",
            self.create_segment,
            201,
            answer=self.segment_one,
            body=doc.SEGMENT_IN,
            refusals=(409,),
            links={
                name: (op, {"segment_id": "$response.body#/segment/uuid"})
                for name, op in (
                    ("ShowSegment", "show_segment"),
                    ("UpdateSegment", "update_segment"),
                    ("DeleteSegment", "delete_segment"),
                    ("ListHosts", "list_hosts"),
                    ("CreateHost", "create_host"),
                )
            },
        )
        self.route(
            "GET",
            "/segments/{segment_id}",
            self.show_segment,
            answer=self.segment_one,
            refusals=(404,),
        )
        self.route(
            "PUT",
            "/segments/{segment_id}",
            self.update_segment,
            answer=self.segment_one,
            body=doc.SEGMENT_UPDATE,
            refusals=(404, 409),
        )
        self.route(
            "DELETE",
            "/segments/{segment_id}",
            self.delete_segment,
            204,
            answer=None,
            refusals=(404, 409),
        )
        self.route(
            "GET",
            "/segments/{segment_id}/hosts",
            self.list_hosts,
            answer=self.many("hosts", doc.HOST),
            params=doc.paging(
                self.host_sort,
                {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "control_attributes": {"type": "string"},
                    "on_maintenance": doc.BOOL_QUERY,
                    "reserved": doc.BOOL_QUERY,
                },
            ),
            refusals=(404,),
        )
        self.route(
            "POST",
            "/segments/{segment_id}/hosts",
            self.create_host,
            201,
            answer=self.host_one,
            body=doc.HOST_IN,
            refusals=(404, 409, 503),
            links={
                name: (
                    op,
                    {
                        "segment_id": "$request.path.segment_id",
                        "host_id": "$response.body#/host/uuid",
                    },
                )
                for name, op in (
                    ("ShowHost", "show_host"),
                    ("UpdateHost", "update_host"),
                    ("DeleteHost", "delete_host"),
                )
            },
        )
        self.route(
            "GET",
            "/segments/{segment_id}/hosts/{host_id}",
            self.show_host,
            answer=self.host_one,
            refusals=(404,),
        )
        self.route(
            "PUT",
            "/segments/{segment_id}/hosts/{host_id}",
            self.update_host,
            answer=self.host_one,
            body=doc.HOST_UPDATE,
            refusals=(404, 409),
        )
        self.route(
            "DELETE",
            "/segments/{segment_id}/hosts/{host_id}",
            self.delete_host,
            204,
            answer=None,
            refusals=(404, 409),
        )

    def _notification_routes(self) -> None:
        """Notifications and their vmoves (1.3)."""
        self.route(
            "GET",
            "/notifications",
            self.list_notifications,
            answer=self.many("notifications", doc.NOTIFICATION),
            params=doc.paging(
                self.n_sort,
                {
                    "status": {"type": "string"},
                    "source_host_uuid": {"type": "string"},
                    "type": {"type": "string"},
                    "generated-since": {"type": "string", "format": "date-time"},
                },
            ),
        )
        self.route(
            "POST",
            "/notifications",
            self.create_notification,
            202,
            answer=self.notification_one,
            body=doc.NOTIFICATION_IN,
            refusals=(409,),
            links={
                name: (op, {"notification_id": "$response.body#/notification/notification_uuid"})
                for name, op in (
                    ("ShowNotification", "show_notification"),
                    ("ListVMoves", "list_vmoves"),
                )
            },
        )
        self.route(
            "GET",
            "/notifications/{notification_id}",
            self.show_notification,
            answer=self.notification_one,
            refusals=(404,),
        )
        self.route(
            "GET",
            "/notifications/{notification_id}/vmoves",
            self.list_vmoves,
            answer=self.many("vmoves", doc.VMOVE),
            params=doc.paging(
                self.vm_sort, {"status": {"type": "string"}, "type": {"type": "string"}}
            ),
            refusals=(404,),
        )
        self.route(
            "GET",
            "/notifications/{notification_id}/vmoves/{vmove_id}",
            self.show_vmove,
            answer=doc.obj({"vmove": doc.VMOVE}, ["vmove"]),
            refusals=(404,),
        )

    def _version_routes(self) -> None:
        """The version documents (public) and the OpenAPI document."""
        versions_doc, versions_extra = doc.operation(300, answer=doc.VERSIONS, public=True)
        self.app.add_api_route(
            "/",
            self.versions,
            methods=["GET"],
            response_model=None,
            status_code=300,
            responses=versions_doc,
            openapi_extra=versions_extra,
        )
        for path in ("/v1", "/v1/", "/v1/{project_id}", "/v1/{project_id}/"):
            version_doc_, version_extra = doc.operation(
                200, answer=doc.VERSION, public=True, path=path
            )
            self.app.add_api_route(
                path,
                self.version,
                methods=["GET"],
                response_model=None,
                responses=version_doc_,
                openapi_extra=version_extra,
                include_in_schema=path in ("/v1", "/v1/{project_id}"),
            )
        install_openapi(self.app)


_DISABLED = "disabled through the Masakari API (enabled=false)"


def _created(r: Recovery) -> float:
    return r.created_at


def _check_payload(kind: str, payload: Mapping[str, str]) -> None:
    """Masakari's payload rules per notification type."""
    allowed: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        "COMPUTE_HOST": (("event",), ("event", "host_status", "cluster_status")),
        "PROCESS": (("process_name", "event"), ("process_name", "event")),
        "VM": (
            ("instance_uuid", "vir_domain_event", "event"),
            ("instance_uuid", "vir_domain_event", "event"),
        ),
    }
    required, known = allowed[kind]
    for name in required:
        if name not in payload:
            raise ApiError(400, f"'{name}' is a required property")
    unknown = sorted(set(payload) - set(known))
    if unknown:
        raise ApiError(
            400, f"Additional properties are not allowed ({', '.join(unknown)} unexpected)."
        )
    enums = {
        "event": EVENTS if kind != "VM" else None,
        "host_status": ("NORMAL", "UNKNOWN"),
        "cluster_status": ("ONLINE", "OFFLINE"),
    }
    for name, values in enums.items():
        if values is not None and name in payload and payload[name] not in values:
            raise ApiError(400, f"Invalid input for field/attribute {name}: {payload[name]}.")
    if kind == "VM" and not UUID.match(payload["instance_uuid"]):
        raise ApiError(400, "Invalid input for field/attribute instance_uuid: not a UUID.")


def install_openapi(app: FastAPI) -> None:
    """The document FastAPI builds from the routes, with Masakari's token as its
    security scheme (every route but the public ones needs it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=_v(MAX_VERSION),
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}
            }
            schema["security"] = [{"token": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def not_found_fault() -> Response:
    """Masakari's 404, for a path under /instance-ha that never reaches its app (the
    mount's pattern stops at a newline in the path)."""
    return _fault(ApiError(404, "The resource could not be found."), MIN_VERSION)


def _fault(exc: ApiError, version: tuple[int, int]) -> Response:
    key = ERROR_KEYS.get(exc.status, "computeFault")
    response = JSONResponse({key: {"code": exc.status, "message": exc.message}}, exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    _version_headers(response, version)
    return response


def _version_headers(response: Response, version: tuple[int, int]) -> None:
    response.headers[VERSION_HEADER] = f"{SERVICE} {_v(version)}"
    response.headers["Vary"] = VERSION_HEADER
