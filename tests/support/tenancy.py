"""Tenancy, checked over every route of the native API (issue 18): two projects, alpha
and beta, each with an instance; what names alpha's instance (the instance itself, its
guest failure, its application checks, alpha's webhook subscription) is reached by
alpha's member and reader (within their roles) and by an admin, and never by beta's
member, who gets 404 as if it did not exist. The routes that are not a project's
(hosts, segments, host failures, recoveries, control) refuse a project member (403).

The table is the application's own list of routes, so a new route is checked the day it
is added; what a route is expected to allow comes from ``vigil.api.policies``. The same
check runs with callers made up in-process (tests/api) and with a real Keystone's
tokens (tests/keystone).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.routing import APIRoute

from vigil.api import policies
from vigil.model import GuestFailureKind, GuestReport
from vigil.server import VigilServer
from vigil.sim.cloud import SimCloud

# (token, method, path, json body or None) -> the response
Call = Callable[[str, str, str, Any], httpx.Response]
APP_CHECK = {"vigil:check:app": "type=heartbeat interval=10"}
HOOK = "http://127.0.0.1:9/hook"  # nothing listens: a test delivery fails at once
# Bodies of the routes that take one (each valid: a 404 must come from the scope).
BODIES: dict[str, Any] = {
    "set_instance_policy": {"policy": "notify"},
    "evacuate_instance": {},
    "guest_failure_handled": {"reason": "handled by its owner"},
    "close_app": {"reason": "fixed by hand", "by": "owner"},
}
# Routes a project member may call but that answer a refusal of their own for these
# records (evacuate: the host is not fenced; close: nothing is open): not a 404 of scope.
CONFLICTS = {"evacuate_instance": 409, "close_app": 404}


def subscription(name: str) -> dict[str, Any]:
    return {"name": name, "url": HOOK, "secret": "s" * 16}


@dataclass(frozen=True)
class Seeded:
    alpha_vm: str
    beta_vm: str
    guest_failure: int  # alpha_vm's
    subscription: str  # alpha's member's


@dataclass
class Tenancy:
    server: VigilServer
    cloud: SimCloud
    call: Call
    tokens: Mapping[str, str]  # admin, alpha-member, alpha-reader, beta-member
    alpha: str  # project ids
    beta: str

    def ok(self, who: str, method: str, path: str, body: Any = None) -> Any:
        r = self.call(self.tokens[who], method, path, body)
        assert r.status_code < 300, (who, method, path, r.status_code, r.text)
        return r.json() if r.content else None

    def seed(self) -> Seeded:
        """Alpha's and beta's instances on compute-1, vigil told their projects (an
        admin's listing of the host), a guest failure of each, alpha's application
        checks found, and alpha's member's webhook subscription."""
        self.ok("admin", "POST", "/v1/segments", {"name": "rack", "default_policy": "notify"})
        for host in ("compute-1", "compute-2"):
            self.ok("admin", "POST", "/v1/hosts", {"name": host, "segment": "rack"})
        alpha_vm = self.cloud.add_instance(
            "alpha-vm", "compute-1", project_id=self.alpha, metadata=APP_CHECK
        )
        beta_vm = self.cloud.add_instance(
            "beta-vm", "compute-1", project_id=self.beta, metadata=APP_CHECK
        )
        listed = self.ok("admin", "GET", "/v1/instances?host=compute-1")
        assert {i["id"] for i in listed} == {alpha_vm, beta_vm}
        assert self.server.guest is not None
        now = time.time()
        failures = self.server.guest.receive(
            [
                GuestReport(str(uuid.uuid4()), "compute-1", vm, GuestFailureKind.CRASHED, now)
                for vm in (alpha_vm, beta_vm)
            ]
        )
        alpha_failure = next(f.id for f in failures if f.instance_id == alpha_vm)
        assert self.server.guest.apps is not None  # as at an agent's first exchange:
        self.server.guest.apps.sync("compute-1")  # the host's declarations read from Nova
        self.ok("alpha-member", "POST", "/v1/subscriptions", subscription("alpha-hook"))
        for vm in (alpha_vm, beta_vm):  # an override each, for the listing of overrides
            self.ok("admin", "PUT", f"/v1/instances/{vm}/policy", {"policy": "keep-running"})
        return Seeded(alpha_vm, beta_vm, alpha_failure, "alpha-hook")

    # --- the table ----------------------------------------------------------------------

    def routes(self) -> list[APIRoute]:
        """The guarded routes of the native API, deletes last (they take records away)."""
        found = [
            r
            for r in self.server.app.routes
            if isinstance(r, APIRoute)
            and r.path.startswith("/v1/")
            and policies.native_rule(r.name) is not None
            and r.name != "stream_events"  # a stream: checked on its own
        ]
        return sorted(found, key=lambda r: "DELETE" in r.methods)

    @staticmethod
    def path_of(route: APIRoute, seeded: Seeded) -> str:
        values = {
            "instance_id": seeded.alpha_vm,
            "failure_id": str(seeded.guest_failure) if "guest" in route.path else "1",
            "name": seeded.subscription if "subscriptions" in route.path else "compute-1",
            "recovery_id": "1",
            "cluster_id": "no-such-cluster",  # clusters are the cloud's: refused before
        }
        return route.path.format(**values)

    def restore(self, route: APIRoute, seeded: Seeded) -> None:
        """Put back what a delete of alpha's member took away, for the admin's turn."""
        if route.name == "delete_subscription":
            self.ok("alpha-member", "POST", "/v1/subscriptions", subscription(seeded.subscription))
        elif route.name == "delete_instance_policy":
            self.ok(
                "alpha-member",
                "PUT",
                f"/v1/instances/{seeded.alpha_vm}/policy",
                BODIES["set_instance_policy"],
            )

    def check_every_route(self, seeded: Seeded) -> list[str]:
        """Call every route as beta's member, alpha's reader, alpha's member and an admin;
        returns the names of the routes checked as a project's."""
        scoped = []
        for route in self.routes():
            method = next(iter(route.methods))
            path = self.path_of(route, seeded)
            answers = {}
            for who in ("beta-member", "alpha-reader", "alpha-member", "admin"):
                body = BODIES.get(route.name)
                if route.name == "create_subscription":
                    body = subscription(f"{who}-hook")
                if who == "admin" and method == "DELETE" and policies.project_access(route.name):
                    self.restore(route, seeded)
                answers[who] = self.call(self.tokens[who], method, path, body)
            status = {who: r.status_code for who, r in answers.items()}
            if not policies.project_access(route.name):
                assert status["beta-member"] == status["alpha-member"] == 403, (route.path, status)
                assert status["admin"] != 403, (route.path, status)
                continue
            scoped.append(route.name)
            if "{" in route.path:  # one record, alpha's: beta learns nothing of it
                assert status["beta-member"] == 404, (route.path, status)
                assert answers["beta-member"].text != answers["alpha-member"].text
            else:  # a listing, or a creation in the caller's own project
                assert status["beta-member"] < 300, (route.path, status)
            reader = status["admin"] if policies.project_access(route.name) == "read" else 403
            assert status["alpha-reader"] == reader, (route.path, status)
            expected = CONFLICTS.get(route.name)
            for who in ("alpha-member", "admin"):
                ok = status[who] == expected if expected else status[who] < 300
                assert ok, (who, route.path, status, answers[who].text)
        return scoped

    def listings_of(self, who: str, seeded: Seeded) -> dict[str, str]:
        """What each listing shows ``who``, as one text per listing."""
        return {
            path: self.call(self.tokens[who], "GET", path, None).text
            for path in (
                "/v1/instances",
                "/v1/instances?host=compute-1",
                "/v1/events?limit=1000",
                "/v1/subscriptions",
                "/v1/guest-failures",
                "/v1/apps",
            )
        }
