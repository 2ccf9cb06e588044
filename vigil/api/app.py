"""vigil's REST API (FastAPI: typed routes and an OpenAPI document at /openapi.json).

The API records operator intents and wakes the engine; it never fences or evacuates
itself. Every /v1 route needs the bearer token (S5); refusals are logged. Store errors map
to HTTP: not found → 404, duplicates and state conflicts → 409, bad values → 400 or 422
naming the field — and a refused request changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from vigil import __version__
from vigil.api import policies
from vigil.api.apps import add_app_routes
from vigil.api.auth import Authority, Scope, log_refusal
from vigil.api.clusters import add_cluster_routes
from vigil.api.guest import add_guest_routes
from vigil.api.masakari import not_found_fault
from vigil.api.schemas import (
    MAX_ID,
    ControlOut,
    DismissIn,
    EvacuateIn,
    FailureOut,
    GuestFailureOut,
    HandledIn,
    HostBatchIn,
    HostIn,
    HostOut,
    HostPatch,
    HostServicesOut,
    InstanceOut,
    InstancePolicyIn,
    PauseIn,
    RecoveryOut,
    SegmentIn,
    SegmentOut,
    SegmentOwnerOut,
    SegmentPatch,
    ServersOut,
    SubscriptionIn,
    SubscriptionOut,
    answers,
)
from vigil.clock import Clock
from vigil.config import RecoverySettings
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.errors import Conflict, DriverError, NotFound
from vigil.drivers.webhook import WebhookNotifier, validate_webhook_url
from vigil.engine.clusters import ClusterError, Clusters
from vigil.engine.engine import Engine
from vigil.engine.guest_engine import GuestEngine
from vigil.engine.outbox import webhook_sink
from vigil.engine.ownership import SegmentOwnership
from vigil.engine.steps import effective_policy
from vigil.events import CATALOGUE, event_as_json, make_event
from vigil.model import (
    FailureStatus,
    GuestFailureStatus,
    HostState,
    InstanceFailure,
    InstancePolicy,
    InvalidTransition,
    NewStep,
    RecoveryStatus,
    Segment,
    StepKind,
    StepStatus,
    Subscription,
)
from vigil.store import AlreadyExists, InUse, NotFoundError, Store, StoreUnavailable
from vigil.wire.keys import AgentKeys

LOG = logging.getLogger("vigil.api")
_BEARER = HTTPBearer(auto_error=False)

# Integer ids and cursors within what every store holds: a larger one is a 422 naming
# the parameter, not an OverflowError from the database driver.
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Cursor = Annotated[int, Query(ge=0, le=MAX_ID, description="seq of the last event seen")]
# Names and ids in paths and filters: any text a store can hold. PostgreSQL refuses a
# NUL in text (a database error, a 500), so control characters are a 422 here.
_TEXT = r"^[^\x00-\x1f\x7f]+$"
Name = Annotated[str, Path(max_length=255, pattern=_TEXT)]
Filter = Annotated[str | None, Query(max_length=255, pattern=_TEXT)]


def _links(kind: str, param: str, ops: dict[str, str]) -> dict[int | str, Any]:
    """OpenAPI links from a creation to what addresses the created record: the document
    says how calls chain (schemathesis follows them in its stateful phase)."""
    return {
        201: {
            "description": f"the {kind} created",
            "links": {
                name: {"operationId": op, "parameters": {param: f"$response.body#/{param}"}}
                for name, op in ops.items()
            },
        }
    }


def _refused(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


@dataclass(frozen=True)
class _Api:
    """What the routes of the native API work with. Each group of routes is a function
    that adds its routes to the app (FastAPI 0.165 keeps an included APIRouter apart from
    ``app.routes``, which the 405 handler reads to name every allowed method)."""

    store: Store
    engine: Engine
    compute: ComputeDriver
    clock: Clock
    heartbeat_age: Callable[[str], float | None]
    defaults: RecoverySettings
    guest: GuestEngine | None
    closing: threading.Event  # set by the server on shutdown: event streams end
    # The guard as a parameter's default (``scope: Scope = api.scope``): the handler gets
    # the caller's scope (FastAPI runs the guard once per request).
    scope: Any

    def project_of(self, instance_id: str) -> str | None:
        """The instance's project: as vigil learnt it, else asked of Nova (None: Nova
        does not know the instance either)."""
        known = self.store.instance_projects([instance_id]).get(instance_id)
        if known is not None:
            return known
        try:
            return self.compute.get_server(instance_id).project_id
        except NotFound:
            return None

    def require_instance(self, scope: Scope, instance_id: str, project: str | None = None) -> None:
        """404 unless the instance is in the caller's scope (``project``: its project,
        when the handler has it already)."""
        if scope.project_id is None:
            return
        if not scope.sees(project if project is not None else self.project_of(instance_id)):
            raise NotFoundError(f"instance {instance_id} not found")


def _guard(authority: Authority) -> Callable[..., Scope]:
    """The dependency of every route that takes a caller's credentials: the caller,
    allowed by the route's policy rule (``vigil.api.policies``), with the projects it
    reaches; else 401 or 403, logged with the route and the caller, never the token."""

    def authenticated(
        request: Request,
        _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> Scope:
        """The caller's scope, allowed by the route's policy rule; else 401 or 403. (The
        bearer scheme is declared for the OpenAPI document; ``Authority`` reads the
        headers.)"""
        client = request.client.host if request.client else "?"
        caller = authority.caller(request.headers)
        if caller is None:
            given = "x-auth-token" in request.headers or "authorization" in request.headers
            LOG.warning(
                "API %s %s from %s refused: %s",
                request.method,
                request.url.path,
                client,
                "invalid token" if given else "no token",
            )
            raise HTTPException(
                401,
                authority.refusal,
                headers={"WWW-Authenticate": authority.challenge},
            )
        route = request.scope.get("route")
        rule = policies.native_rule(getattr(route, "name", ""))
        if rule is None or not authority.route_allows(rule, caller):
            log_refusal("API", request, caller, rule)
            raise HTTPException(403, f"policy does not allow {rule or 'this route'}")
        return authority.scope(caller)

    return authenticated


def create_app(
    *,
    store: Store,
    engine: Engine,
    compute: ComputeDriver,
    token: str,
    clock: Clock,
    heartbeat_age: Callable[[str], float | None],
    defaults: RecoverySettings,
    guest: GuestEngine | None = None,
    agent_key: AgentKeys | str = "",
    ownership: SegmentOwnership | None = None,
    metrics: Callable[[], bytes] | None = None,
    authority: Authority | None = None,
    clusters: Clusters | None = None,
) -> FastAPI:
    """vigil's API. ``authority``: who may call what (``vigil.api.auth``); None: the one
    bearer ``token``, an admin's."""
    authority = authority or Authority.static(token)
    closing = threading.Event()  # set by the server on shutdown: event streams end
    app = FastAPI(
        title="vigil",
        version=__version__,
        description="High availability for OpenStack instances: hosts, failures, recoveries.",
    )

    authenticated = _guard(authority)

    def _error(status: int) -> Callable[[Request, Exception], Any]:
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handler

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI echoes each rejected value under "input": that could be a BMC password
        # (S5). Keep where and why, never what.
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    async def wrong_method(request: Request, _: Exception) -> JSONResponse:
        # Starlette's 405 names only the first route of the path in Allow; a client (and
        # the OpenAPI document) knows every method the path has.
        allowed = sorted(
            {
                m
                for route in app.routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] != Match.NONE
                for m in route.methods or ()
            }
        )
        return JSONResponse(
            {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)}
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/instance-ha/"):
            return not_found_fault()  # Masakari's clients read Masakari's faults
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse({"detail": exc.detail}, status_code=404, headers=exc.headers)

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, wrong_method)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(NotFoundError, _error(404))
    app.add_exception_handler(AlreadyExists, _error(409))
    app.add_exception_handler(InUse, _error(409))
    app.add_exception_handler(InvalidTransition, _error(409))
    app.add_exception_handler(ClusterError, _error(409))  # not as asked (no Neutron, ...)
    app.add_exception_handler(ValueError, _error(400))
    app.add_exception_handler(Conflict, _error(409))  # Nova refuses for now (e.g. cleaning up)
    app.add_exception_handler(NotFound, _error(404))
    app.add_exception_handler(DriverError, _error(502))
    app.add_exception_handler(StoreUnavailable, _error(503))  # the database away: try again

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    if metrics is not None:

        @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
        def prometheus_metrics() -> PlainTextResponse:
            """Prometheus metrics, text format (``vigil.metrics``)."""
            return PlainTextResponse(metrics(), media_type=CONTENT_TYPE_LATEST)

    auth = [Depends(authenticated)]
    api = _Api(store, engine, compute, clock, heartbeat_age, defaults, guest, closing, auth[0])

    if guest is not None:  # the agents' guest failure reports (signed, not bearer)
        add_guest_routes(app, guest=guest, agent_key=agent_key, known_host=engine.is_known_host)
    if guest is not None and guest.apps is not None:  # application checks (issue 17)
        add_app_routes(
            app,
            apps=guest.apps,
            agent_key=agent_key,
            known_host=engine.is_known_host,
            auth=auth,
            require_instance=api.require_instance,
        )

    if clusters is not None:  # in-guest clusters (issue 19)
        add_cluster_routes(app, clusters=clusters, auth=auth)

    for routes in (
        _segment_routes,
        _host_routes,
        _instance_routes,
        _recovery_routes,
        _event_routes,
        _subscription_routes,
        _consumer_routes,
        _failure_action_routes,
        _guest_routes,
        _control_routes,
    ):
        routes(app, api, auth)
    if ownership is not None:
        _server_routes(app, store, ownership, auth)
    app.state.closing = closing
    return app


