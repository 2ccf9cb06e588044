"""A small typed client of vigil-server's REST API: one method per route.

Every failure becomes ``ApiError(status, detail)`` carrying the server's own words, so the
command line can print one line and exit 1 instead of a traceback. ``status`` is 0 when no
HTTP answer came back at all (server unreachable, timeout). Responses are returned as the
decoded JSON the server sent, unchanged: the CLI's ``--json`` prints exactly that.

The token travels only in the ``Authorization`` header; it is never part of a URL or of an
error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from vigil.wire.tls import client_context, tls_failure

Json = dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:8787"
DEFAULT_TIMEOUT = 30.0

# The leading part of a FastAPI validation error's location ("body", "query", ...) says
# where the value was sent, which the operator did not choose: only the field is shown.
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


class ApiError(Exception):
    """A request the server refused or could not answer; ``str()`` is what to show."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}" if self.status else self.detail


def render_detail(detail: Any) -> str:
    """The server's ``detail`` as one line; FastAPI's 422 lists become "field.path: message".

    The ``input`` FastAPI echoes in a 422 is deliberately not shown: it may be a fence
    password the operator just typed.
    """
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = [str(p) for p in item.get("loc", ())]
                if loc and loc[0] in _LOCATIONS:
                    loc = loc[1:]
                msg = str(item.get("msg", "invalid"))
                parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts) if parts else "invalid request"
    return str(detail)


