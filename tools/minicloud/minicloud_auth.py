"""A stand-in for keystonemiddleware's ``authtoken`` filter in nova-api's paste pipeline.

Nova 34 has no ``noauth2`` any more and its pipeline always contains ``authtoken``. This
filter takes its place: it checks the ``X-Auth-Token`` minted by the minicloud identity
stub (``nonce.hmac`` with the shared secret) and sets the headers ``authtoken`` would set
for the admin user, so Nova's own ``keystonecontext`` and policy stay in charge. A missing
or forged token gets 401, as with Keystone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Any

PROJECT_ID = "6d1b9e7c5f3a4c0e9b8a7d6c5b4a3f21"
USER_ID = "0f9e8d7c6b5a49382716a5b4c3d2e1f0"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MinicloudAuth:
    def __init__(self, app: WsgiApp, secret: str) -> None:
        self.app = app
        self.secret = secret.encode()

    def _valid(self, token: str) -> bool:
        nonce, _, mac = token.partition(".")
        want = hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()
        return bool(nonce) and hmac.compare_digest(mac, want)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # Whatever the client claims, only what this filter sets counts.
        for key in [k for k in environ if k.startswith(("HTTP_X_USER", "HTTP_X_PROJECT"))]:
            del environ[key]
        token = environ.get("HTTP_X_AUTH_TOKEN", "")
        if not self._valid(token):
            body = b'{"error": {"code": 401, "message": "Authentication required"}}'
            start_response(
                "401 Unauthorized",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        environ.update(
            {
                "HTTP_X_IDENTITY_STATUS": "Confirmed",
                "HTTP_X_USER_ID": USER_ID,
                "HTTP_X_USER_NAME": "admin",
                "HTTP_X_USER_DOMAIN_ID": "default",
                "HTTP_X_PROJECT_ID": PROJECT_ID,
                "HTTP_X_PROJECT_NAME": "admin",
                "HTTP_X_PROJECT_DOMAIN_ID": "default",
                "HTTP_X_ROLES": "admin,member,reader",
            }
        )
        return self.app(environ, start_response)


def filter_factory(global_conf: dict[str, str], **local_conf: str) -> Callable[[WsgiApp], WsgiApp]:
    secret = local_conf["secret"]

    def wrap(app: WsgiApp) -> WsgiApp:
        return MinicloudAuth(app, secret)

    return wrap