def _segment_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """Segments: the failure domains, with their storm guard."""
    store, engine, defaults = api.store, api.engine, api.defaults

    @app.get("/v1/segments", responses=answers(401), dependencies=auth, tags=["segments"])
    def list_segments() -> list[SegmentOut]:
        return [SegmentOut.of(s) for s in store.list_segments()]

    @app.post(
        "/v1/segments",
        responses={
            **answers(400, 401, 409, 422),
            **_links(
                "segment",
                "name",
                {
                    "GetSegment": "get_segment_v1_segments__name__get",
                    "UpdateSegment": "update_segment_v1_segments__name__patch",
                    "DeleteSegment": "delete_segment_v1_segments__name__delete",
                },
            ),
        },
        status_code=201,
        dependencies=auth,
        tags=["segments"],
    )
    def create_segment(body: SegmentIn) -> SegmentOut:
        fields = body.model_dump()
        if fields["max_failed_share"] is None:
            fields["max_failed_share"] = defaults.max_failed_share
        if fields["max_parallel_evacuations"] is None:
            fields["max_parallel_evacuations"] = defaults.max_parallel_evacuations
        seg = store.create_segment(Segment(**fields))
        LOG.info("segment %s created", seg.name)
        return SegmentOut.of(seg)

    @app.get(
        "/v1/segments/{name}",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["segments"],
    )
    def get_segment(name: Name) -> SegmentOut:
        return SegmentOut.of(store.get_segment(name))

    @app.patch(
        "/v1/segments/{name}",
        responses=answers(400, 401, 404, 409, 422),
        dependencies=auth,
        tags=["segments"],
    )
    def update_segment(name: Name, body: SegmentPatch) -> SegmentOut:
        changes = body.model_dump(exclude_none=True)
        if changes.get("paused") is False:
            changes["pause_reason"] = ""
        elif changes.get("paused") is True:
            changes["pause_reason"] = "paused by operator"
        seg = store.update_segment(name, **changes)
        LOG.info("segment %s updated: %s", name, ", ".join(sorted(changes)))
        engine.wake()
        return SegmentOut.of(seg)

    @app.delete(
        "/v1/segments/{name}",
        responses=answers(401, 404, 409, 422),
        status_code=204,
        dependencies=auth,
        tags=["segments"],
    )
    def delete_segment(name: Name) -> None:
        store.delete_segment(name)
        LOG.info("segment %s deleted", name)


