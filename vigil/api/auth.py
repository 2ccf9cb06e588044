"""Who is calling, and may they: the one place both APIs (vigil's and Masakari's) ask.

``[api] auth_strategy``:

- ``token`` (the default: the demo, a standalone vigil): one static bearer token, an
  admin's; anything else is refused with 401.
- ``keystone``: every call carries a Keystone token (``X-Auth-Token``, as keystoneauth
  sends it, or ``Authorization: Bearer``), validated by keystonemiddleware's
  ``auth_token`` with its ``[keystone_authtoken]`` options (its own cache, its service
  credentials, revocation and expiry: what every OpenStack service runs). vigil's API is
  ASGI and the middleware is a WSGI filter, so the filter is called here with an
  environment that holds the token alone and a terminal application that answers
  nothing: the filter validates (``delay_auth_decision``: it never answers itself) and
  writes the identity headers into that environment, which are read back. A caller's
  own ``X-Roles`` and the like never reach it.

Then oslo.policy decides (``vigil.api.policies``): 401 for no valid token, 403 for a
valid one the rule refuses; both logged, naming the route and the caller, never the
token.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from oslo_config import cfg
from oslo_context import context
from oslo_policy import policy

from vigil.api import policies

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    user_id: str
    project_id: str | None = None
    roles: frozenset[str] = frozenset()
    system_scope: str | None = None  # "all": a system-scoped token
    name: str = ""  # for the log: the user's name, or "the API token"

    def credentials(self) -> context.RequestContext:
        return context.RequestContext(
            user_id=self.user_id,
            project_id=self.project_id,
            roles=sorted(self.roles),
            system_scope=self.system_scope,
        )


@dataclass(frozen=True)
class Scope:
    """A caller a route's rule allowed, and the records it reaches: every project's
    (``project_id`` None: it passes ``vigil:all_projects``), or only its own project's.
    A record outside the scope is answered as missing (404), never as forbidden: a
    project learns nothing of another's instances, not even that they exist."""

    caller: Caller
    project_id: str | None

    def sees(self, project_id: str | None) -> bool:
        """Whether a record of ``project_id`` (None: of no project known) is in scope."""
        return self.project_id is None or (project_id is not None and project_id == self.project_id)


class Authenticator(Protocol):
    challenge: str  # the WWW-Authenticate header of a 401

    def caller(self, token: str) -> Caller | None:
        """The caller a token stands for; None: not a valid token (blocking)."""


class StaticToken:
    """The one bearer token of ``[api] auth_token``: an admin's."""

    challenge = "Bearer"

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def caller(self, token: str) -> Caller | None:
        if self._token and secrets.compare_digest(token.encode(), self._token):
            return Caller("api-token", roles=frozenset({"admin"}), name="the API token")
        return None


def _start_response(_status: str, _headers: list[tuple[str, str]], _exc: Any = None) -> None:
    return None


class KeystoneTokens:
    """Keystone tokens, validated by keystonemiddleware's auth_token filter (see the
    module's doc for how an ASGI application calls a WSGI filter)."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        from keystonemiddleware import auth_token

        self._filter = auth_token.AuthProtocol(
            self._terminal, {"oslo_config_config": conf, "delay_auth_decision": "true"}
        )
        # Where a client gets a token (the filter has registered its options by now).
        uri = conf.keystone_authtoken.www_authenticate_uri or ""
        self.challenge = f'Keystone uri="{uri}"' if uri else "Keystone"

    @staticmethod
    def _terminal(_environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("204 No Content", [])
        return [b""]

    def caller(self, token: str) -> Caller | None:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "vigil",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": io.StringIO(),
            "HTTP_X_AUTH_TOKEN": token,
        }
        body = self._filter(environ, _start_response)
        for _ in body:  # the filter's answer: drained, never sent
            pass
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
            return None
        roles = environ.get("HTTP_X_ROLES", "")
        return Caller(
            user_id=environ.get("HTTP_X_USER_ID", ""),
            project_id=environ.get("HTTP_X_PROJECT_ID") or None,
            roles=frozenset(r.strip() for r in roles.split(",") if r.strip()),
            system_scope=environ.get("HTTP_OPENSTACK_SYSTEM_SCOPE") or None,
            name=environ.get("HTTP_X_USER_NAME", ""),
        )


@dataclass
class Authority:
    """Authentication (``authenticator``) and authorization (oslo.policy's enforcer)."""

    authenticator: Authenticator
    enforcer: policy.Enforcer
    strategy: str = "token"

    @classmethod
    def static(cls, token: str, conf: cfg.ConfigOpts | None = None) -> Authority:
        return cls(StaticToken(token), _enforcer(conf), "token")

    @classmethod
    def from_conf(cls, strategy: str, token: str, conf: cfg.ConfigOpts | None) -> Authority:
        if strategy == "keystone":
            if conf is None:
                raise ValueError("auth_strategy keystone needs the configuration")
            return cls(KeystoneTokens(conf), _enforcer(conf), "keystone")
        return cls.static(token, conf)

    @property
    def challenge(self) -> str:
        return self.authenticator.challenge

    @property
    def refusal(self) -> str:
        """What a 401 says."""
        if self.strategy == "keystone":
            return "missing, invalid or expired Keystone token (X-Auth-Token)"
        return "missing or wrong bearer token"

    def caller(self, headers: Mapping[str, str]) -> Caller | None:
        """The caller of a request with these headers (blocking: Keystone may be asked)."""
        token = headers.get("x-auth-token", "").strip()
        if not token:
            bearer = headers.get("authorization", "")
            if bearer[:7].lower() == "bearer ":
                token = bearer[7:].strip()
        if not token:
            return None
        return self.authenticator.caller(token)

    def allows(self, rule: str, caller: Caller, target: Mapping[str, Any] | None = None) -> bool:
        return bool(
            self.enforcer.enforce(rule, dict(target or {}), caller.credentials(), do_raise=False)
        )

    def route_allows(self, rule: str, caller: Caller) -> bool:
        """Whether ``caller`` may call a route of ``rule`` at all: the rule's target is the
        caller's own project (what it reaches is then limited by its ``scope``)."""
        return self.allows(rule, caller, {"project_id": caller.project_id or ""})

    def scope(self, caller: Caller) -> Scope:
        """Which projects' records ``caller`` reaches (``vigil:all_projects``)."""
        if self.allows(policies.ALL_PROJECTS, caller, {"project_id": caller.project_id or ""}):
            return Scope(caller, None)
        return Scope(caller, caller.project_id or "")


def _enforcer(conf: cfg.ConfigOpts | None) -> policy.Enforcer:
    """oslo.policy's enforcer with vigil's defaults; ``[oslo_policy] policy_file``
    changes them (none by default: the defaults in code)."""
    if conf is None:
        conf = cfg.ConfigOpts()
        conf(args=[], default_config_files=[], default_config_dirs=[])
    enforcer = policy.Enforcer(conf)
    enforcer.register_defaults(policies.list_rules())
    return enforcer


def log_refusal(api: str, request: Any, caller: Caller, rule: str | None) -> None:
    """Say a call the policy refused, naming the route and the caller, never the token."""
    client = request.client.host if request.client else "?"
    LOG.warning(
        "%s %s %s from %s (user %s, project %s, roles %s) refused by policy %s",
        api,
        request.method,
        request.url.path,
        client,
        caller.name or caller.user_id,
        caller.project_id or "-",
        ",".join(sorted(caller.roles)) or "-",
        rule or "(no rule: refused)",
    )
