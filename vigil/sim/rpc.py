"""The simulated cloud over HTTP, for vigil processes that do not share the test's memory.

A vigil-server started as a subprocess (to be killed with -9 mid-recovery and restarted)
must act on the same ``SimCloud`` the test process drives and inspects. ``serve_cloud``
exposes the cloud's ``CloudApi`` methods as ``POST /rpc/<method>`` with the keyword
arguments as a JSON object; the answer is ``{"result": ...}``, or ``{"error": {"type",
"message"}}`` where ``type`` names a ``vigil.drivers.errors`` class, which ``RemoteCloud``
raises again. A transport failure (refused, reset, timed out) is a ``TemporaryError``, as
it would be from a real Nova or BMC.

Limits: no authentication and no TLS -- bind it to loopback, it is a test fixture. Only
the ``CloudApi`` methods are served: faults are injected in the process that owns the
cloud.
"""

from __future__ import annotations

import contextlib
import http.client
import inspect
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from vigil.drivers import errors
from vigil.drivers.compute import ComputeService, Server
from vigil.drivers.fencing import PowerState
from vigil.model import HaPolicy
from vigil.sim.api import CloudApi

LOG = logging.getLogger(__name__)

# Each method's answer, from JSON back to what CloudApi returns.
_DECODE: dict[str, Callable[[Any], Any]] = {
    "list_services": lambda r: [ComputeService(**s) for s in r],
    "get_service": lambda r: ComputeService(**r),
    "set_forced_down": lambda r: None,
    "disable": lambda r: None,
    "enable": lambda r: None,
    "list_servers": lambda r: [_server(s) for s in r],
    "get_server": lambda r: _server(r),
    "evacuate": lambda r: None,
    "evacuation_started": lambda r: r,
    "reset_state": lambda r: None,
    "start": lambda r: None,
    "stop": lambda r: None,
    "reboot": lambda r: None,
    "rebuild": lambda r: None,
    "bmc_power_off": lambda r: None,
    "bmc_power_on": lambda r: None,
    "bmc_power_status": lambda r: PowerState(r),
}
METHODS = frozenset(_DECODE)

_ERRORS: dict[str, type[errors.DriverError]] = {
    cls.__name__: cls
    for cls in (
        errors.DriverError,
        errors.TemporaryError,
        errors.PermanentError,
        errors.NotFound,
        errors.Conflict,
    )
}
_STATUS = {"NotFound": 404, "Conflict": 409, "PermanentError": 400}


def _server(raw: dict[str, Any]) -> Server:
    policy = raw.get("policy")
    return Server(**{**raw, "policy": HaPolicy(policy) if policy is not None else None})


def _encode(value: Any) -> Any:
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, ComputeService | Server):
        return asdict(value)
    return value  # None, str and StrEnum members are JSON as they are


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per client thread
    timeout = 30  # an idle kept-alive connection frees its thread after this
    # Headers and body go out in two writes; with Nagle on, the client's delayed ACK
    # would add ~40 ms to every call.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        server = cast(_CloudHTTPServer, self.server)
        method = self.path.removeprefix("/rpc/")
        try:
            try:
                length = int(self.headers.get("Content-Length", "0"))
                kwargs = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as exc:
                raise errors.PermanentError(f"unreadable request: {exc}") from exc
            if not self.path.startswith("/rpc/") or method not in METHODS:
                raise errors.NotFound(f"no RPC method {self.path}")
            if not isinstance(kwargs, dict):
                raise errors.PermanentError("the body must be a JSON object of arguments")
            call = getattr(server.cloud, method)
            try:
                inspect.signature(call).bind(**kwargs)
            except TypeError as exc:
                raise errors.PermanentError(f"{method}: {exc}") from exc
            result = call(**kwargs)
        except errors.DriverError as exc:
            # The nearest class the client knows, should a driver error be subclassed.
            name = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERRORS)
            self._reply(_STATUS.get(name, 503), {"error": {"type": name, "message": str(exc)}})
        except Exception as exc:
            LOG.exception("sim cloud RPC %s failed", method)
            self._reply(500, {"error": {"type": "TemporaryError", "message": repr(exc)}})
        else:
            self._reply(200, {"result": _encode(result)})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("sim cloud RPC: " + format, *args)


