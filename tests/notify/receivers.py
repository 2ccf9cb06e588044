"""A real HTTP receiver for the webhook tests (and the dispatcher's), plus small helpers.

``WebhookReceiver``: an HTTP/1.1 server on 127.0.0.1 in a thread, answering scripted
statuses in turn (optionally after a delay) and recording every request, so a test can
check what a webhook consumer would have received and verified.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vigil.drivers.notifier import Event
from vigil.drivers.webhook import SIGNATURE_HEADER, verify_signature


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


def closed_port() -> int:
    """A local TCP port nobody listens on (bound then released: refused when dialled)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- an HTTP receiver ----------------------------------------------------------------------


def self_signed_certificate(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made with the openssl CLI: (cert, key)."""
    cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [*command, "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered

    def verified(self, secret: str) -> bool:
        return verify_signature(secret, self.headers.get(SIGNATURE_HEADER.lower()), self.body)

    def event(self) -> Event:
        return Event(**json.loads(self.body))


class WebhookReceiver:
    """An HTTP server on 127.0.0.1: answers ``answer()``-scripted statuses in turn, then
    ``default_status``; waits ``delay`` seconds before answering; records each request."""

    def __init__(
        self,
        *,
        default_status: int = 204,
        delay: float = 0.0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS instead of HTTP."""
        self.default_status = default_status
        self.delay = delay
        self.scheme = "https" if tls else "http"
        self._script: deque[int] = deque()
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="webhook-receiver",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}/hooks/vigil?tenant=t1"

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with ``statuses``, in order."""
        with self._lock:
            self._script.extend(statuses)

    def _next_status(self) -> int:
        with self._lock:
            return self._script.popleft() if self._script else self.default_status

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def events(self, secret: str) -> list[Event]:
        """Events of the requests answered 2xx whose signature verifies with ``secret``."""
        return [d.event() for d in self.deliveries if 200 <= d.status < 300 and d.verified(secret)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver._next_status()
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(Delivery(self.path, headers, body, status))
                answer = b"" if status in (204, 304) else b'{"scripted": true}'
                try:
                    self.send_response(status)
                    if answer:
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