def _host_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """Hosts: registered, monitored, restored."""
    store, engine, heartbeat_age = api.store, api.engine, api.heartbeat_age

    @app.get("/v1/hosts", responses=answers(401, 404, 422), dependencies=auth, tags=["hosts"])
    def list_hosts(segment: Filter = None) -> list[HostOut]:
        return [HostOut.of(h, heartbeat_age(h.name)) for h in store.list_hosts(segment)]

    @app.post(
        "/v1/hosts",
        responses={
            **answers(400, 401, 404, 409, 422),
            **_links(
                "host",
                "name",
                {
                    "GetHost": "get_host_v1_hosts__name__get",
                    "UpdateHost": "update_host_v1_hosts__name__patch",
                    "DeleteHost": "delete_host_v1_hosts__name__delete",
                },
            ),
        },
        status_code=201,
        dependencies=auth,
        tags=["hosts"],
    )
    def create_host(body: HostIn) -> HostOut:
        host = store.create_host(body.to_model())
        LOG.info("host %s created in segment %s", host.name, host.segment)
        engine.wake()
        return HostOut.of(host)

    @app.post(
        "/v1/host-batches",
        responses=answers(400, 401, 404, 409, 422),
        status_code=201,
        dependencies=auth,
        tags=["hosts"],
    )
    def create_hosts(body: HostBatchIn) -> list[HostOut]:
        """Register up to 1,000 hosts at once, all or none (one transaction): a name
        given twice is a 400, a segment that does not exist a 404, a host that exists a
        409, each naming them."""
        hosts = store.create_hosts([h.to_model() for h in body.hosts])
        LOG.info("%d hosts created: %s ... %s", len(hosts), hosts[0].name, hosts[-1].name)
        engine.wake()
        return [HostOut.of(h) for h in hosts]

    @app.get(
        "/v1/hosts/{name}", responses=answers(401, 404, 422), dependencies=auth, tags=["hosts"]
    )
    def get_host(name: Name) -> HostOut:
        return HostOut.of(store.get_host(name), heartbeat_age(name))

    @app.patch(
        "/v1/hosts/{name}",
        responses=answers(400, 401, 404, 409, 422),
        dependencies=auth,
        tags=["hosts"],
    )
    def update_host(name: Name, body: HostPatch) -> HostOut:
        changes: dict[str, Any] = body.model_dump(exclude_none=True, exclude={"fencing"})
        if body.fencing is not None:
            changes["fencing"] = tuple(m.to_model() for m in body.fencing)
        host = store.update_host(name, **changes)
        LOG.info("host %s updated: %s", name, ", ".join(sorted(changes)))
        engine.wake()
        return HostOut.of(host, heartbeat_age(name))

    @app.delete(
        "/v1/hosts/{name}",
        responses=answers(401, 404, 409, 422),
        status_code=204,
        dependencies=auth,
        tags=["hosts"],
    )
    def delete_host(name: Name) -> None:
        store.delete_host(name)
        LOG.info("host %s deleted", name)

    @app.post(
        "/v1/hosts/{name}/restore",
        responses=answers(401, 404, 409, 422, 502),
        dependencies=auth,
        tags=["hosts"],
    )
    def restore_host(name: Name) -> HostOut:
        """Put a recovered host back into use (compute service up and enabled)."""
        return HostOut.of(engine.restore_host(name))


