"""Stand-ins for the OpenStack services a real Nova needs around it: Keystone and Glance.

One small threaded HTTP server (standard library only), two path prefixes:

- ``/identity``: Keystone v3 just far enough for password authentication (openstacksdk,
  keystoneauth): version discovery and ``POST /v3/auth/tokens`` answering a scoped token
  with a service catalog. Only the configured admin password is accepted; a wrong one gets
  401 like Keystone, so "wrong credentials" can be tested. Tokens are ``nonce.hmac`` with
  a secret shared with the nova-api auth filter (``minicloud_auth``), which checks them.
- ``/image``: Glance v2 read-only: two images (``cirros`` without properties and
  ``cirros-ha`` carrying vigil's HA properties), image schemas, version discovery.

Neutron is the real one (the minicloud's ``neutron`` process): the stand-in catalog names
it, and it checks the stand-in's tokens as nova-api does (``minicloud_auth``).

Usage: ``python3 stubs.py --port PORT --state-file minicloud.json`` (the state file gives
the password, the secret and the ports written into the catalog).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

PROJECT_ID = "6d1b9e7c5f3a4c0e9b8a7d6c5b4a3f21"
USER_ID = "0f9e8d7c6b5a49382716a5b4c3d2e1f0"
IMAGES = {
    "155d900f-4e14-4e4c-a73d-069cbf4541e6": {"name": "cirros", "properties": {}},
    "a7c1d0b4-6a56-4b8e-9a55-2f0c3e7d9b10": {
        "name": "cirros-ha",
        "properties": {"vigil:ha_policy": "keep-running", "vigil:ha_priority": "5"},
    },
}


def make_token(secret: str) -> str:
    nonce = secrets.token_hex(16)
    mac = hmac.new(secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()
    return f"{nonce}.{mac}"


def image_body(image_id: str, base: str) -> dict[str, Any]:
    image = IMAGES[image_id]
    body: dict[str, Any] = {
        "id": image_id,
        "name": image["name"],
        "status": "active",
        "visibility": "public",
        "protected": False,
        "os_hidden": False,
        "container_format": "bare",
        "disk_format": "raw",
        "min_disk": 0,
        "min_ram": 0,
        "size": 1024,
        "virtual_size": None,
        "checksum": "d41d8cd98f00b204e9800998ecf8427e",
        "owner": PROJECT_ID,
        "tags": [],
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "self": f"/v2/images/{image_id}",
        "file": f"/v2/images/{image_id}/file",
        "schema": "/v2/schemas/image",
    }
    body.update(image["properties"])
    return body


IMAGE_SCHEMA = {
    "name": "image",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": ["null", "string"]},
        "status": {"type": "string"},
        "visibility": {"type": "string"},
        "container_format": {"type": ["null", "string"]},
        "disk_format": {"type": ["null", "string"]},
        "min_disk": {"type": "integer"},
        "min_ram": {"type": "integer"},
        "size": {"type": ["null", "integer"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": {"type": "string"},
    "links": [],
}


class Stubs(BaseHTTPRequestHandler):
    server_version = "minicloud-stubs/1"
    protocol_version = "HTTP/1.1"
    state: dict[str, Any] = {}

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.state['ports']['stubs']}"

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        body = None if method in ("GET", "HEAD") else self._body()
        for prefix, handler in (
            ("/identity", self._identity),
            ("/image", self._image),
        ):
            if path == prefix or path.startswith(prefix + "/"):
                handler(method, path[len(prefix) :], body)
                return
        self._reply(404, {"error": f"no stub for {path}"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    # ------------------------------------------------------------------ keystone
    def _identity(self, method: str, path: str, body: Any) -> None:
        v3 = {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base}/identity/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }
        if path == "" and method == "GET":
            self._reply(300, {"versions": {"values": [v3]}})
        elif path == "/v3" and method == "GET":
            self._reply(200, {"version": v3})
        elif path == "/v3/auth/tokens" and method == "POST":
            self._issue_token(body)
        elif path == "/v3/auth/tokens" and method in ("GET", "HEAD"):
            token = self.headers.get("X-Subject-Token", "")
            if self._valid(token):
                self._reply(200, {"token": self._token_body()}, {"X-Subject-Token": token})
            else:
                self._reply(404, {"error": {"code": 404, "message": "token not found"}})
        else:
            self._reply(404, {"error": {"code": 404, "message": f"no identity stub for {path}"}})

    def _valid(self, token: str) -> bool:
        nonce, _, mac = token.partition(".")
        want = hmac.new(self.state["secret"].encode(), nonce.encode(), hashlib.sha256).hexdigest()
        return bool(nonce) and hmac.compare_digest(mac, want)

    def _issue_token(self, body: Any) -> None:
        auth = (body or {}).get("auth", {}) if isinstance(body, dict) else {}
        identity = auth.get("identity", {})
        ok = False
        if "password" in identity.get("methods", []):
            user = identity.get("password", {}).get("user", {})
            ok = user.get("name") == "admin" and user.get("password") == self.state["password"]
        elif "token" in identity.get("methods", []):
            ok = self._valid(identity.get("token", {}).get("id", ""))
        if not ok:
            self._reply(
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
            )
            return
        token = make_token(self.state["secret"])
        self._reply(201, {"token": self._token_body()}, {"X-Subject-Token": token})

    def _token_body(self) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        fmt = "%Y-%m-%dT%H:%M:%S.000000Z"
        ports = self.state["ports"]

        def service(kind: str, name: str, url: str) -> dict[str, Any]:
            return {
                "id": hashlib.md5(kind.encode()).hexdigest(),
                "type": kind,
                "name": name,
                "endpoints": [
                    {
                        "id": hashlib.md5(f"{kind}-{iface}".encode()).hexdigest(),
                        "interface": iface,
                        "region": "RegionOne",
                        "region_id": "RegionOne",
                        "url": url,
                    }
                    for iface in ("public", "internal", "admin")
                ],
            }

        domain = {"id": "default", "name": "Default"}
        return {
            "methods": ["password"],
            "user": {"id": USER_ID, "name": "admin", "domain": domain, "password_expires_at": None},
            "project": {"id": PROJECT_ID, "name": "admin", "domain": domain},
            "roles": [{"id": "r-admin", "name": "admin"}, {"id": "r-member", "name": "member"}],
            "is_domain": False,
            "issued_at": now.strftime(fmt),
            "expires_at": (now + dt.timedelta(hours=12)).strftime(fmt),
            "audit_ids": [secrets.token_urlsafe(16)],
            "catalog": [
                service("identity", "keystone", f"{self.base}/identity"),
                service("compute", "nova", f"http://127.0.0.1:{ports['api']}/v2.1"),
                service("placement", "placement", f"http://127.0.0.1:{ports['placement']}"),
                service("image", "glance", f"{self.base}/image"),
                service("network", "neutron", f"http://127.0.0.1:{ports['neutron']}"),
            ],
        }

    # ------------------------------------------------------------------ glance
    def _image(self, method: str, path: str, body: Any) -> None:
        if method not in ("GET", "HEAD"):
            self._reply(403, {"error": "the minicloud image service is read-only"})
            return
        version = {
            "id": "v2.16",
            "status": "CURRENT",
            "links": [{"rel": "self", "href": f"{self.base}/image/v2/"}],
        }
        if path in ("", "/versions", "/v2"):
            self._reply(200, {"versions": [version]})
        elif path == "/v2/images":
            images = [image_body(i, self.base) for i in IMAGES]
            self._reply(200, {"images": images, "schema": "/v2/schemas/images", "first": path})
        elif path.startswith("/v2/images/") and path.count("/") == 3:
            image_id = path.rsplit("/", 1)[1]
            if image_id in IMAGES:
                self._reply(200, image_body(image_id, self.base))
            else:
                self._reply(404, {"message": f"No image found with ID {image_id}", "code": 404})
        elif path == "/v2/schemas/image":
            self._reply(200, IMAGE_SCHEMA)
        elif path == "/v2/schemas/images":
            self._reply(200, {"name": "images", "properties": {"images": {"items": IMAGE_SCHEMA}}})
        else:
            self._reply(404, {"message": f"no image stub for {path}", "code": 404})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-file", required=True)
    args = parser.parse_args()
    with open(args.state_file) as f:
        Stubs.state = json.load(f)
    server = ThreadingHTTPServer(("127.0.0.1", Stubs.state["ports"]["stubs"]), Stubs)
    server.daemon_threads = True
    print(f"minicloud stubs on port {Stubs.state['ports']['stubs']}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
