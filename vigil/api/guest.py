"""The agents' reports: guest failures (``POST /v1/agents/{host}/reports``) and the state
of the host's watched services (``POST /v1/agents/{host}/services``).

Authenticated by the agent key, not the operator's bearer token: the body is signed
with HMAC-SHA256 (``vigil.agent.reports``), so an agent holds no operator credential.
A missing or wrong signature is 401, an unknown host 404, a malformed body 400; each
refusal is logged with the host and the client's address. The answer (200) comes only
after the reports are persisted with their events (S2): the agent retries until then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request

from vigil.agent.reports import SIGNATURE_HEADER, BadReport, decode_reports, decode_services
from vigil.engine.guest_engine import GuestEngine
from vigil.model import HostServices

LOG = logging.getLogger("vigil.api.guest")


def add_guest_routes(
    app: FastAPI, *, guest: GuestEngine, agent_key: str, known_host: Callable[[str], bool]
) -> None:
    key = agent_key.encode()

    @app.post("/v1/agents/{host}/reports", tags=["agents"])
    async def agent_reports(host: str, request: Request) -> dict[str, object]:
        body = await request.body()
        client = request.client.host if request.client else "?"
        try:
            reports = decode_reports(body, request.headers.get(SIGNATURE_HEADER), key, host=host)
        except BadReport as exc:
            status = 400 if str(exc).startswith("malformed") else 401
            LOG.warning("agent report for host %s from %s refused: %s", host, client, exc)
            raise HTTPException(status, str(exc)) from exc
        if not known_host(host):
            LOG.warning("agent report from %s refused: unknown host %s", client, host)
            raise HTTPException(404, f"unknown host {host!r}")
        # The store is synchronous: keep the event loop free while it writes.
        failures = await anyio.to_thread.run_sync(guest.receive, reports)
        return {
            "accepted": [r.id for r in reports],
            "failures": [{"id": f.id, "instance_id": f.instance_id} for f in failures],
        }

    @app.post("/v1/agents/{host}/services", tags=["agents"])
    async def agent_services(host: str, request: Request) -> dict[str, object]:
        if guest.services is None:
            raise HTTPException(404, "this server does not watch host services")
        keeper = guest.services
        body = await request.body()
        client = request.client.host if request.client else "?"
        try:
            at, services = decode_services(
                body, request.headers.get(SIGNATURE_HEADER), key, host=host
            )
        except BadReport as exc:
            status = 400 if str(exc).startswith("malformed") else 401
            LOG.warning("service report for host %s from %s refused: %s", host, client, exc)
            raise HTTPException(status, str(exc)) from exc
        if not known_host(host):
            LOG.warning("service report from %s refused: unknown host %s", client, host)
            raise HTTPException(404, f"unknown host {host!r}")

        def record() -> tuple[HostServices, bool]:
            return keeper.receive(host, services, reported_at=at)

        stored, newer = await anyio.to_thread.run_sync(record)
        if newer:
            guest.wake()
        return {"accepted": newer, "services_down": list(stored.down)}