class _CloudHTTPServer(ThreadingHTTPServer):
    # The stdlib threaded server is enough: a handful of vigil processes make small JSON
    # calls on loopback, and a test fixture should not pull in a web framework.
    daemon_threads = True
    # Every step worker of a server opens its own connection at once when a rack fails:
    # with the stdlib's backlog of 5 the others' SYNs would be dropped and retried a
    # second or more later, and the simulated Nova would look slow.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], cloud: CloudApi) -> None:
        super().__init__(address, _Handler)
        self.cloud = cloud
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a client that went away (or close()
        # dropping its connection mid-answer) is routine here.
        LOG.debug("sim cloud RPC: connection from %s ended badly", client_address, exc_info=True)

    def drop_connections(self) -> None:
        """End kept-alive connections, whose threads would otherwise go on answering."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)


class CloudServer:
    """A running ``serve_cloud``: its ``url``, and ``close()`` to stop it."""

    def __init__(self, cloud: CloudApi, host: str, port: int) -> None:
        self._http = _CloudHTTPServer((host, port), cloud)
        bound_host, bound_port = self._http.server_address[:2]
        self.url = f"http://{bound_host!s}:{bound_port}"
        # A short poll interval: close() waits up to one interval for the loop to stop.
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="sim-cloud-rpc", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.drop_connections()
        self._http.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CloudServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_cloud(cloud: CloudApi, host: str = "127.0.0.1", port: int = 0) -> tuple[CloudServer, str]:
    """Serve ``cloud`` on ``host:port`` (0: any free port) from a daemon thread."""
    server = CloudServer(cloud, host, port)
    return server, server.url


# Seconds a kept-alive connection may have been idle and still be used: less than the
# served side's idle timeout (``_Handler.timeout``), after which it closes it.
_IDLE_REUSE = 20.0


class RemoteCloud:
    """A ``CloudApi`` whose cloud is served by ``serve_cloud``, possibly in another process.

    Thread-safe. ``timeout`` bounds each call; it must exceed the served cloud's slowest
    answer (``SimLatency.bmc_timeout``, ``rpc_timeout``) or those read as TemporaryError.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"sim cloud URL {url!r}: http://HOST:PORT expected")
        self._address = (parts.hostname, parts.port or 80)
        self._timeout = timeout
        # One kept-alive connection per calling thread (http.client, as urllib3 does per
        # pool): a step worker's calls never wait for another's. An httpx pool of 256
        # connections searched its connections on every request (httpcore), a fifth of
        # vigil-server's time in a rack failure at 10,000 hosts.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[http.client.HTTPConnection] = []

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            conn.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it was used before (kept alive)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        used: float = getattr(self._local, "used", 0.0)
        if conn is not None and time.monotonic() - used < _IDLE_REUSE:
            return conn, True
        if conn is not None:  # idle long enough for the served side to close it
            conn.close()
        else:
            conn = http.client.HTTPConnection(*self._address, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._open.append(conn)
        return conn, False

    def _post(self, method: str, body: bytes) -> tuple[int, bytes]:
        for _ in range(2):
            conn, reused = self._connection()
            try:
                conn.request("POST", f"/rpc/{method}", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.used = 0.0
                # A kept-alive connection the served side had closed before reading the
                # request (it never saw it): once more, on a new connection.
                stale = isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError)
                if reused and stale:
                    continue
                raise errors.TemporaryError(f"sim cloud at {self.url} unreachable: {exc}") from exc
            self._local.used = time.monotonic()
            return response.status, data
        raise AssertionError("unreachable")

    def __enter__(self) -> RemoteCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, **kwargs: Any) -> Any:
        status, data = self._post(method, json.dumps(kwargs).encode())
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise errors.TemporaryError(
                f"sim cloud at {self.url}: unreadable answer (HTTP {status})"
            ) from exc
        if "error" in body:
            err = body["error"]
            raise _ERRORS.get(err.get("type"), errors.TemporaryError)(err.get("message", ""))
        return _DECODE[method](body.get("result"))

    def list_services(self) -> list[ComputeService]:
        return cast(list[ComputeService], self._call("list_services"))

    def get_service(self, host: str) -> ComputeService:
        return cast(ComputeService, self._call("get_service", host=host))

    def set_forced_down(self, host: str, forced_down: bool) -> None:
        self._call("set_forced_down", host=host, forced_down=forced_down)

    def disable(self, host: str, reason: str) -> None:
        self._call("disable", host=host, reason=reason)

    def enable(self, host: str) -> None:
        self._call("enable", host=host)

    def list_servers(self, host: str) -> list[Server]:
        return cast(list[Server], self._call("list_servers", host=host))

    def get_server(self, server_id: str) -> Server:
        return cast(Server, self._call("get_server", server_id=server_id))

    def evacuate(self, server_id: str, target_host: str | None = None) -> None:
        self._call("evacuate", server_id=server_id, target_host=target_host)

    def evacuation_started(self, server_id: str) -> bool | None:
        return cast("bool | None", self._call("evacuation_started", server_id=server_id))

    def reset_state(self, server_id: str) -> None:
        self._call("reset_state", server_id=server_id)

    def start(self, server_id: str) -> None:
        self._call("start", server_id=server_id)

    def stop(self, server_id: str) -> None:
        self._call("stop", server_id=server_id)

    def reboot(self, server_id: str, hard: bool = True) -> None:
        self._call("reboot", server_id=server_id, hard=hard)

    def rebuild(self, server_id: str) -> None:
        self._call("rebuild", server_id=server_id)

    def bmc_power_off(self, host: str) -> None:
        self._call("bmc_power_off", host=host)

    def bmc_power_on(self, host: str) -> None:
        self._call("bmc_power_on", host=host)

    def bmc_power_status(self, host: str) -> PowerState:
        return cast(PowerState, self._call("bmc_power_status", host=host))
