"""Serve one WSGI application (nova-api or placement) on a threaded ``wsgiref`` server.

Usage: ``python wsgi_serve.py MODULE:ATTRIBUTE PORT``. Run with the minicloud
virtualenv's python; the application reads its configuration from the environment
(``OS_NOVA_CONFIG_DIR``, ``OS_PLACEMENT_CONFIG_DIR``) when its module is imported.
"""

from __future__ import annotations

import importlib
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # Nova answers slowly while a compute RPC times out; keep a backlog of callers.
    request_queue_size = 64


class QuietHandler(WSGIRequestHandler):
    def address_string(self) -> str:  # no reverse DNS per request
        return str(self.client_address[0])


def main() -> int:
    spec, port = sys.argv[1], int(sys.argv[2])
    # Nova's application parses the process's command line as its own options.
    sys.argv = [sys.argv[0]]
    module, _, attr = spec.partition(":")
    app = getattr(importlib.import_module(module), attr)
    server = make_server(
        "127.0.0.1", port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    print(f"serving {spec} on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