def _instance_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """Instances and their HA policies."""
    store, compute = api.store, api.compute

    @app.get(
        "/v1/instances",
        responses=answers(401, 404, 422, 502),
        dependencies=auth,
        tags=["instances"],
    )
    def list_instances(host: Filter = None, scope: Scope = api.scope) -> list[InstanceOut]:
        """With ``host``: the instances Nova places there and their effective policy.
        Without: the instances with an override. A project's caller: its own only."""
        if host is None:
            return [
                InstanceOut(
                    id=p.instance_id, policy=p.policy, priority=p.priority, policy_source="override"
                )
                for p in store.list_instance_policies(project_id=scope.project_id)
            ]
        segment = store.get_segment(store.get_host(host).segment)
        out = []
        for server in compute.list_servers(host):
            if not scope.sees(server.project_id):
                continue
            override = store.get_instance_policy(server.id)
            policy, priority = effective_policy(server, override, segment)
            source = "override" if override else "metadata" if server.policy else "segment"
            out.append(
                InstanceOut(
                    id=server.id,
                    name=server.name,
                    host=server.host,
                    status=server.status,
                    policy=policy,
                    priority=priority,
                    policy_source=source,
                )
            )
        return out

    @app.get(
        "/v1/instances/{instance_id}",
        responses=answers(401, 404, 422, 502),
        dependencies=auth,
        tags=["instances"],
    )
    def get_instance(instance_id: Name, scope: Scope = api.scope) -> InstanceOut:
        override = store.get_instance_policy(instance_id)
        try:
            server = compute.get_server(instance_id)
        except NotFound:
            if override is None:
                raise NotFoundError(f"instance {instance_id} not found") from None
            api.require_instance(scope, instance_id)
            return InstanceOut(
                id=instance_id,
                policy=override.policy,
                priority=override.priority,
                policy_source="override",
            )
        api.require_instance(scope, instance_id, server.project_id or "")
        segment_name = None
        if server.host:
            try:
                segment_name = store.get_host(server.host).segment
            except NotFoundError:
                segment_name = None
        segment = store.get_segment(segment_name) if segment_name else Segment(name="-")
        policy, priority = effective_policy(server, override, segment)
        source = "override" if override else "metadata" if server.policy else "segment"
        return InstanceOut(
            id=server.id,
            name=server.name,
            host=server.host,
            status=server.status,
            policy=policy,
            priority=priority,
            policy_source=source,
        )

    @app.put(
        "/v1/instances/{instance_id}/policy",
        responses=answers(400, 401, 422),
        dependencies=auth,
        tags=["instances"],
    )
    def set_instance_policy(
        instance_id: Name, body: InstancePolicyIn, scope: Scope = api.scope
    ) -> InstanceOut:
        api.require_instance(scope, instance_id)
        p = store.set_instance_policy(InstancePolicy(instance_id, body.policy, body.priority))
        LOG.info("instance %s: policy override %s priority %d", instance_id, p.policy, p.priority)
        return InstanceOut(
            id=p.instance_id, policy=p.policy, priority=p.priority, policy_source="override"
        )

    @app.delete(
        "/v1/instances/{instance_id}/policy",
        status_code=204,
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["instances"],
    )
    def delete_instance_policy(instance_id: Name, scope: Scope = api.scope) -> None:
        api.require_instance(scope, instance_id)
        store.delete_instance_policy(instance_id)
        LOG.info("instance %s: policy override removed", instance_id)


