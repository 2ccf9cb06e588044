"""vigil's REST API (FastAPI: typed routes and an OpenAPI document at /openapi.json).

The API records operator intents and wakes the engine; it never fences or evacuates
itself. Every /v1 route needs the bearer token (S5); refusals are logged. Store errors map
to HTTP: not found → 404, duplicates and state conflicts → 409, bad values → 400 or 422
naming the field — and a refused request changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vigil import __version__
from vigil.api.schemas import (
    ControlOut,
    FailureOut,
    HostIn,
    HostOut,
    HostPatch,
    InstanceOut,
    InstancePolicyIn,
    PauseIn,
    RecoveryOut,
    SegmentIn,
    SegmentOut,
    SegmentPatch,
)
from vigil.clock import Clock
from vigil.config import RecoverySettings
from vigil.drivers.compute import ComputeDriver
from vigil.drivers.errors import DriverError, NotFound
from vigil.engine.engine import Engine
from vigil.engine.steps import effective_policy
from vigil.model import (
    FailureStatus,
    Host,
    InstancePolicy,
    InvalidTransition,
    RecoveryStatus,
    Segment,
)
from vigil.store import AlreadyExists, InUse, NotFoundError, Store

LOG = logging.getLogger("vigil.api")
_BEARER = HTTPBearer(auto_error=False)


def create_app(
    *,
    store: Store,
    engine: Engine,
    compute: ComputeDriver,
    token: str,
    clock: Clock,
    heartbeat_age: Callable[[str], float | None],
    defaults: RecoverySettings,
) -> FastAPI:
    app = FastAPI(
        title="vigil",
        version=__version__,
        description="High availability for OpenStack instances: hosts, failures, recoveries.",
    )

    def authenticated(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            client = request.client.host if request.client else "?"
            LOG.warning(
                "API %s %s from %s refused: %s",
                request.method,
                request.url.path,
                client,
                "no token" if creds is None else "wrong token",
            )
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

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

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(NotFoundError, _error(404))
    app.add_exception_handler(AlreadyExists, _error(409))
    app.add_exception_handler(InUse, _error(409))
    app.add_exception_handler(InvalidTransition, _error(409))
    app.add_exception_handler(ValueError, _error(400))
    app.add_exception_handler(DriverError, _error(502))

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    auth = [Depends(authenticated)]

    # --- segments ---------------------------------------------------------------------
    @app.get("/v1/segments", dependencies=auth, tags=["segments"])
    def list_segments() -> list[SegmentOut]:
        return [SegmentOut.of(s) for s in store.list_segments()]

    @app.post("/v1/segments", status_code=201, dependencies=auth, tags=["segments"])
    def create_segment(body: SegmentIn) -> SegmentOut:
        fields = body.model_dump()
        if fields["max_failed_share"] is None:
            fields["max_failed_share"] = defaults.max_failed_share
        if fields["max_parallel_evacuations"] is None:
            fields["max_parallel_evacuations"] = defaults.max_parallel_evacuations
        seg = store.create_segment(Segment(**fields))
        LOG.info("segment %s created", seg.name)
        return SegmentOut.of(seg)

    @app.get("/v1/segments/{name}", dependencies=auth, tags=["segments"])
    def get_segment(name: str) -> SegmentOut:
        return SegmentOut.of(store.get_segment(name))

    @app.patch("/v1/segments/{name}", dependencies=auth, tags=["segments"])
    def update_segment(name: str, body: SegmentPatch) -> SegmentOut:
        changes = body.model_dump(exclude_none=True)
        if changes.get("paused") is False:
            changes["pause_reason"] = ""
        elif changes.get("paused") is True:
            changes["pause_reason"] = "paused by operator"
        seg = store.update_segment(name, **changes)
        LOG.info("segment %s updated: %s", name, ", ".join(sorted(changes)))
        engine.wake()
        return SegmentOut.of(seg)

    @app.delete("/v1/segments/{name}", status_code=204, dependencies=auth, tags=["segments"])
    def delete_segment(name: str) -> None:
        store.delete_segment(name)
        LOG.info("segment %s deleted", name)

    # --- hosts --------------------------------------------------------------------------
    @app.get("/v1/hosts", dependencies=auth, tags=["hosts"])
    def list_hosts(segment: str | None = None) -> list[HostOut]:
        return [HostOut.of(h, heartbeat_age(h.name)) for h in store.list_hosts(segment)]

    @app.post("/v1/hosts", status_code=201, dependencies=auth, tags=["hosts"])
    def create_host(body: HostIn) -> HostOut:
        host = store.create_host(
            Host(
                name=body.name,
                segment=body.segment,
                maintenance=body.maintenance,
                reserved=body.reserved,
                fencing=tuple(m.to_model() for m in body.fencing),
            )
        )
        LOG.info("host %s created in segment %s", host.name, host.segment)
        engine.wake()
        return HostOut.of(host)

    @app.get("/v1/hosts/{name}", dependencies=auth, tags=["hosts"])
    def get_host(name: str) -> HostOut:
        return HostOut.of(store.get_host(name), heartbeat_age(name))

    @app.patch("/v1/hosts/{name}", dependencies=auth, tags=["hosts"])
    def update_host(name: str, body: HostPatch) -> HostOut:
        changes: dict[str, Any] = body.model_dump(exclude_none=True, exclude={"fencing"})
        if body.fencing is not None:
            changes["fencing"] = tuple(m.to_model() for m in body.fencing)
        host = store.update_host(name, **changes)
        LOG.info("host %s updated: %s", name, ", ".join(sorted(changes)))
        engine.wake()
        return HostOut.of(host, heartbeat_age(name))

    @app.delete("/v1/hosts/{name}", status_code=204, dependencies=auth, tags=["hosts"])
    def delete_host(name: str) -> None:
        store.delete_host(name)
        LOG.info("host %s deleted", name)

    @app.post("/v1/hosts/{name}/restore", dependencies=auth, tags=["hosts"])
    def restore_host(name: str) -> HostOut:
        """Put a recovered host back into use (compute service up and enabled)."""
        return HostOut.of(engine.call(lambda: engine.restore_host(name)))

    # --- instances ----------------------------------------------------------------------
    @app.get("/v1/instances", dependencies=auth, tags=["instances"])
    def list_instances(host: str | None = None) -> list[InstanceOut]:
        """With ``host``: the instances Nova places there and their effective policy.
        Without: the instances with an operator override."""
        if host is None:
            return [
                InstanceOut(
                    id=p.instance_id, policy=p.policy, priority=p.priority, policy_source="override"
                )
                for p in store.list_instance_policies()
            ]
        segment = store.get_segment(store.get_host(host).segment)
        out = []
        for server in compute.list_servers(host):
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

    @app.get("/v1/instances/{instance_id}", dependencies=auth, tags=["instances"])
    def get_instance(instance_id: str) -> InstanceOut:
        override = store.get_instance_policy(instance_id)
        try:
            server = compute.get_server(instance_id)
        except NotFound:
            if override is None:
                raise NotFoundError(f"instance {instance_id} not found") from None
            return InstanceOut(
                id=instance_id,
                policy=override.policy,
                priority=override.priority,
                policy_source="override",
            )
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

    @app.put("/v1/instances/{instance_id}/policy", dependencies=auth, tags=["instances"])
    def set_instance_policy(instance_id: str, body: InstancePolicyIn) -> InstanceOut:
        p = store.set_instance_policy(InstancePolicy(instance_id, body.policy, body.priority))
        LOG.info("instance %s: policy override %s priority %d", instance_id, p.policy, p.priority)
        return InstanceOut(
            id=p.instance_id, policy=p.policy, priority=p.priority, policy_source="override"
        )

    @app.delete(
        "/v1/instances/{instance_id}/policy", status_code=204, dependencies=auth, tags=["instances"]
    )
    def delete_instance_policy(instance_id: str) -> None:
        store.delete_instance_policy(instance_id)
        LOG.info("instance %s: policy override removed", instance_id)

    # --- failures and recoveries --------------------------------------------------------
    @app.get("/v1/failures", dependencies=auth, tags=["failures"])
    def list_failures(
        host: str | None = None,
        status: FailureStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[FailureOut]:
        return [
            FailureOut.of(f) for f in store.list_failures(host=host, status=status, limit=limit)
        ]

    @app.get("/v1/failures/{failure_id}", dependencies=auth, tags=["failures"])
    def get_failure(failure_id: int) -> FailureOut:
        return FailureOut.of(store.get_failure(failure_id))

    @app.get("/v1/recoveries", dependencies=auth, tags=["recoveries"])
    def list_recoveries(
        host: str | None = None,
        status: RecoveryStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[RecoveryOut]:
        statuses = [status] if status else None
        return [
            RecoveryOut.of(r)
            for r in store.list_recoveries(host=host, statuses=statuses, limit=limit)
        ]

    @app.get("/v1/recoveries/{recovery_id}", dependencies=auth, tags=["recoveries"])
    def get_recovery(recovery_id: int) -> RecoveryOut:
        return RecoveryOut.of(store.get_recovery(recovery_id))

    @app.post("/v1/recoveries/{recovery_id}/retry", dependencies=auth, tags=["recoveries"])
    def retry_recovery(recovery_id: int) -> RecoveryOut:
        """Retry a failed recovery once its cause is fixed (e.g. the BMC answers again):
        its failed steps run again with a fresh attempt budget."""
        recovery = store.retry_recovery(recovery_id, at=clock.wall())
        LOG.warning("host %s: recovery %d retried by operator", recovery.host, recovery_id)
        engine.wake()
        return RecoveryOut.of(recovery)

    # --- cloud-wide pause (S4) ------------------------------------------------------------
    @app.get("/v1/control", dependencies=auth, tags=["control"])
    def get_control() -> ControlOut:
        c = store.get_control()
        return ControlOut(paused=c.paused, reason=c.reason, changed_at=c.changed_at)

    @app.post("/v1/control/pause", dependencies=auth, tags=["control"])
    def pause(body: PauseIn) -> ControlOut:
        c = store.set_control(paused=True, reason=body.reason, at=clock.wall())
        LOG.warning("all automatic recovery paused by operator: %s", body.reason)
        engine.wake()
        return ControlOut(paused=c.paused, reason=c.reason, changed_at=c.changed_at)

    @app.post("/v1/control/resume", dependencies=auth, tags=["control"])
    def resume() -> ControlOut:
        c = store.set_control(paused=False, reason="", at=clock.wall())
        LOG.warning("automatic recovery resumed by operator")
        engine.wake()
        return ControlOut(paused=c.paused, reason=c.reason, changed_at=c.changed_at)

    return app
