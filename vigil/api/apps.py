"""Application checks (issue 17) over HTTP.

- ``POST /v1/agents/{host}/app`` — the agent's check states, signed with its host's
  agent key; the answer (its plan and the guest commands waiting) is signed with the
  same key, so an agent runs in its guests only what a server holding the master key
  asked (``vigil.wire.app_checks``, ``vigil.wire.keys``).
- ``POST /v1/instances/{id}/app/heartbeat`` — the application's own heartbeat, or
  "recover me now" (``{"reset": true}``), authenticated by the instance's credential in
  ``X-Vigil-App-Credential``, not by the operator's token: an application holds no
  operator credential, and its credential is good for its instance only.
- ``GET /v1/apps``, ``GET /v1/instances/{id}/app``, ``GET .../app/credential`` and
  ``POST .../app/close`` — the operator's (bearer token) view and hand.

A check's history is the event stream: ``GET /v1/events?instance_id=...`` (``vigil.app.*``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response

from vigil.api.auth import Caller, Scope
from vigil.api.schemas import (
    AppBeatIn,
    AppCloseIn,
    AppCredentialOut,
    AppInstanceOut,
    Problem,
    answers,
)
from vigil.engine.app_engine import AppHealth, BadCredential
from vigil.store import NotFoundError
from vigil.wire.app_checks import decode_app_report, encode_app_answer
from vigil.wire.keys import AgentKeys
from vigil.wire.reports import SIGNATURE_HEADER, BadReport, sign

LOG = logging.getLogger("vigil.api.apps")
CREDENTIAL_HEADER = "X-Vigil-App-Credential"
_TEXT = r"^[^\x00-\x1f\x7f]+$"  # as vigil.api.app's names: no control characters
InstanceId = Annotated[str, Path(max_length=255, pattern=_TEXT)]
_AGENT_REFUSALS: dict[int | str, dict[str, object]] = {
    400: {"model": Problem, "description": "malformed report"},
    401: {"model": Problem, "description": "missing or wrong agent signature"},
    404: {"model": Problem, "description": "unknown host"},
}


def add_app_routes(
    app: FastAPI,
    *,
    apps: AppHealth,
    agent_key: AgentKeys | str,
    known_host: Any,
    auth: Sequence[Any],
    require_instance: Callable[[Scope, str], None] = lambda _scope, _instance: None,
) -> None:
    """``auth``: the guard of the caller's routes (its first is the scope's dependency);
    ``require_instance``: 404 unless the instance is in the caller's scope."""
    # Without a guard (``auth`` empty: these routes mounted alone) nothing limits a call.
    scope_of = auth[0] if auth else Depends(lambda: Scope(Caller("unguarded"), None))
    keys = AgentKeys.of(agent_key)  # the servers' master keys (a string: the one)

    @app.post("/v1/agents/{host}/app", tags=["agents"], responses=_AGENT_REFUSALS)
    async def agent_app(host: str, request: Request) -> Response:
        body = await request.body()
        client = request.client.host if request.client else "?"
        try:
            signature = request.headers.get(SIGNATURE_HEADER)
            report, key = keys.first_valid(
                host, lambda k: decode_app_report(body, signature, k, host=host)
            )
        except BadReport as exc:
            status = 400 if str(exc).startswith("malformed") else 401
            LOG.warning("check report for host %s from %s refused: %s", host, client, exc)
            raise HTTPException(status, str(exc)) from exc
        if not known_host(host):
            LOG.warning("check report from %s refused: unknown host %s", client, host)
            raise HTTPException(404, f"unknown host {host!r}")
        answer = await anyio.to_thread.run_sync(apps.exchange, report)
        out = encode_app_answer(host, report.at, answer)
        return Response(
            out, media_type="application/json", headers={SIGNATURE_HEADER: sign(out, key)}
        )

    @app.post(
        "/v1/instances/{instance_id}/app/heartbeat",
        responses=answers(400, 401, 404, 422),
        tags=["applications"],
    )
    def app_heartbeat(
        instance_id: InstanceId,
        body: AppBeatIn | None = None,
        credential: Annotated[
            str | None, Header(alias=CREDENTIAL_HEADER, max_length=128, pattern=_TEXT)
        ] = None,
    ) -> AppInstanceOut:
        """The application's heartbeat (at least every ``interval`` seconds of its
        ``heartbeat`` check), or ``reset``: recover it now (the ladder's next rung)."""
        beat = body or AppBeatIn(reset=False, detail="")
        try:
            inst = apps.beat(instance_id, credential, reset=beat.reset, detail=beat.detail)
        except BadCredential as exc:
            LOG.warning("application heartbeat for instance %s refused: %s", instance_id, exc)
            raise HTTPException(401, str(exc)) from exc
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        return AppInstanceOut.of(inst)

    @app.get("/v1/apps", responses=answers(401, 422), dependencies=auth, tags=["applications"])
    def list_apps(
        host: Annotated[str | None, Query(max_length=255, pattern=_TEXT)] = None,
        failing: bool | None = None,
        scope: Scope = scope_of,
    ) -> list[AppInstanceOut]:
        """Instances with application checks; ``failing``: only those with an open
        failure (true) or without (false). A project's caller: its own only."""
        rows = apps.store.list_app_instances(host=host, episode_open=failing)
        if scope.project_id is not None:
            projects = apps.store.instance_projects([i.instance_id for i in rows])
            rows = [i for i in rows if scope.sees(projects.get(i.instance_id))]
        return [AppInstanceOut.of(i) for i in rows]

    @app.get(
        "/v1/instances/{instance_id}/app",
        responses=answers(401, 404, 422),
        dependencies=auth,
        tags=["applications"],
    )
    def get_app(instance_id: InstanceId, scope: Scope = scope_of) -> AppInstanceOut:
        require_instance(scope, instance_id)
        inst = apps.store.get_app_instance(instance_id)
        if inst is None:
            raise HTTPException(404, f"instance {instance_id} has no application checks")
        return AppInstanceOut.of(inst)

    @app.get(
        "/v1/instances/{instance_id}/app/credential",
        responses=answers(401, 422),
        dependencies=auth,
        tags=["applications"],
    )
    def app_credential(instance_id: InstanceId, scope: Scope = scope_of) -> AppCredentialOut:
        """What the instance's application sends in ``X-Vigil-App-Credential`` with its
        heartbeats (its owner's, to give the application; good for this instance only)."""
        require_instance(scope, instance_id)
        return AppCredentialOut(
            instance_id=instance_id,
            credential=apps.credential(instance_id),
            header=CREDENTIAL_HEADER,
        )

    @app.post(
        "/v1/instances/{instance_id}/app/close",
        responses=answers(400, 401, 404, 422),
        dependencies=auth,
        tags=["applications"],
    )
    def close_app(
        instance_id: InstanceId, body: AppCloseIn, scope: Scope = scope_of
    ) -> AppInstanceOut:
        """Close the instance's open application failure (an escalated one: the owner
        fixed it by hand). Should its checks still fail, vigil starts over."""
        require_instance(scope, instance_id)
        try:
            return AppInstanceOut.of(apps.close(instance_id, by=body.by, reason=body.reason))
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
