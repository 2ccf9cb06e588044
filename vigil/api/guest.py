"""The agents' reports: guest failures (``POST /v1/agents/{host}/reports``) and the state
of the host's watched services (``POST /v1/agents/{host}/services``).

Authenticated by the host's agent key, not the operator's bearer token: the body is
signed with HMAC-SHA256 (``vigil.wire.reports``) under the key derived for the host of
the URL (``vigil.wire.keys``), so an agent holds no operator credential and cannot
report for another host.
A missing or wrong signature is 401, an unknown host 404, a malformed body 400; each
refusal is logged with the host and the client's address. The answer (200) comes only
after the reports are persisted with their events (S2): the agent retries until then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request

from vigil.api.schemas import Problem
from vigil.engine.guest_engine import GuestEngine
from vigil.model import HostServices
from vigil.wire.keys import AgentKeys
from vigil.wire.reports import SIGNATURE_HEADER, BadReport, decode_reports, decode_services

LOG = logging.getLogger("vigil.api.guest")
T = TypeVar("T")
# Declared in the OpenAPI document: the body is the agent's signed bytes, not a model.
_REFUSALS: dict[int | str, dict[str, object]] = {
    400: {"model": Problem, "description": "malformed report"},
    401: {"model": Problem, "description": "missing or wrong agent signature"},
    404: {"model": Problem, "description": "unknown host (or host services not watched)"},
}


def add_guest_routes(
    app: FastAPI,
    *,
    guest: GuestEngine,
    agent_key: AgentKeys | str,
    known_host: Callable[[str], bool],
) -> None:
    """``agent_key``: the servers' master keys (a string: the one master key)."""
    keys = AgentKeys.of(agent_key)

    async def _accepted(host: str, request: Request, decode: Callable[..., T], what: str) -> T:
        """The body, verified and parsed by ``decode``; else 401 (signature), 400
        (malformed) or 404 (unknown host), each refusal logged with host and client."""
        body = await request.body()
        client = request.client.host if request.client else "?"
        try:
            signature = request.headers.get(SIGNATURE_HEADER)
            parsed, _ = keys.first_valid(host, lambda key: decode(body, signature, key, host=host))
        except BadReport as exc:
            status = 400 if str(exc).startswith("malformed") else 401
            LOG.warning("%s for host %s from %s refused: %s", what, host, client, exc)
            raise HTTPException(status, str(exc)) from exc
        if not known_host(host):
            LOG.warning("%s from %s refused: unknown host %s", what, client, host)
            raise HTTPException(404, f"unknown host {host!r}")
        return parsed

    @app.post("/v1/agents/{host}/reports", tags=["agents"], responses=_REFUSALS)
    async def agent_reports(host: str, request: Request) -> dict[str, object]:
        reports = await _accepted(host, request, decode_reports, "agent report")
        # The store is synchronous: keep the event loop free while it writes.
        failures = await anyio.to_thread.run_sync(guest.receive, reports)
        return {
            "accepted": [r.id for r in reports],
            "failures": [{"id": f.id, "instance_id": f.instance_id} for f in failures],
        }

    @app.post("/v1/agents/{host}/services", tags=["agents"], responses=_REFUSALS)
    async def agent_services(host: str, request: Request) -> dict[str, object]:
        if guest.services is None:
            raise HTTPException(404, "this server does not watch host services")
        keeper = guest.services
        at, services = await _accepted(host, request, decode_services, "service report")

        def record() -> tuple[HostServices, bool]:
            return keeper.receive(host, services, reported_at=at)

        stored, newer = await anyio.to_thread.run_sync(record)
        if newer:
            guest.wake()
        return {"accepted": newer, "services_down": list(stored.down)}