def _recovery_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """Host failures and their recoveries."""
    store, engine, clock = api.store, api.engine, api.clock

    @app.get("/v1/failures", responses=answers(401, 422), dependencies=auth, tags=["failures"])
    def list_failures(
        host: Filter = None,
        status: FailureStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[FailureOut]:
        return [
            FailureOut.of(f) for f in store.list_failures(host=host, status=status, limit=limit)
        ]

    @app.get(
        "/v1/failures/{failure_id}",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["failures"],
    )
    def get_failure(failure_id: Id) -> FailureOut:
        return FailureOut.of(store.get_failure(failure_id))

    @app.get("/v1/recoveries", responses=answers(401, 422), dependencies=auth, tags=["recoveries"])
    def list_recoveries(
        host: Filter = None,
        status: RecoveryStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[RecoveryOut]:
        statuses = [status] if status else None
        return [
            RecoveryOut.of(r)
            for r in store.list_recoveries(host=host, statuses=statuses, limit=limit)
        ]

    @app.get(
        "/v1/recoveries/{recovery_id}",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["recoveries"],
    )
    def get_recovery(recovery_id: Id) -> RecoveryOut:
        return RecoveryOut.of(store.get_recovery(recovery_id))

    @app.post(
        "/v1/recoveries/{recovery_id}/retry",
        responses=answers(401, 404, 409, 422),
        dependencies=auth,
        tags=["recoveries"],
    )
    def retry_recovery(recovery_id: Id) -> RecoveryOut:
        """Retry a failed recovery once its cause is fixed (e.g. the BMC answers again):
        its failed steps run again with a fresh attempt budget."""
        current = store.get_recovery(recovery_id)
        event = make_event(
            "vigil.recovery.retried",
            at=clock.wall(),
            host=current.host,
            recovery_id=recovery_id,
            requested_by="operator",
        )
        recovery = store.retry_recovery(recovery_id, at=clock.wall(), events=[event])
        LOG.warning("host %s: recovery %d retried by operator", recovery.host, recovery_id)
        engine.wake()
        return RecoveryOut.of(recovery)


def _event_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """Events and the event stream."""
    store, closing = api.store, api.closing

    @app.get("/v1/events", responses=answers(401, 422), dependencies=auth, tags=["events"])
    def list_events(
        after: Cursor = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        host: Filter = None,
        scope: Scope = api.scope,
    ) -> list[dict[str, Any]]:
        """Oldest first; a project's caller sees its instances' events only."""
        events = store.list_events(after=after, limit=limit, host=host, project_id=scope.project_id)
        return [event_as_json(e) for e in events]

    @app.get("/v1/events/stream", responses=answers(401, 422), dependencies=auth, tags=["events"])
    async def stream_events(
        request: Request,
        after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=MAX_ID)] = None,
        scope: Scope = api.scope,
    ) -> StreamingResponse:
        """Server-sent events, each with its seq as id; a client resumes after a drop with
        Last-Event-ID (or ?after=). Without either it starts at the newest event. Both are
        validated before the 200: a bad one is a 422, not a stream that breaks. A
        project's caller is sent its instances' events only."""
        if after is None:
            after = last_event_id
        start = after if after is not None else await asyncio.to_thread(store.last_event_seq)

        async def frames() -> Any:
            cursor, idle = start, 0.0
            while not closing.is_set() and not await request.is_disconnected():
                events = await asyncio.to_thread(
                    store.list_events, after=cursor, limit=200, project_id=scope.project_id
                )
                for e in events:
                    cursor = e.seq
                    data = json.dumps(event_as_json(e), separators=(",", ":"))
                    yield f"id: {e.seq}\nevent: {e.event_type}\ndata: {data}\n\n"
                if events:
                    idle = 0.0
                    continue
                idle += 0.05
                if idle >= 15:  # keep proxies from closing a quiet stream
                    idle = 0.0
                    yield ": keepalive\n\n"
                await asyncio.sleep(0.05)

        return StreamingResponse(
            frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


def _subscription_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """Webhook subscriptions (each a project's, or an admin's for every project) and
    their dead letters."""
    store, clock = api.store, api.clock

    def _check_subscription(body: SubscriptionIn) -> None:
        """The checks pydantic cannot make, refused as its own are (422, field named)."""
        problem = validate_webhook_url(body.url)
        if problem:
            raise _refused(("body", "url"), problem)
        for n, t in enumerate(body.event_types):
            known = t in CATALOGUE or (
                t.endswith(".*") and any(e.startswith(t[:-1]) for e in CATALOGUE)
            )
            if not known:
                raise _refused(("body", "event_types", n), f"{t!r} matches no vigil event type")

    def _subscription_out(sub: Subscription) -> SubscriptionOut:
        return SubscriptionOut(
            name=sub.name, url=sub.url, event_types=list(sub.event_types), created_at=sub.created_at
        )

    @app.post(
        "/v1/subscriptions",
        responses=answers(400, 401, 409, 422),
        status_code=201,
        dependencies=auth,
        tags=["subscriptions"],
    )
    def create_subscription(body: SubscriptionIn, scope: Scope = api.scope) -> SubscriptionOut:
        """A project's caller subscribes its project: only its instances' events are sent."""
        _check_subscription(body)
        sub = store.create_subscription(
            Subscription(
                body.name,
                body.url,
                body.secret,
                tuple(body.event_types),
                clock.wall(),
                project_id=scope.project_id,
            ),
            sink=webhook_sink(body.name),
        )
        LOG.info(
            "subscription %s created: %s (%s)",
            sub.name,
            sub.url,
            f"project {sub.project_id}" if sub.project_id else "every project",
        )
        return _subscription_out(sub)

    def _subscription(name: str, scope: Scope) -> Subscription:
        sub = store.get_subscription(name)
        if not scope.sees(sub.project_id):
            raise NotFoundError(f"subscription {name!r} does not exist")
        return sub

    @app.get("/v1/subscriptions", responses=answers(401), dependencies=auth, tags=["subscriptions"])
    def list_subscriptions(scope: Scope = api.scope) -> list[SubscriptionOut]:
        return [_subscription_out(s) for s in store.list_subscriptions(project_id=scope.project_id)]

    @app.get(
        "/v1/subscriptions/{name}",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["subscriptions"],
    )
    def get_subscription(name: Name, scope: Scope = api.scope) -> SubscriptionOut:
        return _subscription_out(_subscription(name, scope))

    @app.delete(
        "/v1/subscriptions/{name}",
        status_code=204,
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["subscriptions"],
    )
    def delete_subscription(name: Name, scope: Scope = api.scope) -> None:
        _subscription(name, scope)
        store.delete_subscription(name, sink=webhook_sink(name))
        LOG.info("subscription %s deleted", name)

    @app.post(
        "/v1/subscriptions/{name}/test",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["subscriptions"],
    )
    def test_subscription(name: Name, scope: Scope = api.scope) -> dict[str, Any]:
        """Send one test event to this subscription now and say how it went."""
        sub = _subscription(name, scope)
        event = make_event(
            "vigil.subscription.test",
            at=clock.wall(),
            subscription=name,
            message="test event fired by an operator",
        )
        try:
            WebhookNotifier(sub.url, sub.secret).publish(event)
        except (DriverError, ValueError) as exc:  # ValueError: a host name httpx cannot encode
            return {"delivered": False, "error": str(exc), "event_id": event.id}
        return {"delivered": True, "event_id": event.id}

    @app.get(
        "/v1/dead-letters", responses=answers(401, 422), dependencies=auth, tags=["subscriptions"]
    )
    def list_dead_letters(sink: Filter = None, scope: Scope = api.scope) -> list[dict[str, Any]]:
        """Events a sink gave up on; a project's caller sees its subscriptions' only."""
        letters = store.list_dead_letters(sink=sink)
        if scope.project_id is not None:
            mine = {
                webhook_sink(s.name) for s in store.list_subscriptions(project_id=scope.project_id)
            }
            letters = [dl for dl in letters if dl.sink in mine]
        return [dl.__dict__ for dl in letters]


def _consumer_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """A consumer's own recovery of an instance: evacuate from a fenced host, restart."""
    store, engine, compute, clock = api.store, api.engine, api.compute, api.clock

    def _fenced_recovery(host: str) -> int:
        """The recovery of a host whose fence is confirmed: the only place a consumer's
        evacuation may start from (S1)."""
        record = store.get_host(host)
        if record.state not in (HostState.FAILED, HostState.RECOVERED):
            raise HTTPException(
                409,
                f"host {host} is {record.state.value}: vigil evacuates "
                "only from a failed host it has fenced",
            )
        for recovery in store.list_recoveries(host=host, limit=1):
            fence = recovery.step(StepKind.FENCE)
            if fence is not None and fence.status == StepStatus.SUCCEEDED:
                return recovery.id
        raise HTTPException(409, f"host {host} is not fenced (yet): nothing may be evacuated")

    @app.post(
        "/v1/instances/{instance_id}/evacuate",
        status_code=202,
        responses=answers(400, 401, 404, 409, 422, 502),
        dependencies=auth,
        tags=["instances"],
    )
    def evacuate_instance(
        instance_id: Name, body: EvacuateIn, scope: Scope = api.scope
    ) -> RecoveryOut:
        """A consumer's recovery: evacuate this instance of a fenced host (optionally to a
        named host). Recorded as a step of the host's recovery, like vigil's own."""
        try:
            server = compute.get_server(instance_id)
        except NotFound:
            raise NotFoundError(f"instance {instance_id} not found") from None
        api.require_instance(scope, instance_id, server.project_id or "")
        if not server.host:
            raise HTTPException(409, f"instance {instance_id} has no host")
        if body.target_host is not None:
            store.get_host(body.target_host)  # 404 for a host vigil does not know
        recovery_id = _fenced_recovery(server.host)
        now = clock.wall()
        event = make_event(
            "vigil.consumer.action",
            at=now,
            action="evacuate",
            instance_id=instance_id,
            host=server.host,
            target_host=body.target_host,
            recovery_id=recovery_id,
            reason="requested through the API",
        )
        recovery = store.add_steps(
            recovery_id,
            [NewStep(StepKind.EVACUATE, instance_id, server.name, target_host=body.target_host)],
            at=now,
            reason=f"consumer asked to evacuate {server.name}",
            events=[event],
        )
        LOG.info(
            "host %s: consumer asked to evacuate instance %s (%s)%s",
            server.host,
            server.name,
            instance_id,
            f" to {body.target_host}" if body.target_host else "",
        )
        engine.wake()
        return RecoveryOut.of(recovery)

    @app.post(
        "/v1/instances/{instance_id}/restart",
        responses=answers(401, 404, 409, 422, 502),
        dependencies=auth,
        tags=["instances"],
    )
    def restart_instance(instance_id: Name, scope: Scope = api.scope) -> dict[str, Any]:
        """A consumer's recovery: hard-reboot this instance on its (healthy) host."""
        server = compute.get_server(instance_id)
        api.require_instance(scope, instance_id, server.project_id or "")
        if server.host:
            state = store.get_host(server.host).state
            if state in (HostState.SUSPECT, HostState.FAILED, HostState.RECOVERED):
                raise HTTPException(409, f"host {server.host} is {state.value}: evacuate instead")
        engine.restart_instance(instance_id, server.host)  # recorded, done by a worker
        LOG.info(
            "host %s: instance %s (%s) restarted on a consumer's request",
            server.host,
            server.name,
            instance_id,
        )
        engine.wake()
        return {"instance_id": instance_id, "restarted": True}


def _failure_action_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """An operator's or consumer's word on a host failure: handled, or dismissed."""
    store, engine, clock = api.store, api.engine, api.clock

    @app.post(
        "/v1/failures/{failure_id}/handled",
        responses=answers(400, 401, 404, 409, 422),
        dependencies=auth,
        tags=["failures"],
    )
    def failure_handled(failure_id: Id, body: HandledIn) -> FailureOut:
        """A consumer (or operator) says a failure is taken care of."""
        failure = store.get_failure(failure_id)
        event = make_event(
            "vigil.consumer.action",
            at=clock.wall(),
            action="handled",
            host=failure.host,
            failure_id=failure_id,
            reason=body.reason,
        )
        done = store.resolve_failure(
            failure_id, at=clock.wall(), reason=body.reason, events=[event]
        )
        LOG.info("host %s: failure %d marked handled: %s", failure.host, failure_id, body.reason)
        engine.wake()
        return FailureOut.of(done)

    @app.post(
        "/v1/failures/{failure_id}/dismiss",
        responses=answers(400, 401, 404, 409, 422),
        dependencies=auth,
        tags=["failures"],
    )
    def failure_dismiss(failure_id: Id, body: DismissIn) -> FailureOut:
        """An operator takes back a declaration the storm guard paused before it acted
        (nothing was fenced or moved). 409 once any of its steps has run."""
        failure = store.get_failure(failure_id)
        held = [
            r
            for r in store.list_recoveries(host=failure.host, statuses=[RecoveryStatus.PAUSED])
            if r.failure_id == failure_id
        ]
        if not held:
            raise InvalidTransition(
                f"failure {failure_id} of host {failure.host} has no paused recovery: only a "
                "paused declaration that never acted can be dismissed"
            )
        engine.dismiss(held[0].id, f"dismissed by operator: {body.reason}")
        return FailureOut.of(store.get_failure(failure_id))


def _guest_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """Guest-OS failures and host services, as the agents reported them."""
    store, clock, guest = api.store, api.clock, api.guest

    @app.get(
        "/v1/guest-failures",
        responses=answers(401, 422),
        dependencies=auth,
        tags=["guest failures"],
    )
    def list_guest_failures(
        instance_id: Filter = None,
        status: GuestFailureStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        scope: Scope = api.scope,
    ) -> list[GuestFailureOut]:
        statuses = [status] if status is not None else None
        failures = store.list_guest_failures(
            instance_id=instance_id, statuses=statuses, limit=limit, project_id=scope.project_id
        )
        return [GuestFailureOut.of(f) for f in failures]

    def _guest_failure(failure_id: int, scope: Scope) -> InstanceFailure:
        f = store.get_guest_failure(failure_id)
        project = store.instance_projects([f.instance_id]).get(f.instance_id)
        if scope.project_id is not None and not scope.sees(project):
            raise NotFoundError(f"guest failure {failure_id} does not exist")
        return f

    @app.get(
        "/v1/guest-failures/{failure_id}",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["guest failures"],
    )
    def get_guest_failure(failure_id: Id, scope: Scope = api.scope) -> GuestFailureOut:
        return GuestFailureOut.of(_guest_failure(failure_id, scope))

    @app.post(
        "/v1/guest-failures/{failure_id}/handled",
        responses=answers(400, 401, 404, 409, 422),
        dependencies=auth,
        tags=["guest failures"],
    )
    def guest_failure_handled(
        failure_id: Id, body: HandledIn, scope: Scope = api.scope
    ) -> GuestFailureOut:
        """An operator or the owner says a guest failure is taken care of (typically an
        escalated one): resolved, a planned restart cancelled; the next failure of the
        instance starts a new episode with a fresh restart budget."""
        f = _guest_failure(failure_id, scope)
        if f.action_status is StepStatus.RUNNING:
            raise HTTPException(409, f"guest failure {failure_id}: its restart is running")
        if f.status is GuestFailureStatus.RESOLVED:
            return GuestFailureOut.of(f)
        event = make_event(
            "vigil.consumer.action",
            at=clock.wall(),
            action="handled",
            host=f.host,
            instance_id=f.instance_id,
            failure_id=failure_id,
            reason=body.reason,
        )
        done = store.update_guest_failure(
            failure_id,
            at=clock.wall(),
            status=GuestFailureStatus.RESOLVED,
            action_status=None,
            seen_count=f.count,
            events=[event],
        )
        LOG.info(
            "host %s: instance %s: guest failure %d marked handled: %s",
            f.host,
            f.instance_id,
            failure_id,
            body.reason,
        )
        if guest is not None:
            guest.wake()
        return GuestFailureOut.of(done)

    @app.get(
        "/v1/hosts/{name}/services",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["hosts"],
    )
    def get_host_services(name: Name) -> HostServicesOut:
        store.get_host(name)  # 404 for an unknown host
        services = store.get_host_services(name)
        if services is None:
            raise HTTPException(404, f"host {name!r}: no service report from its agent yet")
        return HostServicesOut.of(services)


def _server_routes(
    app: FastAPI, store: Store, ownership: SegmentOwnership, auth: Sequence[Any]
) -> None:
    """The vigil-servers: who owns which segment, under which epoch (``vigil status``)."""

    @app.get("/v1/servers", responses=answers(401), dependencies=auth, tags=["control"])
    def servers() -> ServersOut:
        s = ownership.status()
        return ServersOut(
            member=s.member,
            backend=s.backend,
            backend_healthy=s.healthy,
            error=s.error,
            members=list(s.members),
            acting_for=round(s.acting_for, 3),
            acting_on=dict(s.owned),
            owners=[
                SegmentOwnerOut(
                    segment=o.segment, owner=o.owner, epoch=o.epoch, taken_at=o.taken_at
                )
                for o in store.list_segment_owners()
            ],
        )


def _control_routes(app: FastAPI, api: _Api, auth: Sequence[Any]) -> None:
    """The cloud-wide pause (S4)."""
    store, engine, clock = api.store, api.engine, api.clock

    @app.get("/v1/control", responses=answers(401), dependencies=auth, tags=["control"])
    def get_control() -> ControlOut:
        c = store.get_control()
        return ControlOut(paused=c.paused, reason=c.reason, changed_at=c.changed_at)

    @app.post(
        "/v1/control/pause", responses=answers(400, 401, 422), dependencies=auth, tags=["control"]
    )
    def pause(body: PauseIn) -> ControlOut:
        c = store.set_control(paused=True, reason=body.reason, at=clock.wall())
        LOG.warning("all automatic recovery paused by operator: %s", body.reason)
        engine.wake()
        return ControlOut(paused=c.paused, reason=c.reason, changed_at=c.changed_at)

    @app.post("/v1/control/resume", responses=answers(401), dependencies=auth, tags=["control"])
    def resume() -> ControlOut:
        c = store.set_control(paused=False, reason="", at=clock.wall())
        LOG.warning("automatic recovery resumed by operator")
        engine.wake()
        return ControlOut(paused=c.paused, reason=c.reason, changed_at=c.changed_at)