def _without_userinfo(url: str) -> str:
    """The URL as it may be shown: credentials embedded in it are dropped."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _seg(value: str | int) -> str:
    """One path segment, quoted so that an instance id can never change the route."""
    return quote(str(value), safe="")


class VigilClient:
    """Client of one vigil-server. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        keystone_token: str = "",
        verify: bool | str = True,
    ) -> None:
        """``token``: the static API token; ``keystone_token``: a Keystone token instead
        (``[api] auth_strategy = keystone``), sent as OpenStack clients send it;
        ``verify``: check an https:// server's certificate, against the system's trust
        store (True) or this CA bundle (a path); False: not at all (tests only)."""
        self.url = url.rstrip("/")
        self._shown_url = _without_userinfo(self.url)
        headers = {"Accept": "application/json", "User-Agent": "vigil-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if keystone_token:
            headers["X-Auth-Token"] = keystone_token
        self._verified_with = verify if isinstance(verify, str) else "the system's trust store"
        try:
            tls = client_context(verify if isinstance(verify, str) else None) if verify else False
        except ValueError as exc:
            raise ApiError(0, str(exc)) from None
        try:
            self._http = httpx.Client(
                base_url=self.url, headers=headers, timeout=timeout, verify=tls
            )
        except (httpx.InvalidURL, ValueError) as exc:
            # A malformed URL is rejected here rather than on the first request.
            raise ApiError(0, f"invalid server URL {self._shown_url}: {exc}") from None

    def __enter__(self) -> VigilClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------------- transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        params: Mapping[str, str | int | None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, json=body, params=query, headers=headers)
        except httpx.TimeoutException:
            raise ApiError(0, f"vigil-server at {self._shown_url} did not answer in time") from None
        except httpx.TransportError as exc:
            hint = f" (verified with {self._verified_with}; --os-cacert FILE gives the CA bundle)"
            why = tls_failure(exc, hint) or str(exc) or type(exc).__name__
            raise ApiError(0, f"cannot reach vigil-server at {self._shown_url}: {why}") from None
        if resp.is_error:
            raise ApiError(resp.status_code, self._error_detail(resp))
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(
                resp.status_code, f"{self._shown_url} answered with something other than JSON"
            ) from None

    def request_raw(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Any route of the server (e.g. its Masakari API), with this client's auth."""
        return self._request(method, path, body=body, headers=headers)

    @staticmethod
    def _error_detail(resp: httpx.Response) -> str:
        try:
            payload = resp.json()
        except ValueError:
            text = resp.text.strip()
            return text.splitlines()[0] if text else resp.reason_phrase
        if isinstance(payload, Mapping) and "detail" in payload:
            return render_detail(payload["detail"])
        if isinstance(payload, Mapping) and len(payload) == 1:
            # Masakari's error format: {"conflictingRequest": {"message": ..., "code": ...}}
            (inner,) = payload.values()
            if isinstance(inner, Mapping) and "message" in inner:
                return str(inner["message"])
        return resp.reason_phrase

    # -------------------------------------------------------------------------- health

    def health(self) -> Json:
        result: Json = self._request("GET", "/healthz")
        return result

    # ------------------------------------------------------------------------ segments

    def list_segments(self) -> list[Json]:
        result: list[Json] = self._request("GET", "/v1/segments")
        return result

    def get_segment(self, name: str) -> Json:
        result: Json = self._request("GET", f"/v1/segments/{_seg(name)}")
        return result

    def create_segment(self, name: str, **fields: Any) -> Json:
        result: Json = self._request("POST", "/v1/segments", body={"name": name, **fields})
        return result

    def update_segment(self, name: str, **changes: Any) -> Json:
        result: Json = self._request("PATCH", f"/v1/segments/{_seg(name)}", body=changes)
        return result

    def delete_segment(self, name: str) -> None:
        self._request("DELETE", f"/v1/segments/{_seg(name)}")

    # --------------------------------------------------------------------------- hosts

    def list_hosts(self, segment: str | None = None) -> list[Json]:
        result: list[Json] = self._request("GET", "/v1/hosts", params={"segment": segment})
        return result

    def get_host(self, name: str) -> Json:
        result: Json = self._request("GET", f"/v1/hosts/{_seg(name)}")
        return result

    def create_host(self, name: str, segment: str, **fields: Any) -> Json:
        body = {"name": name, "segment": segment, **fields}
        result: Json = self._request("POST", "/v1/hosts", body=body)
        return result

    def update_host(self, name: str, **changes: Any) -> Json:
        result: Json = self._request("PATCH", f"/v1/hosts/{_seg(name)}", body=changes)
        return result

    def delete_host(self, name: str) -> None:
        self._request("DELETE", f"/v1/hosts/{_seg(name)}")

    def restore_host(self, name: str) -> Json:
        result: Json = self._request("POST", f"/v1/hosts/{_seg(name)}/restore")
        return result

    # ----------------------------------------------------------------------- instances

    def list_instances(self, host: str | None = None) -> list[Json]:
        result: list[Json] = self._request("GET", "/v1/instances", params={"host": host})
        return result

    def get_instance(self, instance_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/instances/{_seg(instance_id)}")
        return result

    def set_instance_policy(self, instance_id: str, policy: str, priority: int = 0) -> Json:
        body = {"policy": policy, "priority": priority}
        result: Json = self._request("PUT", f"/v1/instances/{_seg(instance_id)}/policy", body=body)
        return result

    def delete_instance_policy(self, instance_id: str) -> None:
        self._request("DELETE", f"/v1/instances/{_seg(instance_id)}/policy")

    # ----------------------------------------------------------- failures, recoveries

    def list_failures(
        self, *, host: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[Json]:
        params = {"host": host, "status": status, "limit": limit}
        result: list[Json] = self._request("GET", "/v1/failures", params=params)
        return result

    def get_failure(self, failure_id: int) -> Json:
        result: Json = self._request("GET", f"/v1/failures/{_seg(failure_id)}")
        return result

    def list_recoveries(
        self, *, host: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[Json]:
        params = {"host": host, "status": status, "limit": limit}
        result: list[Json] = self._request("GET", "/v1/recoveries", params=params)
        return result

    def get_recovery(self, recovery_id: int) -> Json:
        result: Json = self._request("GET", f"/v1/recoveries/{_seg(recovery_id)}")
        return result

    def retry_recovery(self, recovery_id: int) -> Json:
        result: Json = self._request("POST", f"/v1/recoveries/{_seg(recovery_id)}/retry")
        return result

    # ----------------------------------------------------------------- consumers' side

    def evacuate_instance(self, instance_id: str, target_host: str | None = None) -> Json:
        body = {"target_host": target_host} if target_host else {}
        result: Json = self._request(
            "POST", f"/v1/instances/{_seg(instance_id)}/evacuate", body=body
        )
        return result

    def restart_instance(self, instance_id: str) -> Json:
        result: Json = self._request("POST", f"/v1/instances/{_seg(instance_id)}/restart")
        return result

    def list_guest_failures(
        self,
        *,
        instance_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[Json]:
        params = {"instance_id": instance_id, "status": status, "limit": limit}
        result: list[Json] = self._request("GET", "/v1/guest-failures", params=params)
        return result

    def get_guest_failure(self, failure_id: int) -> Json:
        result: Json = self._request("GET", f"/v1/guest-failures/{_seg(failure_id)}")
        return result

    def guest_failure_handled(self, failure_id: int, reason: str) -> Json:
        result: Json = self._request(
            "POST", f"/v1/guest-failures/{_seg(failure_id)}/handled", body={"reason": reason}
        )
        return result

    def list_apps(self, *, host: str | None = None, failing: bool | None = None) -> list[Json]:
        params = {"host": host, "failing": None if failing is None else str(failing).lower()}
        result: list[Json] = self._request("GET", "/v1/apps", params=params)
        return result

    def get_app(self, instance_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/instances/{_seg(instance_id)}/app")
        return result

    def app_credential(self, instance_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/instances/{_seg(instance_id)}/app/credential")
        return result

    def close_app(self, instance_id: str, reason: str, by: str) -> Json:
        result: Json = self._request(
            "POST",
            f"/v1/instances/{_seg(instance_id)}/app/close",
            body={"reason": reason, "by": by},
        )
        return result

    # in-guest clusters (issue 19)
    def list_clusters(self) -> list[Json]:
        result: list[Json] = self._request("GET", "/v1/clusters")
        return result

    def get_cluster(self, cluster_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/clusters/{_seg(cluster_id)}")
        return result

    def create_cluster(self, body: Json) -> Json:
        result: Json = self._request("POST", "/v1/clusters", body=body)
        return result

    def verify_cluster(self, cluster_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/clusters/{_seg(cluster_id)}/verify")
        return result

    def cluster_user_data(self, cluster_id: str) -> str:
        path = f"/v1/clusters/{_seg(cluster_id)}/user-data"
        try:
            resp = self._http.request("GET", path)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach vigil-server at {self._shown_url}: {exc}") from None
        if resp.is_error:
            raise ApiError(resp.status_code, self._error_detail(resp))
        return resp.text

    def cluster_stack_parameters(self, cluster_id: str) -> Json:
        path = f"/v1/clusters/{_seg(cluster_id)}/stack-parameters"
        result: Json = self._request("GET", path)
        return result

    def adopt_cluster(self, cluster_id: str, server_group: str) -> Json:
        path = f"/v1/clusters/{_seg(cluster_id)}/adopt"
        result: Json = self._request("POST", path, body={"server_group": server_group})
        return result

    def delete_cluster(self, cluster_id: str) -> None:
        self._request("DELETE", f"/v1/clusters/{_seg(cluster_id)}")

    def get_host_services(self, name: str) -> Json:
        result: Json = self._request("GET", f"/v1/hosts/{_seg(name)}/services")
        return result

    def failure_handled(self, failure_id: int, reason: str) -> Json:
        result: Json = self._request(
            "POST", f"/v1/failures/{_seg(failure_id)}/handled", body={"reason": reason}
        )
        return result

    def failure_dismiss(self, failure_id: int, reason: str) -> Json:
        result: Json = self._request(
            "POST", f"/v1/failures/{_seg(failure_id)}/dismiss", body={"reason": reason}
        )
        return result

    def list_events(
        self, *, after: int | None = None, host: str | None = None, limit: int | None = None
    ) -> list[Json]:
        params = {"after": after, "host": host, "limit": limit}
        result: list[Json] = self._request("GET", "/v1/events", params=params)
        return result

    def list_subscriptions(self) -> list[Json]:
        result: list[Json] = self._request("GET", "/v1/subscriptions")
        return result

    def get_subscription(self, name: str) -> Json:
        result: Json = self._request("GET", f"/v1/subscriptions/{_seg(name)}")
        return result

    def create_subscription(self, name: str, url: str, secret: str, event_types: list[str]) -> Json:
        body = {"name": name, "url": url, "secret": secret, "event_types": event_types}
        result: Json = self._request("POST", "/v1/subscriptions", body=body)
        return result

    def delete_subscription(self, name: str) -> None:
        self._request("DELETE", f"/v1/subscriptions/{_seg(name)}")

    def test_subscription(self, name: str) -> Json:
        result: Json = self._request("POST", f"/v1/subscriptions/{_seg(name)}/test")
        return result

    def list_dead_letters(self, sink: str | None = None) -> list[Json]:
        result: list[Json] = self._request("GET", "/v1/dead-letters", params={"sink": sink})
        return result

    # ------------------------------------------------------------------------- control

    def get_control(self) -> Json:
        result: Json = self._request("GET", "/v1/control")
        return result

    def get_servers(self) -> Json:
        result: Json = self._request("GET", "/v1/servers")
        return result

    def pause(self, reason: str) -> Json:
        result: Json = self._request("POST", "/v1/control/pause", body={"reason": reason})
        return result

    def resume(self) -> Json:
        result: Json = self._request("POST", "/v1/control/resume")
        return result
